"""Shared cores in the engine: the processor-sharing pool, staggered All-to-All release, the per-rank
mode against the fixed core share, the measured release spread and the study that judges the mode."""
import dataclasses
import glob
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.calibrate import netmodel
from moesim.calibrate.release import read_patterns, release_spread
from moesim.config import load_config
from moesim.cost import find_profile
from moesim.cost.profile import NetworkProfile
from moesim.engine import SimOptions, simulate
from moesim.engine.cpupool import CorePool, pool_of
from moesim.engine.netbridge import NetworkBridge
from moesim.errors import InputFileError, MoesimError
from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives
from moesim.network.stages import FlowStage
from moesim.topology import Topology
from moesim.topology.generators import emulated_testbed
from moesim.workload.ops import CollectiveSpec

AVX2 = "calibration/avx2/cpu-testbed-avx2.yaml"


def _finish_times(capacity, jobs, quantum=0.0, slots=None):
    """Run ``jobs`` = [(arrival s, alone work s)] through a pool; their finish times."""
    env = simpy.Environment()
    pool = CorePool(env, capacity, quantum, slots)
    out = [None] * len(jobs)

    def job(i, at, work):
        yield env.timeout(at)
        yield pool.run(work)
        out[i] = env.now

    for i, (at, work) in enumerate(jobs):
        env.process(job(i, at, work))
    env.run()
    return out


def test_pool_two_jobs_on_one_core_take_twice_as_long():
    assert _finish_times(1.0, [(0, 1.0), (0, 1.0)]) == pytest.approx([2.0, 2.0])


def test_pool_late_arrival_closed_form():
    # A alone for 0.5 s, then both at half speed: A's last 0.5 s of work takes 1 s (ends 1.5);
    # B has done 0.5 by then and finishes its last 0.5 alone at 2.0
    assert _finish_times(1.0, [(0, 1.0), (0.5, 1.0)]) == pytest.approx([1.5, 2.0])


def test_pool_enough_cores_run_alone_and_fractional_cores_share():
    assert _finish_times(2.0, [(0, 1.0), (0, 0.5)]) == pytest.approx([1.0, 0.5])
    assert _finish_times(2.5, [(0, 1.0)] * 4) == pytest.approx([1.6] * 4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 5.0), min_size=1, max_size=6), st.floats(0.3, 4.0))
def test_pool_matches_processor_sharing_closed_form(works, capacity):
    """Jobs that start together: sorted by size, each phase runs the m jobs left at min(1, C/m)."""
    order = np.argsort(works)
    w = np.asarray(works)[order]
    expected, t, prev = np.zeros(len(w)), 0.0, 0.0
    for k in range(len(w)):
        m = len(w) - k
        t += (w[k] - prev) / min(1.0, capacity / m)
        prev = w[k]
        expected[k] = t
    got = np.asarray(_finish_times(capacity, [(0.0, x) for x in works]))[order]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # work conservation: never faster than the cores allow, nor than a job alone
    assert got.max() >= max(sum(works) / capacity, max(works)) * (1 - 1e-9)


def test_time_slices_closed_form():
    # 4 jobs of 3 s on 2 cores, 1 s slices: jobs 0 and 1 run in [0,1], [2,3], [4,5]; 2 and 3 in [1,2],
    # [3,4], [5,6]. Processor sharing would end all four at 6 s.
    assert _finish_times(2.0, [(0, 3.0)] * 4, quantum=1.0, slots=2) == pytest.approx([5.0, 5.0, 6.0, 6.0])
    assert _finish_times(2.0, [(0, 3.0)] * 4) == pytest.approx([6.0] * 4)
    # a job that arrives waits at the back of the queue; alone, a job runs at its alone speed
    assert _finish_times(1.0, [(0, 2.0), (0.5, 1.0)], quantum=1.0, slots=1) == pytest.approx([3.0, 2.0])
    assert _finish_times(2.0, [(0, 1.5)], quantum=0.1, slots=2) == pytest.approx([1.5])
    # slices can leave a core idle at the end that processor sharing would use: on 2 cores with 0.5 s
    # slices, jobs of 1, 1, 0.5 s end at 1.0, 1.5, 1.0 (processor sharing: 1.25, 1.25, 0.75)
    assert _finish_times(2.0, [(0, 1.0), (0, 1.0), (0, 0.5)], quantum=0.5, slots=2) == pytest.approx([1.0, 1.5, 1.0])
    assert _finish_times(2.0, [(0, 1.0), (0, 1.0), (0, 0.5)]) == pytest.approx([1.25, 1.25, 0.75])
    # fewer effective cores than slots: the jobs on a core share the capacity
    assert _finish_times(1.0, [(0, 1.0)] * 2, quantum=10.0, slots=2) == pytest.approx([2.0, 2.0])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.05, 3.0)), min_size=1, max_size=6),
       st.sampled_from([1, 2, 3]))
