"""The SimPy engine against closed forms, and the behaviours users rely on."""
import json

import networkx as nx
import numpy as np
import pytest

from moesim.config import load_config
from moesim.cost import CostModel, find_profile
from moesim.engine import SimOptions, Simulation, simulate
from moesim.errors import MoesimError
from moesim.topology import Topology
from moesim.topology.generators import bigmac_paper, emulated_testbed
from moesim.workload import Compute

SMALL = {"model": {"name": "small", "layers": 2, "hidden": 512, "heads": 8, "seq_len": 512, "vocab": 1000,
                   "dtype": "bf16"},
         "moe": {"experts": 8, "top_k": 2, "ratio": 0.25},
         "parallel": {"ep": 1}, "run": {"global_batch_tokens": 4096, "batch_size": 8, "prompt_len": 256}}


def small(**sets):
    cfg = json.loads(json.dumps(SMALL))
    for key, value in sets.items():
        section, field = key.split("__")
        cfg[section][field] = value
    return load_config(cfg)


def pair_topology(bandwidth: float, latency: float, gpus: int = 2) -> Topology:
    """GPUs on one switch; with 2 GPUs the route is GPU -> switch -> GPU."""
    g = nx.Graph()
    g.add_node("sw", kind="switch")
    for r in range(gpus):
        g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r}")
        g.add_edge(f"g{r}", "sw", bandwidth=bandwidth, latency=latency)
    return Topology(g, source="<test>")


def test_one_rank_compute_only_is_the_sum_of_op_times():
    cfg = small()
    g = nx.Graph()
    g.add_node("g0", kind="gpu", rank=0, host="h0")
    sim = Simulation(cfg, Topology(g, source="<one>"), "h100-sxm")
    res = sim.run()
    model = CostModel(find_profile("h100-sxm"))
    ops = [it for it in sim.program.items if isinstance(it, Compute)]
    expected = 0.0
    for op in ops:
        if op.kind == "gemm":
            expected += float(np.sum(model.gemm_time(op.m, op.n, op.k, "bf16", op.count)))
        else:
            expected += float(np.sum(model.memory_time(op.nbytes)))
    assert res.step_time_s == pytest.approx(expected, rel=1e-12)
    assert sum(res.breakdown_s.values()) == pytest.approx(res.step_time_s, rel=1e-12)
    assert res.exposed_comm_s == 0 and res.comm_busy_s == 0


def test_two_ranks_all_to_all_matches_closed_form():
    """Prefill, ep = 2: every All-to-All (per layer the split-size exchange, dispatch and combine)
    sends M[0,1] bytes each way through GPU->switch->GPU; time = overhead + bytes/B + 2 link
    latencies + per-message latency."""
    B, lat = 1e9, 3e-6
    cfg = small(parallel__ep=2, run__mode="prefill")
    sim = Simulation(cfg, pair_topology(B, lat), "h100-sxm")
    res = sim.run()
    prof = find_profile("h100-sxm").network
    a2a = [c for c in sim.program.collectives.values() if c.op == "all_to_all"]
    assert len(a2a) == 3 * cfg.model.layers and sum(c.control for c in a2a) == cfg.model.layers
    per = [prof.collective_overhead_s + c.matrix[0, 1] / B + 2 * lat + prof.latency_per_message_s for c in a2a]
    compute = float(sim.classes.durations[0].sum())
    assert res.step_time_s == pytest.approx(compute + sum(per), rel=1e-9)
    assert res.exposed_comm_s == pytest.approx(sum(per), rel=1e-9)
    waits = res.comm_by_phase()
    assert waits["dispatch"]["exposed_s"] + waits["combine"]["exposed_s"] == pytest.approx(sum(per), rel=1e-9)
    for span, expected in zip(sorted(res.collective_spans, key=lambda s: s.start), per):
        assert span.end - span.start == pytest.approx(expected, rel=1e-9)


