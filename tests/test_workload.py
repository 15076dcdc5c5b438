"""The workload builder: ops, routing, and agreement with the analytic model."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from moesim.analytic import a2a_bytes_per_step, flops_per_step
from moesim.config import load_config
from moesim.workload import Compute, Launch, Wait, build_program, expert_pick_probability, plan_routing
from moesim.workload.groups import dp_groups, ep_groups, expert_dp_groups, tp_groups


def cfg(*over, preset="gpt3-medium"):
    return load_config(preset, list(over))


@pytest.mark.parametrize("structure", ["cdac", "dcca"])
@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_simulated_a2a_bytes_equal_analytic(structure, mode):
    c = cfg(f"moe.structure={structure}", "moe.top_k=8", f"run.mode={mode}")
    assert build_program(c).a2a_bytes() == pytest.approx(a2a_bytes_per_step(c).total, rel=1e-12)


def test_training_flops_match_layers_convention_gemm_flops():
    """Summed GEMM FLOPs of the program over all ranks = analytic FLOPs ('layers' convention)."""
    c = cfg("moe.structure=dcca", "moe.top_k=4", "parallel.ep=8", "moe.capacity_factor=null")
    prog = build_program(c)
    # scalar-sized ops are per rank (times world size); per-rank arrays already cover every rank
    per_rank_ops = [op for op in prog.items if isinstance(op, Compute) and np.ndim(op.m) == 0]
    uniform = sum(float(op.flops()) for op in per_rank_ops) * c.world_size
    arrays = sum(float(np.sum(op.flops())) for op in prog.items if isinstance(op, Compute) and np.ndim(op.m) > 0)
    assert uniform + arrays == pytest.approx(flops_per_step(c, "layers").total, rel=1e-12)


def test_groups_partition_ranks():
    c = cfg("parallel.ep=4", "parallel.dp=8", "parallel.tp=2")
    world = set(range(16))
    for groups in (tp_groups(c), ep_groups(c), dp_groups(c), expert_dp_groups(c)):
        flat = [r for g in groups for r in g]
        assert sorted(flat) == sorted(world)
    assert ep_groups(c)[0] == (0, 2, 4, 6) and expert_dp_groups(c)[0] == (0, 8)


def test_every_launch_is_waited_or_is_a_gradient_bucket():
    prog = build_program(cfg("parallel.ep=4", "parallel.dp=8", "moe.shared_experts=1"))
    launched = [it.cid for it in prog.items if isinstance(it, Launch)]
    waited = {it.cid for it in prog.items if isinstance(it, Wait)}
    assert set(launched) == waited and len(launched) == len(set(launched))
    phases = {prog.collectives[c].phase for c in launched}
    assert phases == {"dispatch", "combine", "grad_allreduce"}


@pytest.mark.parametrize("mode", ["train", "decode"])
def test_each_forward_dispatch_is_preceded_by_its_split_size_exchange(mode):
    """As in real_backend (and every All-to-All-v dispatcher): before a forward dispatch the ranks
    exchange their per-expert counts (int64, E/ep per peer), a blocking control All-to-All in the
    dispatch phase; the backward reuses them, and token byte counts leave them out."""
    c = cfg("parallel.ep=4", "moe.experts=16", f"run.mode={mode}")
    prog = build_program(c)
    colls = list(prog.collectives.values())
    counts = [s for s in colls if s.name == "dispatch_counts"]
    dispatch = [s for s in colls if s.name == "dispatch"]
    assert len(counts) == len([s for s in dispatch if s.direction == "fwd"]) == c.model.layers
    assert all(s.direction == "fwd" and s.phase == "dispatch" and s.control and s.op == "all_to_all" for s in counts)
    assert np.all(counts[0].matrix == 8.0 * 16 / 4)
    order = [prog.collectives[it.cid].name for it in prog.items if isinstance(it, Launch)]
    first = order.index("dispatch_counts")
    assert order[first + 1] == "dispatch"
    tokens = sum(s.bytes_leaving_ranks() for s in dispatch + [s for s in colls if s.name == "combine"])
    assert prog.a2a_bytes() == pytest.approx(tokens)
    assert counts[0].bytes_leaving_ranks() > 0


def test_ep1_and_dense_have_no_all_to_all():
    for c in (cfg("parallel.ep=1"), cfg("moe.structure=dense", "parallel.ep=1", "parallel.dp=4")):
        prog = build_program(c)
        assert not any(s.op == "all_to_all" for s in prog.collectives.values())


def test_zipf_routing_is_skewed_and_deterministic():
    c = cfg("moe.routing=zipf", "moe.zipf_exponent=1.2", "moe.top_k=4")
    q = expert_pick_probability(c)
    assert q.sum() == pytest.approx(4) and q.max() <= 1 + 1e-12 and q.max() > 2 * q.min()
    assert np.array_equal(q, expert_pick_probability(c))
    assert not np.array_equal(q, expert_pick_probability(cfg("moe.routing=zipf", "moe.zipf_exponent=1.2",
                                                            "moe.top_k=4", "run.seed=7")))


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 8), s=st.floats(0, 3), cf=st.one_of(st.none(), st.floats(0.3, 2.0)), tokens=st.integers(1, 5000))
def test_routing_plan_conserves_copies(k, s, cf, tokens):
    c = cfg(f"moe.top_k={k}", "moe.routing=zipf", f"moe.zipf_exponent={s}",
            f"moe.capacity_factor={'null' if cf is None else cf}", "parallel.ep=8")
    plan = plan_routing(c, tokens)
    q = expert_pick_probability(c)
    assert np.all(q <= 1 + 1e-9) and q.sum() == pytest.approx(k)
    sent = plan.sent.sum()
    assert sent == pytest.approx(plan.matrix.sum()) == pytest.approx(plan.per_expert.sum())
    assert sent <= 8 * tokens * k * (1 + 1e-9)
    assert 0 <= plan.dropped_fraction <= 1
    if cf is None:
        assert plan.dropped_fraction == pytest.approx(0, abs=1e-12)


def test_routing_file(tmp_path):
    shares = np.arange(1, 65, dtype=float)
    f = tmp_path / "shares.csv"
    f.write_text(",".join(str(x) for x in shares))
    c = cfg("moe.routing=file", f"moe.routing_file={f}", "moe.top_k=2")
    q = expert_pick_probability(c)
    assert q[-1] / q[0] == pytest.approx(64)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3")
    from moesim.errors import InputFileError
    with pytest.raises(InputFileError, match="expected 64 per-expert shares"):
        expert_pick_probability(cfg("moe.routing=file", f"moe.routing_file={bad}"))


def test_every_op_carries_phase_flops_bytes_and_shape():
    from moesim.workload import PHASES
    prog = build_program(cfg("moe.structure=dcca", "moe.routing=zipf"))
    for op in (it for it in prog.items if isinstance(it, Compute)):
        assert op.phase in PHASES
        assert np.all(np.asarray(op.bytes_moved(2)) > 0)
        if op.kind == "gemm":
            assert op.n > 0 and op.k > 0 and np.all(np.asarray(op.flops()) >= 0)
    gemm = Compute("x", "experts", 0, "fwd", "gemm", m=4, n=8, k=16, count=2)
    assert gemm.flops() == 2 * 4 * 8 * 16 * 2 and gemm.bytes_moved(2) == 2 * (64 + 128 + 32) * 2