def test_time_slices_conserve_work_and_approach_processor_sharing(jobs, cores):
    """Short slices approach processor sharing, and no slice length makes the cores do more than they can."""
    ps = np.asarray(_finish_times(float(cores), jobs))
    fine = np.asarray(_finish_times(float(cores), jobs, quantum=1e-3, slots=cores))
    assert fine == pytest.approx(ps, abs=2e-3 * len(jobs))
    coarse = np.asarray(_finish_times(float(cores), jobs, quantum=0.5, slots=cores))
    starts = np.array([a for a, _ in jobs])
    works = np.array([w for _, w in jobs])
    assert np.all(coarse >= starts + works - 1e-9)        # never faster than alone
    assert coarse.max() >= starts.min() + works.sum() / cores - 1e-9   # nor than the cores allow


def test_pool_rejects_bad_capacity_and_work():
    env = simpy.Environment()
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(MoesimError, match="capacity"):
            CorePool(env, bad)
    with pytest.raises(MoesimError, match="work"):
        CorePool(env, 1.0).run(-1.0)
    for bad in (-1e-3, math.inf, math.nan):
        with pytest.raises(MoesimError, match="time slice"):
            CorePool(env, 1.0, bad)


def test_projected_end_of_a_flow_and_after_a_second_one_joins():
    net = FluidNetwork(emulated_testbed(2, 1, link_bandwidth=1e9, stack_bandwidth=1e10), NetworkParams(0.0, 0.5))
    net.start(collectives.p2p(0, 1, 1e9), "x", 0.0)
    assert net.projected_end("x") == math.inf          # still paying its launch overhead
    net.advance(0.5)
    assert net.projected_end("x") == pytest.approx(1.5)
    net.start(collectives.p2p(0, 1, 1e9), "y", 0.5)    # sends from 1.0, when x is half through:
    net.advance(1.0)                                   # sharing the path halves x's rate
    assert net.projected_end("x") == pytest.approx(2.0)
    with pytest.raises(KeyError):
        net.projected_end("nope")


def _bridge_release(spread: float, cid: int):
    topo = Topology(netmodel.testbed_graph(4, 1, 150e6), source="<t>")
    if spread:
        topo.graph.graph["release_spread"] = {"nic": spread}
    env = simpy.Environment()
    bridge = NetworkBridge(env, topo, NetworkProfile(latency_per_message_s=0.0, collective_overhead_s=0.0))
    spec = CollectiveSpec(cid=cid, name="a2a", phase="dispatch", layer=0, direction="fwd", op="all_to_all",
                          channel="ep", groups=((0, 1, 2, 3),), matrix=np.full((4, 4), 1e6))
    members = {r: env.event() for r in range(4)}
    times = {}
    for r, ev in members.items():
        ev.callbacks.append(lambda _e, r=r: times.__setitem__(r, env.now))
    end = bridge.start(spec, cid, members)
    end.callbacks.append(lambda _e: times.__setitem__("end", env.now))
    env.run()
    return times


def test_staggered_release_closed_form():
    base = _bridge_release(0.0, cid=1)
    T = base["end"]
    assert all(base[r] == pytest.approx(T) for r in range(4))       # no spread: all at the end
    s = 0.3
    got = _bridge_release(s, cid=1)
    assert got["end"] == pytest.approx(T)                           # the bytes take as long
    order = [1, 2, 3, 0]                                            # positions rotate with the id
    for j, r in enumerate(order):
        assert got[r] == pytest.approx(T - s * T * (3 - j) / 3, rel=1e-9)


def _pairwise_release(arrive: dict, matrix: np.ndarray, spread: float = 0.0):
    """Release times of a 4x1 All-to-All (``matrix`` bytes) whose ranks arrive at ``arrive[rank]`` s,
    with pairwise start (and a release spread)."""
    topo = Topology(netmodel.testbed_graph(4, 1, 150e6), source="<t>")
    if spread:
        topo.graph.graph["release_spread"] = {"nic": spread}
    env = simpy.Environment()
    bridge = NetworkBridge(env, topo, NetworkProfile(latency_per_message_s=0.0, collective_overhead_s=0.0))
    spec = CollectiveSpec(cid=1, name="a2a", phase="dispatch", layer=0, direction="fwd", op="all_to_all",
                          channel="ep", groups=((0, 1, 2, 3),), matrix=matrix)
    members = {r: env.event() for r in range(4)}
    times = {}
    for r, ev in members.items():
        ev.callbacks.append(lambda _e, r=r: times.__setitem__(r, env.now))

    def rank(r):
        yield env.timeout(arrive[r])
        bridge.arrive_pairwise(spec, 1, r, members, lambda: times.__setitem__("end", env.now))
    for r in range(4):
        env.process(rank(r))
    env.run()
    return times