def test_gradient_allreduce_hidden_when_fast_exposed_when_slow():
    cfg = small(parallel__dp=4, model__layers=4)
    fast = simulate(cfg, pair_topology(1e12, 0.0, gpus=4), "h100-sxm")
    slow = simulate(cfg, pair_topology(1e7, 0.0, gpus=4), "h100-sxm")
    busy_fast = fast.comm_by_phase()["grad_allreduce"]["busy_s"]
    assert busy_fast > 0 and fast.breakdown_s["grad_allreduce"] < 0.05 * fast.step_time_s
    assert slow.breakdown_s["grad_allreduce"] > 0.5 * slow.step_time_s
    assert slow.step_time_s > fast.step_time_s


def test_deterministic():
    cfg = load_config("gpt3-medium", ["moe.routing=zipf", "moe.top_k=4", "run.mode=prefill"])
    a = simulate(cfg, bigmac_paper()).summary()
    b = simulate(cfg, bigmac_paper()).summary()
    assert a == b


def test_skewed_routing_slows_the_all_to_all():
    base = ["moe.top_k=4", "run.mode=prefill", "moe.capacity_factor=null"]
    uni = simulate(load_config("gpt3-medium", base), bigmac_paper())
    skew = simulate(load_config("gpt3-medium", base + ["moe.routing=zipf", "moe.zipf_exponent=1.2"]), bigmac_paper())
    comm = lambda r: r.comm_by_phase()["dispatch"]["busy_s"]  # noqa: E731
    assert skew.a2a_bytes == pytest.approx(uni.a2a_bytes, rel=0.2)
    assert comm(skew) > 1.2 * comm(uni)
    assert skew.step_time_s > uni.step_time_s
    assert skew.classes.count > 1  # ranks holding popular experts work longer


def test_dcca_wins_when_network_bound_and_loses_slightly_without_ep():
    over = ["moe.top_k=8"]
    topo = bigmac_paper()
    cdac = simulate(load_config("gpt3-xl", over + ["moe.structure=cdac"]), topo)
    dcca = simulate(load_config("gpt3-xl", over + ["moe.structure=dcca"]), topo)
    assert cdac.step_time_s / dcca.step_time_s > 2.0
    # no expert parallelism: nothing to save, two extra projections to pay
    no_ep = over + ["parallel.ep=1", "parallel.dp=32"]
    cdac1 = simulate(load_config("gpt3-xl", no_ep + ["moe.structure=cdac"]), topo)
    dcca1 = simulate(load_config("gpt3-xl", no_ep + ["moe.structure=dcca"]), topo)
    assert 1.0 < dcca1.step_time_s / cdac1.step_time_s < 1.1


def test_simulated_all_to_all_bytes_reach_the_network():
    """Prefill (no gradients): every byte GPUs put on their first link is All-to-All traffic: the
    tokens (the analytic model's bytes) and the split-size exchanges."""
    from moesim.analytic import a2a_bytes_per_step
    cfg = load_config("gpt3-medium", ["moe.structure=dcca", "moe.top_k=4", "run.mode=prefill"])
    res = simulate(cfg, bigmac_paper())
    links = res.links()
    topo = res.topology
    from_gpu = topo.is_gpu[topo.link_src]
    counts = sum(c.bytes_leaving_ranks() for c in res.program.collectives.values() if c.control)
    assert 0 < counts < 1e-3 * a2a_bytes_per_step(cfg).total
    assert links["bytes"].to_numpy()[from_gpu].sum() == pytest.approx(a2a_bytes_per_step(cfg).total + counts, rel=1e-9)
    assert res.a2a_bytes == pytest.approx(a2a_bytes_per_step(cfg).total, rel=1e-12)
    assert (links["utilisation"] <= 1 + 1e-9).all()