def _alone(matrix: np.ndarray, ranks) -> float:
    """Seconds the flows of ``matrix`` among ``ranks`` take, as one stage on an idle 4x1 testbed."""
    src, dst = zip(*[(a, b) for a in ranks for b in ranks if a != b])
    net = FluidNetwork(Topology(netmodel.testbed_graph(4, 1, 150e6), source="<t>"), NetworkParams(0.0, 0.0))
    net.start(collectives.Collective("all_to_all", "direct", np.arange(4),
                                     [FlowStage(src, dst, matrix[list(src), list(dst)])]), "x", 0.0)
    t = 0.0
    while net.in_flight:
        t = net.next_event_time()
        net.advance(t)
    return t


def test_pairwise_start_overlaps_early_pairs_with_a_late_rank():
    # ranks 0-2 exchange 1 MB per pair, rank 3 0.1 MB with each of them
    m = np.full((4, 4), 1e6)
    m[3, :] = m[:, 3] = 1e5
    whole = _alone(m, range(4))
    # everyone at once: the same flows in one stage or as six pair stages take the same time, but a rank
    # leaves as soon as its own exchanges have landed (rank 3's small ones first)
    together = _pairwise_release({r: 0.0 for r in range(4)}, m)
    assert [together[r] for r in range(3)] == pytest.approx([whole] * 3, rel=1e-9)
    assert together["end"] == pytest.approx(whole, rel=1e-9) and together[3] < whole / 2
    # rank 3 arrives 1 s late: ranks 0-2 exchange meanwhile, and then every rank waits only for rank
    # 3's own exchanges, which run alone on the network
    late = _pairwise_release({0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0}, m)
    early, star = _alone(m, range(3)), _alone(np.where(m == 1e5, m, 0.0), range(4))
    assert early < 1.0 and star < whole / 5
    assert all(late[r] == pytest.approx(1.0 + star, rel=1e-9) for r in range(4))
    assert late["end"] == pytest.approx(1.0 + star, rel=1e-9)
    # with a release spread, a complete group leaves staggered as a whole All-to-All does
    # (test_staggered_release_closed_form), the last rank when the bytes are through
    uniform = np.full((4, 4), 1e6)
    T = _alone(uniform, range(4))
    got = _pairwise_release({r: 0.0 for r in range(4)}, uniform, spread=0.3)
    for j, r in enumerate([1, 2, 3, 0]):
        assert got[r] == pytest.approx(T - 0.3 * T * (3 - j) / 3, rel=1e-9)
    assert got["end"] == pytest.approx(T, rel=1e-9)


def _campaign_cfg(structure="cdac", top_k=8):
    return load_config({"model": {"name": "small-gpt", "layers": 2, "hidden": 256, "heads": 4, "seq_len": 64,
                                  "vocab": 2048, "dtype": "fp32"},
                        "moe": {"experts": 16, "top_k": top_k, "structure": structure},
                        "parallel": {"ep": 4}, "run": {"global_batch_tokens": 768, "batch_size": 8}})


def test_per_rank_pool_reproduces_the_fixed_share_when_ranks_stay_in_step():
    """capacity f R, alone factor f: R ranks computing together get exactly the profile's share."""
    prof = find_profile(AVX2)
    f, r = prof.device.core_share, prof.device.ranks_per_machine
    topo = Topology(netmodel.testbed_graph(4, 1, 150e6, cores=2), source="<t>")
    for structure in ("cdac", "dcca"):
        cfg = _campaign_cfg(structure)
        fixed = simulate(cfg, topo, prof, SimOptions(cpu_pool=False))
        pooled = simulate(cfg, topo, prof, SimOptions(cpu_pool=True, pool_cores=f * r, alone_factor=f,
                                                       release_spread=0.0, time_slice_s=0.0, pairwise_a2a=False))
        assert pooled.classes.count == 4 and fixed.classes.count < 4
        assert pooled.step_time_s == pytest.approx(fixed.step_time_s, rel=1e-9)
    # the committed profile calibrates a pool: the mode is on by default where cores are shared only
    assert simulate(cfg, topo, prof).classes.count == 4
    plain = Topology(netmodel.testbed_graph(4, 1, 150e6), source="<t>")
    assert simulate(cfg, plain, prof).classes.count < 4


def test_staggered_release_lets_shared_cores_finish_sooner():
    prof = find_profile(AVX2)
    topo = Topology(netmodel.testbed_graph(4, 1, 150e6, cores=2), source="<t>")
    cfg = _campaign_cfg("cdac")
    steps = [simulate(cfg, topo, prof, SimOptions(cpu_pool=True, release_spread=s)).step_time_s
             for s in (0.0, 0.3, 0.6)]
    # the last member to leave computes alone once the others are done: more spread helps no further
    assert steps[0] > steps[1] >= steps[2] - 1e-12
    # more effective cores: never slower
    assert simulate(cfg, topo, prof, SimOptions(cpu_pool=True, pool_cores=4.0)).step_time_s <= steps[0]
    with pytest.raises(MoesimError, match="release_spread"):
        simulate(cfg, topo, prof, SimOptions(cpu_pool=True, release_spread=1.0))
    with pytest.raises(MoesimError, match="alone_factor"):
        simulate(cfg, topo, prof, SimOptions(cpu_pool=True, alone_factor=1.5))
    with pytest.raises(MoesimError, match="shared_cpu_cores"):
        simulate(cfg, Topology(netmodel.testbed_graph(4, 1, 150e6), source="<t>"), prof, SimOptions(cpu_pool=True))
    with pytest.raises(MoesimError, match="capacity"):
        simulate(cfg, topo, prof, SimOptions(cpu_pool=True, pool_cores=0.0))


def test_pool_of_reads_the_topology_and_the_profile():
    measured = find_profile(AVX2).device
    sheet = find_profile("h100-sxm").device
    plain = Topology(netmodel.testbed_graph(2, 1, None), source="<t>")
    assert pool_of(plain, measured) is None
    shared = Topology(netmodel.testbed_graph(2, 1, None, cores=2), source="<t>")
    # the calibrated pool of the committed profile
    assert pool_of(shared, measured) == (measured.pool_cores, measured.alone_factor)
    assert 1.0 < measured.pool_cores < 3.0 and 0 < measured.alone_factor <= 1
    # without one, what the contended share implies: R ranks together get exactly f each
    implied = dataclasses.replace(measured, pool_cores=None, alone_factor=None)
    cap, factor = pool_of(shared, implied)
    assert factor == pytest.approx(measured.core_share) and 0 < factor < 1
    assert cap == pytest.approx(measured.core_share * measured.ranks_per_machine)
    assert pool_of(shared, sheet) == (2.0, 1.0)
    shared.graph.graph["shared_cpu_cores"] = "two"
    with pytest.raises(MoesimError, match="shared_cpu_cores"):
        pool_of(shared, measured)


def test_release_spread_of_the_committed_patterns():
    files = sorted(glob.glob("calibration/patterns/release-*.csv"))
    r = release_spread(files)
    assert 0.15 < r.spread < 0.6 and r.rows >= 6 * len(files)
    assert set(r.per_file) == {f.split("/")[-1] for f in files}


def test_release_spread_rejects_bad_tables(tmp_path):
    src = open("calibration/patterns/release-4x1-150mbit-393216.csv").read().splitlines()
    header = src[2].split(",")
    col = header.index("release_spread")
    row = src[3].split(",")
    row[col] = "1.5"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(src[:3] + [",".join(row)]) + "\n")
    with pytest.raises(InputFileError, match="release_spread"):
        read_patterns(bad)
    row[col] = "nan"
    bad.write_text("\n".join(src[:3] + [",".join(row)]) + "\n")
    with pytest.raises(InputFileError, match="not a finite number"):
        read_patterns(bad)
    old = tmp_path / "old.csv"
    old.write_text("\n".join(src[:2] + ["pattern,rep,seconds", "all_to_all,0,0.1"]) + "\n")
    with pytest.raises(InputFileError, match="release_spread"):
        read_patterns(old)
    run = sorted(glob.glob("calibration/avx2/validation/*.csv"))[0]
    with pytest.raises(InputFileError, match="expected a 'patterns' table"):
        read_patterns(run)
    with pytest.raises(MoesimError, match="no patterns tables"):
        release_spread([])