def test_results_export(tmp_path):
    cfg = small(parallel__ep=2)
    res = simulate(cfg, emulated_testbed(hosts=2, ranks_per_host=1, link_bandwidth=1e9), "h100-sxm")
    s = res.summary()
    assert set(s["breakdown_s"]) >= {"dispatch", "combine", "experts", "attention", "grad_allreduce"}
    assert s["tokens_per_s"] == pytest.approx(cfg.step_tokens / s["step_time_s"])
    json.dumps(s)
    tl = res.timeline()
    assert {"rank", "stream", "phase", "start_s", "end_s"} <= set(tl.columns)
    assert (tl["end_s"] >= tl["start_s"]).all() and tl["end_s"].max() == pytest.approx(res.step_time_s)
    trace = tmp_path / "t.json"
    res.write_chrome_trace(trace)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("cat") == "dispatch" and e["ph"] == "X" for e in events)


def test_gpu_count_mismatch_is_a_clear_error():
    with pytest.raises(MoesimError, match="needs 8 GPUs .* topology has 32"):
        simulate(load_config("gpt3-xl", ["parallel.ep=8"]), bigmac_paper())


def test_profile_link_efficiency_scales_link_capacity(tmp_path):
    """A profile's network.link_efficiency applies per link class: half the nic rate, twice the
    All-to-All transfer time."""
    import yaml
    raw = yaml.safe_load(open(find_profile("h100-sxm").path))
    raw["network"] = {"latency_per_message_s": 0.0, "collective_overhead_s": 0.0, "link_efficiency": {"nic": 0.5}}
    half = tmp_path / "half.yaml"
    half.write_text(yaml.safe_dump(raw))
    raw["network"]["link_efficiency"] = {}
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(raw))
    cfg = small(parallel__ep=2, run__mode="prefill")
    topo = pair_topology(1e9, 0.0)
    a, b = simulate(cfg, topo, str(full)), simulate(cfg, topo, str(half))
    busy = lambda r: r.comm_by_phase()["dispatch"]["busy_s"]  # noqa: E731
    assert busy(b) == pytest.approx(2 * busy(a), rel=1e-9)
    assert (b.links()["capacity"] == 0.5e9).all()


def test_mean_breakdown_weighs_every_rank_and_differs_from_the_critical_ranks_when_ranks_differ():
    """Skewed routing (rank 0's experts get most tokens): rank 0 is a class of its own and the
    critical one; the mean breakdown is each phase's seconds averaged over the 4 ranks (rank 0 once,
    the class of ranks 1-3 three times), so it has less expert compute than rank 0's; each rank's
    phases sum to the time its stream ends, so the mean sums to their mean."""
    cfg = small(parallel__ep=4, model__hidden=256)
    copies = np.array([[40.0, 1, 1, 1], [40, 1, 1, 1], [40, 1, 1, 1], [40, 1, 1, 1]]) * 16
    res = simulate(cfg, emulated_testbed(hosts=4, ranks_per_host=1, link_bandwidth=1e10), "h100-sxm",
                   SimOptions(a2a_copies=copies))
    assert [list(m) for m in res.classes.members] == [[0], [1, 2, 3]] and res.critical_class == 0
    per_class = [{} for _ in res.class_spans]
    for d, spans in zip(per_class, res.class_spans):
        for s in spans:
            d[s.phase] = d.get(s.phase, 0.0) + (s.end - s.start)
    mean = res.mean_breakdown_s
    for phase in per_class[0]:
        assert mean[phase] == pytest.approx((per_class[0][phase] + 3 * per_class[1][phase]) / 4, rel=1e-12)
    assert sum(mean.values()) == pytest.approx((sum(per_class[0].values()) + 3 * sum(per_class[1].values())) / 4)
    assert per_class[0]["experts"] > 1.05 * per_class[1]["experts"]
    assert mean["experts"] < res.breakdown_s["experts"]


def test_mean_breakdown_equals_the_critical_ranks_when_every_rank_does_the_same():
    cfg = small(parallel__ep=2)
    res = simulate(cfg, emulated_testbed(hosts=2, ranks_per_host=1, link_bandwidth=1e9), "h100-sxm")
    assert res.mean_breakdown_s == pytest.approx(res.breakdown_s, rel=1e-12)