def test_pool_study_fits_and_judges_both_models(tmp_path, capsys):
    """One-point grids: the study refits the campaign's profile both ways and judges each with validate."""
    from moesim.calibrate.poolstudy import main
    out = tmp_path / "study.json"
    grids = ["--wait-ms", "5", "--penalty", "0.15", "--peer", "0.2", "--bursts", "0", "--cores", "2",
             "--alone", "0.9", "--refine", "0"]
    assert main(["calibration/avx2/validation", "--out", str(out)] + grids) == 0
    rep = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert "fixed_share" in text and "cpu_pool" in text and "pairs within 10 %" in text
    fixed, pool = rep["fixed_share"], rep["cpu_pool"]
    assert fixed["pairs_judged"] == pool["pairs_judged"] == 12
    assert pool["params"]["pool_cores"] == 2 and pool["params"]["alone_factor"] == 0.9
    assert pool["params"]["release_spread"] == pytest.approx(
        release_spread(sorted(glob.glob("calibration/patterns/release-*.csv"))).spread)
    assert "pool_cores" not in fixed["params"]
    # the two models predict differently, and each is judged on the same held-out rows
    assert fixed["heldout"]["rows"] == pool["heldout"]["rows"] >= 16
    assert [p["predicted_speedup"] for p in fixed["pairs"]] != [p["predicted_speedup"] for p in pool["pairs"]]
    for r in (fixed, pool):
        assert r["speedup_max_error"] == pytest.approx(max(p["error"] for p in r["pairs"]))
    assert main(["calibration/avx2/validation", "--patterns", str(tmp_path / "none.csv")]) == 2
    assert "patterns table not found" in capsys.readouterr().err


def test_simulated_core_share_follows_the_scheduler_probe():
    """Cross-check with the real testbed, on data the fit never saw: where the probe measured CDAC
    ranks getting clearly more of a core than DCCA's (long, rate-limited All-to-Alls pull them
    apart), the shared-core simulation of the same runs gives CDAC more too; where it measured no
    difference (unshaped), neither does the simulation."""
    from moesim.validate.core import (REAL_BACKEND_BUCKET_BYTES, RunSpec, group_repeats, load_run, mean_copies,
                                      topology_for)
    probe = json.load(open("calibration/avx2/schedprobe.json"))
    measured: dict = {}
    for r in probe["runs"]:
        measured.setdefault((r["testbed"], r["rate"], r["top_k"]), {})[r["structure"]] = r["schedstat"]["core_share"]
    prof = find_profile(AVX2)
    checked = 0
    for (tb, rate, k), share in sorted(measured.items()):
        gap = share["cdac"] - share["dcca"]
        if 0.01 < gap < 0.08:
            continue                                  # in between: no claim either way
        sim = {}
        for structure in ("cdac", "dcca"):
            files = sorted(glob.glob(f"calibration/avx2/validation/{tb}-{rate}-{structure}-k{k}-r*.csv"))
            runs = group_repeats([load_run(RunSpec(Path(f))) for f in files])[0]
            topo, _ = topology_for(runs[0].spec, runs[0].table)
            res = simulate(runs[0].cfg, topo, prof, SimOptions(bucket_bytes=REAL_BACKEND_BUCKET_BYTES,
                                                                a2a_copies=mean_copies(runs)))
            sim[structure] = float(np.mean(res.compute_share()))
            assert res.summary()["cpu_pool"]["pool_cores"] == prof.device.pool_cores
        if gap >= 0.08:
            assert sim["cdac"] - sim["dcca"] >= 0.05, (tb, rate, k, share, sim)
        else:
            assert abs(sim["cdac"] - sim["dcca"]) <= 0.03, (tb, rate, k, share, sim)
        checked += 1
    assert checked >= 4
    assert simulate(_campaign_cfg(), Topology(netmodel.testbed_graph(4, 1, 150e6), source="<t>"),
                    prof).compute_share() is None


def test_measured_rank_skew_closed_form():
    from moesim.calibrate.skew import measured_call_times, measured_last_arriver, measured_skew, pick_closest
    import pandas as pd
    rows = []
    for step in (0, 1, 2):
        for rank, per_call in enumerate((0.010, 0.012, 0.014, 0.020)):   # mean 14 ms, min 10 ms
            rows.append({"step": step, "rank": rank, "phase": "dispatch", "direction": "fwd",
                         "seconds": 2 * per_call, "count": 2})
            rows.append({"step": step, "rank": rank, "phase": "combine", "direction": "fwd",
                         "seconds": per_call + 0.001 * step, "count": 1})   # + same offset: skew unchanged
            rows.append({"step": step, "rank": rank, "phase": "attention", "direction": "fwd",
                         "seconds": 1.0 * rank, "count": 1})                 # not an All-to-All
    assert measured_skew(pd.DataFrame(rows)) == pytest.approx(0.004)
    # the last arriver: min over ranks per call, 10 ms in every dispatch, 10, 11, 12 ms in the combines
    assert measured_last_arriver(pd.DataFrame(rows)) == pytest.approx(0.010)
    assert measured_last_arriver(pd.DataFrame([r for r in rows if r["phase"] != "dispatch"])) == pytest.approx(0.011)
    # per phase: last arriver, mean and first arriver per call, medians over the steps
    t = measured_call_times(pd.DataFrame(rows))
    assert list(t.index) == [("combine", "fwd"), ("dispatch", "fwd")]
    assert t.loc[("dispatch", "fwd")].tolist() == pytest.approx([0.010, 0.014, 0.020])
    assert t.loc[("combine", "fwd")].tolist() == pytest.approx([0.011, 0.015, 0.021])
    with pytest.raises(MoesimError, match="two ranks"):
        measured_skew(pd.DataFrame([r for r in rows if r["rank"] == 0]))
    # the slice whose simulated skew is closest; a tie goes to the shorter slice
    sims = {0.0: [0.0, 0.001], 0.01: [0.003, 0.004], 0.03: [0.005, 0.005], 0.05: [0.005, 0.005]}
    best, rms = pick_closest(sims, np.array([0.006, 0.007]), lambda q: sims[q])
    assert best == 0.03 and rms[0.03] == rms[0.05] < rms[0.01] < rms[0.0]


def test_simulated_rank_skew_counts_calls_as_the_runs_do():
    """A layer's forward dispatch is one call in the runs (its split-size exchange and payload are
    timed together) but two collectives in the engine: the simulated skew sums them per layer."""
    from types import SimpleNamespace

    from moesim.calibrate.skew import simulated_call_times, simulated_last_arriver, simulated_skew
    from moesim.engine.result import Span

    def rank(counts, payload, combine):
        out = []
        for layer in (0, 1):
            out += [Span("compute", "wait:dispatch_counts", "dispatch", layer, "fwd", 0.0, counts),
                    Span("compute", "wait:dispatch", "dispatch", layer, "fwd", 0.0, payload),
                    Span("compute", "wait:combine", "combine", layer, "fwd", 0.0, combine),
                    Span("compute", "attention", "attention", layer, "fwd", 0.0, 9.0)]
        return out
    # per call (layer): dispatch 4, 6, 8 ms (mean 6, min 4: skew 2 ms); combine 1, 4, 7 ms (skew 3 ms)
    res = SimpleNamespace(class_spans=[rank(0.001, 0.003, 0.001), rank(0.002, 0.004, 0.004),
                                       rank(0.001, 0.007, 0.007)])
    assert simulated_skew(res) == pytest.approx(0.0025)      # the median of 2 and 3 ms
    assert simulated_last_arriver(res) == pytest.approx(0.0025)   # the median of 4 (dispatch) and 1 ms (combine)
    t = simulated_call_times(res)
    assert t.loc[("dispatch", "fwd")].tolist() == pytest.approx([0.004, 0.006, 0.008])
    assert t.loc[("combine", "fwd")].tolist() == pytest.approx([0.001, 0.004, 0.007])
    with pytest.raises(MoesimError, match="rank by rank"):
        simulated_last_arriver(SimpleNamespace(class_spans=[rank(0.001, 0.003, 0.001)]))
    with pytest.raises(MoesimError, match="rank by rank"):
        simulated_skew(SimpleNamespace(class_spans=[rank(0.001, 0.003, 0.001)]))


def test_time_slices_put_simulated_ranks_apart_as_measured():
    """Processor sharing keeps the ranks of a step in step (no skew); time slices as long as the
    compute between All-to-Alls let the ranks reach them apart, as on the testbed."""
    from moesim.calibrate.skew import simulated_skew
    prof = find_profile(AVX2)
    topo = Topology(netmodel.testbed_graph(4, 1, 400e6, cores=2), source="<t>")
    cfg = _campaign_cfg("dcca")
    skews = [simulated_skew(simulate(cfg, topo, prof, SimOptions(cpu_pool=True, pairwise_a2a=True, release_spread=0.0,
                                                                time_slice_s=q))) for q in (0.0, 0.004, 0.03)]
    assert skews[0] < 2e-4 < skews[1] < skews[2]
    # the engine is work conserving: the step hardly changes
    steps = [simulate(cfg, topo, prof, SimOptions(cpu_pool=True, time_slice_s=q)).step_time_s for q in (0.0, 0.03)]
    assert steps[1] == pytest.approx(steps[0], rel=0.03)


def test_all_to_all_cpu_closed_form():
    """Ranks in step (together start, processor sharing, no stagger): every All-to-All call has its
    4 members run a2a_cpu_s of alone work together on K effective cores once the data has landed, so
    the step grows by exactly calls x a2a_cpu_s x 4 / K, and the time lands in the All-to-All's own
    phase (its wait span), not in compute."""
    prof = find_profile(AVX2)
    topo = Topology(netmodel.testbed_graph(4, 1, None, cores=2), source="<t>")
    cfg = _campaign_cfg("dcca", top_k=2)
    k_cores, kappa = 1.6, 0.003
    opts = dict(cpu_pool=True, pool_cores=k_cores, alone_factor=0.7, release_spread=0.0, time_slice_s=0.0,
                pairwise_a2a=False)
    base = simulate(cfg, topo, prof, SimOptions(**opts))
    more = simulate(cfg, topo, prof, SimOptions(a2a_cpu_s=kappa, **opts))
    calls = sum(1 for c in base.program.collectives.values() if c.op == "all_to_all")
    # 2 layers x (dispatch, combine) x (forward, backward), and the forward dispatch's split-size exchange
    assert calls == 10
    assert more.step_time_s - base.step_time_s == pytest.approx(calls * kappa * 4 / k_cores, rel=1e-6)

    def wait_time(res, phase):
        return sum(sp.end - sp.start for sp in res.class_spans[0] if sp.name.startswith("wait:") and sp.phase == phase)
    grew = sum(wait_time(more, ph) - wait_time(base, ph) for ph in ("dispatch", "combine"))
    assert grew == pytest.approx(calls * kappa * 4 / k_cores, rel=1e-6)
    # the profile's value is the default; the option overrides it; off the pool it does nothing
    fitted = dataclasses.replace(prof, device=dataclasses.replace(prof.device, a2a_cpu_s=kappa))
    assert simulate(cfg, topo, fitted, SimOptions(**opts)).step_time_s == pytest.approx(more.step_time_s, rel=1e-12)
    assert simulate(cfg, topo, fitted, SimOptions(a2a_cpu_s=0.0, **opts)).step_time_s == pytest.approx(
        base.step_time_s, rel=1e-12)
    assert simulate(cfg, topo, fitted, SimOptions(cpu_pool=False)).step_time_s == pytest.approx(
        simulate(cfg, topo, prof, SimOptions(cpu_pool=False)).step_time_s, rel=1e-12)
    for bad in (-1e-3, 1.0, float("nan")):
        with pytest.raises(MoesimError, match="a2a_cpu_s"):
            simulate(cfg, topo, prof, SimOptions(a2a_cpu_s=bad, **opts))


def test_all_to_all_cpu_beside_the_transfer_closed_form():
    """Ranks in step as above, with the All-to-All CPU beside the transfer (a2a_cpu_overlap): each call
    starts its members' CPU (4 x a2a_cpu_s of alone work on K effective cores) with its transfer and
    returns when both are done, so a call of transfer time T takes max(T, 4 a2a_cpu_s / K), and the
    step grows by the sum over calls of max(0, 4 a2a_cpu_s / K - T): on shaped links the CPU of the
    long calls is hidden and only the short ones pay. After the data (the default) it always adds."""
    prof = find_profile(AVX2)
    topo = Topology(netmodel.testbed_graph(4, 1, 150e6, cores=2), source="<t>")
    cfg = _campaign_cfg("cdac", top_k=2)
    k_cores, kappa = 1.6, 0.004
    opts = dict(cpu_pool=True, pool_cores=k_cores, alone_factor=0.7, release_spread=0.0, time_slice_s=0.0,
                pairwise_a2a=False)
    base = simulate(cfg, topo, prof, SimOptions(**opts))
    beside = simulate(cfg, topo, prof, SimOptions(a2a_cpu_s=kappa, a2a_cpu_overlap=True, **opts))
    after = simulate(cfg, topo, prof, SimOptions(a2a_cpu_s=kappa, **opts))
    a2a = [c for c in base.program.collectives.values() if c.op == "all_to_all"]
    spans = {sp.name: sp.end - sp.start for sp in base.collective_spans}
    transfer = np.array([spans[c.name] for c in a2a])
    cpu = 4 * kappa / k_cores
    assert len(transfer) == 10 and (transfer > cpu).any() and (transfer < cpu).any()   # both kinds of call
    assert beside.step_time_s - base.step_time_s == pytest.approx(np.maximum(0.0, cpu - transfer).sum(), rel=1e-6)
    assert after.step_time_s - base.step_time_s == pytest.approx(len(transfer) * cpu, rel=1e-6)
    # the profile's flag is the default; off the pool, or with no All-to-All CPU, it does nothing
    fitted = dataclasses.replace(prof, device=dataclasses.replace(prof.device, a2a_cpu_s=kappa, a2a_cpu_overlap=True))
    assert simulate(cfg, topo, fitted, SimOptions(**opts)).step_time_s == pytest.approx(beside.step_time_s, rel=1e-12)
    assert simulate(cfg, topo, prof, SimOptions(a2a_cpu_overlap=True, **opts)).step_time_s == pytest.approx(
        base.step_time_s, rel=1e-12)


@pytest.mark.parametrize("field, default, good, bads", [
    ("a2a_cpu_s", 0.0, 0.0025, (-0.001, 2.0, "fast")),
    ("compute_first", False, True, ("yes", 1)),          # moesim.engine.cpupool: compute first
    ("a2a_cpu_overlap", False, True, ("on", 0)),         # moesim.engine.simulator: CPU beside the transfer
])
def test_profile_reads_a_cpu_pool_field_and_names_a_bad_one(tmp_path, field, default, good, bads):
    import yaml

    from moesim.cost.profile import load_profile
    data = yaml.safe_load(Path(AVX2).read_text())
    assert getattr(find_profile(AVX2).device, field) == default      # committed profiles: off
    data["calibration"]["cpu_pool"][field] = good
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(data))
    assert getattr(load_profile(path).device, field) == good
    for bad in bads:
        data["calibration"]["cpu_pool"][field] = bad
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(InputFileError, match=rf"bad\.yaml.*calibration\.cpu_pool\.{field}"):
            load_profile(path)


def test_step_release_spread_staggers_unshaped_all_to_alls_closed_form():
    """A spread for every link class ('*', the profile's step_release_spread) staggers an All-to-All over
    unshaped links too, by the same closed form as over shaped ones; a one-host group is never staggered."""
    def release(graph, spread, groups=((0, 1, 2, 3),)):
        topo = Topology(graph, source="<t>")
        if spread:
            topo.graph.graph["release_spread"] = {"*": spread}
        env = simpy.Environment()
        bridge = NetworkBridge(env, topo, NetworkProfile(latency_per_message_s=0.0, collective_overhead_s=0.0))
        n = len(groups[0])
        spec = CollectiveSpec(cid=1, name="a2a", phase="dispatch", layer=0, direction="fwd", op="all_to_all",
                              channel="ep", groups=groups, matrix=np.full((n, n), 1e6))
        members = {r: env.event() for g in groups for r in g}
        times = {}
        for r, ev in members.items():
            ev.callbacks.append(lambda _e, r=r: times.__setitem__(r, env.now))
        bridge.start(spec, 1, members)
        env.run()
        return times
    unshaped = netmodel.testbed_graph(4, 1, None)
    T = release(unshaped, 0.0)[0]
    assert T > 0
    got = release(unshaped, 0.6)
    for j, r in enumerate([1, 2, 3, 0]):
        assert got[r] == pytest.approx(T - 0.6 * T * (3 - j) / 3, rel=1e-9)
    one_host = release(netmodel.testbed_graph(1, 4, None), 0.6)        # every member on one host
    assert len({round(t, 12) for t in one_host.values()}) == 1


def test_profile_step_release_spread_reaches_the_engine():
    """The profile's step_release_spread releases the ranks of an unshaped step's All-to-Alls apart (the
    runs' timelines show 3-9 ms); SimOptions.release_spread = 0 overrides it back to together."""
    from moesim.calibrate.arrivals import call_spreads, simulated_timeline
    prof = find_profile(AVX2)
    spread_prof = dataclasses.replace(prof, device=dataclasses.replace(prof.device, step_release_spread=0.77))
    topo = Topology(netmodel.testbed_graph(4, 1, None, cores=2), source="<t>")
    cfg = _campaign_cfg("cdac", top_k=2)

    def exits(profile, **kw):
        res = simulate(cfg, topo, profile, SimOptions(cpu_pool=True, **kw))
        return call_spreads(simulated_timeline(res, "cdac"), "model")["exit_spread"]
    assert (exits(prof) < 1e-4).all()
    spread = exits(spread_prof)
    assert (spread > 5e-4).all()
    assert (exits(spread_prof, release_spread=0.0) < 1e-4).all()
    assert exits(prof, release_spread=0.77).to_numpy() == pytest.approx(spread.to_numpy(), rel=1e-9)


def test_profile_step_release_spread_is_checked(tmp_path):
    import yaml
    from moesim.cost.profile import load_profile
    data = yaml.safe_load(Path(AVX2).read_text())
    for bad, why in ((1.0, "must lie in [0, 1)"), (-0.1, "non-negative"), ("wide", "must be a number")):
        data["calibration"]["cpu_pool"]["step_release_spread"] = bad
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(InputFileError, match=re.escape(why)) as err:
            load_profile(path)
        assert "calibration.cpu_pool.step_release_spread" in str(err.value) and "p.yaml" in str(err.value)
    data["calibration"]["cpu_pool"]["step_release_spread"] = 0.5
    path.write_text(yaml.safe_dump(data))
    assert load_profile(path).device.step_release_spread == 0.5
