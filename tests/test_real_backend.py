"""real_backend: layers vs a naive reference (single process and expert-parallel on gloo with 2 and
4 processes), bytes of the All-to-Alls, parameter counts vs the analytic model, the runner's CSV,
microbenchmarks, and bounded failure (crash / hang) with no output and no process left behind."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moesim.config import load_config  # noqa: E402
from real_backend.phases import PHASES  # noqa: E402
from real_backend.layers import GPT, MoE, count_parameters  # noqa: E402
from real_backend.parallel import Groups, single  # noqa: E402
from real_backend.reference import reference_moe  # noqa: E402
from real_backend.results import RUN_COLUMNS, read_table  # noqa: E402
from real_backend.timing import Recorder  # noqa: E402

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "real_backend" / "configs" / "small-gpt.yaml"
TOL = 1e-10  # fp64 everywhere in the correctness checks


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _procs_mentioning(token: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if token in (d / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


# ------------------------------------------------------------------------------------------------
# parameter counts
# ------------------------------------------------------------------------------------------------
def _layers_formula(cfg) -> int:
    """The 'layers' convention written out independently of moesim.analytic."""
    m, moe = cfg.model, cfg.moe
    h, l, v, s = m.hidden, m.layers, m.vocab, m.seq_len
    total = v * h + s * h + 2 * h
    per = 4 * h + 4 * h * h + 4 * h
    if cfg.is_moe:
        d_in, inner = cfg.expert_io_dim, cfg.expert_inner_dim
        expert = 2 * d_in * inner + inner + d_in
        per += h * moe.experts + (moe.experts + moe.shared_experts) * expert
        if moe.structure == "dcca":
            per += 2 * h * cfg.low_dim
    else:
        f = m.dense_ffn
        per += 2 * h * f + f + h
    return total + l * per


PARAM_CASES = [
    ("gpt3-medium", []),
    ("gpt3-xl", ["moe.structure=dcca"]),
    ("gpt3-2.7b", ["moe.structure=dcca", "moe.shared_experts=2"]),
    ("gpt3-6.7b", ["moe.shared_experts=1"]),
    ("gpt3-medium", ["moe.structure=dense", "parallel.ep=1"]),
    (str(SMALL), ["moe.structure=dcca", "moe.low_dim=48", "moe.dcca_expert_hidden=200"]),
    (str(SMALL), ["moe.expert_hidden=96", "moe.shared_experts=1"]),
]


@pytest.mark.parametrize("model,overrides", PARAM_CASES)
def test_parameter_count_matches_layers_convention(model, overrides):
    cfg = load_config(model, overrides)
    ep = cfg.parallel.ep if cfg.is_moe else 1
    with torch.device("meta"):
        full = GPT(cfg, single("meta"))
        sharded = GPT(cfg, Groups(ep_size=ep, ep_rank=ep - 1, device=torch.device("meta")))
    n = count_parameters(full)
    assert n == _layers_formula(cfg)
    assert count_parameters(sharded, ep_size=ep) == n  # one rank's share x ep
    analytic = pytest.importorskip("moesim.analytic")
    assert n == analytic.parameter_count(cfg, convention="layers").total


def test_init_is_identical_across_ranks_and_layouts():
    from real_backend.layers import build_model
    cfg = load_config(SMALL, ["moe.structure=dcca", "moe.shared_experts=1"])
    full = dict(build_model(cfg, single()).named_parameters())
    for rank in range(4):
        part = build_model(cfg, Groups(ep_size=4, ep_rank=rank))
        for name, p in part.named_parameters():
            ref = full[name]
            if ".experts." in name:
                ref = ref[rank * 2:(rank + 1) * 2]
            assert torch.equal(p, ref), name


# ------------------------------------------------------------------------------------------------
# single process: layers vs the naive reference, timing markers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["cdac", "dcca"])
@pytest.mark.parametrize("cf", [None, 0.5])
def test_moe_single_process_matches_reference(structure, cf):
    cfg = load_config({"model": {"layers": 1, "hidden": 32, "heads": 2, "seq_len": 40, "vocab": 16},
                       "moe": {"structure": structure, "experts": 8, "top_k": 2, "capacity_factor": cf,
                               "shared_experts": 1}, "parallel": {"ep": 1}})
    torch.manual_seed(0)
    moe = MoE(cfg, single(), Recorder("cpu"), with_norm=False).double()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(40, 32, dtype=torch.float64, requires_grad=True)
    g = torch.randn(40, 32, dtype=torch.float64)
    y, aux = moe(x)
    ((y * g).sum() + aux).backward()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in moe.named_parameters()}
    xr = x.detach().clone().requires_grad_(True)
    yr, auxr, dropped = reference_moe(xr, params, structure, 2, cf)
    ((yr * g).sum() + auxr).backward()
    assert moe.last_plan.dropped == dropped and (dropped > 0) == (cf is not None)
    assert torch.allclose(y, yr, rtol=0, atol=TOL)
    assert torch.allclose(x.grad, xr.grad, rtol=0, atol=TOL)
    for n, p in moe.named_parameters():
        assert torch.allclose(p.grad, params[n].grad, rtol=0, atol=TOL), n


def test_recorder_books_the_threads_cpu_per_interval():
    """Busy work in an interval is CPU of the recording thread; sleeping, or another thread's work, is not."""
    import threading
    rec = Recorder("cpu")
    with rec.interval("experts", "fwd"):
        t_end = time.perf_counter() + 0.05
        while time.perf_counter() < t_end:
            pass
    with rec.interval("dispatch", "fwd"):
        worker = threading.Thread(target=lambda: sum(i * i for i in range(300_000)))
        worker.start()
        time.sleep(0.05)
        worker.join()
    (_, _, a0, b0, busy), (_, _, a1, b1, idle) = rec.intervals
    assert 0.3 * (b0 - a0) < busy <= (b0 - a0) + 1e-3         # all of it on an idle core; less on a busy machine
    assert idle < 5e-3 and (b1 - a1) >= 0.05                  # the sleep and the worker's CPU are not this thread's
    # off the recording thread (a hook on another thread) or on a GPU stamp: unknown, not 0
    box = []
    t = threading.Thread(target=lambda: box.append(rec.cpu_stamp()))
    t.start()
    t.join()
    assert box == [None] and Recorder.cpu_between(None, 1.0) is None


def test_backward_phase_times_add_up_to_backward_wall_time():
    cfg = load_config(SMALL, ["parallel.ep=1", "moe.structure=dcca", "moe.shared_experts=1",
                              "model.hidden=64", "model.vocab=512"])
    rec = Recorder("cpu")
    from real_backend.layers import build_model
    model = build_model(cfg, single(), rec)
    ids = torch.randint(0, 512, (2, 64))
    loss, aux = model(ids, ids)
    rec.bwd_begin()
    t0 = time.perf_counter()
    (loss + 0.01 * aux).backward()
    rec.bwd_end("embedding")
    wall = time.perf_counter() - t0
    summ = rec.summary()
    bwd = {p: v for (p, d), v in summ.items() if d == "bwd"}
    assert set(bwd) == {"embedding", "attention", "gate", "descend", "dispatch", "experts", "shared_experts",
                        "combine", "ascend", "lm_head"}
    assert all(v["count"] == (1 if p in ("embedding", "lm_head") else cfg.model.layers) for p, v in bwd.items())
    assert abs(sum(v["seconds"] for v in bwd.values()) - wall) < 0.05 * wall + 1e-3
    # every interval carries the main thread's CPU in it, the backward ones too (CPU autograd runs on
    # the calling thread), never more than its wall time
    assert all(cpu is not None and 0 <= cpu <= (b - a) + 1e-3 for _, _, a, b, cpu in rec.intervals)
    fwd = {p for (p, d) in summ if d == "fwd"}
    assert fwd == set(bwd)
    assert set(p for p, _ in summ) <= set(PHASES)


# ------------------------------------------------------------------------------------------------
# expert parallel on gloo: 2 and 4 processes vs the reference
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def parallel_results(request):
    from real_backend.selftest import run_checks
    return request.param, run_checks(request.param)


def test_expert_parallel_forward_and_all_gradients_match_reference(parallel_results):
    world, res = parallel_results
    names = set(res)
    for s in ("cdac", "dcca"):
        for r in ("topk", "forced_skew", "bias_skew"):
            assert {f"{s}-{r}-dropless", f"{s}-{r}-drop"} <= names
    assert f"gpt-dcca-ep{world}" in names
    bad = {}
    for name, r in res.items():
        for what, err in r["errors"].items():
            if not err <= TOL:
                bad[f"{name}/{what}"] = err
        if r["case"]["kind"] == "moe":
            # every gradient of every parameter was compared
            assert "output" in r["errors"] and "grad:x" in r["errors"] and "grad:router.gate.weight" in r["errors"]
            assert any(k.startswith("grad:experts.") for k in r["errors"])
    assert not bad, bad


def test_capacity_drops_and_skew_really_happen(parallel_results):
    world, res = parallel_results
    for name, r in res.items():
        if r["case"]["kind"] != "moe":
            continue
        dropped = [rank["dropped"] for rank in r["ranks"]]
        assert dropped == r["dropped_ref"]  # same drops as the reference, rank by rank
        if r["case"]["capacity_factor"] is None:
            assert sum(dropped) == 0
        else:
            assert sum(dropped) > 0, name
        if r["case"]["routing"] == "forced_skew":
            splits = r["ranks"][0]["in_splits"]
            assert max(splits) >= 3 * max(1, min(splits)), splits  # unequal split sizes


def test_dcca_all_to_all_bytes_are_d_over_h_of_cdac(parallel_results):
    world, res = parallel_results
    for routing in ("forced_skew",):
        for drop in ("dropless", "drop"):
            c, d = res[f"cdac-{routing}-{drop}"], res[f"dcca-{routing}-{drop}"]
            ratio = d["dims"]["a2a_dim"] / c["dims"]["a2a_dim"]
            assert ratio == pytest.approx(0.25)
            for rc, rd in zip(c["ranks"], d["ranks"]):
                assert rc["in_splits"] == rd["in_splits"]  # same tokens, same routing
                for key in ("dispatch:fwd", "dispatch:bwd", "combine:fwd", "combine:bwd"):
                    assert rc["bytes"][key] > 0
                    assert rd["bytes"][key] * 4 == rc["bytes"][key], key
                    assert rd["bytes_remote"][key] * 4 == rc["bytes_remote"][key], key


def test_gpt_with_expert_replicas_world4(parallel_results):
    world, res = parallel_results
    if world != 4:
        pytest.skip("replicas need dp > ep")
    r = res["gpt-cdac-ep2-replicas"]
    assert max(r["errors"].values()) <= TOL


# ------------------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------------------
def _run(args, timeout=120, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(), **kw)


def _check_run_table(path: Path, world: int, steps: int, structure: str):
    df, meta = read_table(path)
    assert list(df.columns) == list(RUN_COLUMNS)
    for key in ("host", "torch_version", "backend", "world_size", "config", "git_commit", "run_id"):
        assert key in meta
    assert meta["world_size"] == world and meta["config"]["moe"]["structure"] == structure
    assert set(df["phase"]) <= set(PHASES) | {"step"}
    assert set(df["direction"]) <= {"fwd", "bwd", "none"}
    assert sorted(df["rank"].unique()) == list(range(world))
    assert sorted(df["step"].unique()) == list(range(steps))
    assert (df["seconds"] >= 0).all()
    steps_df = df[df.phase == "step"]
    assert len(steps_df) == world * steps and (steps_df["seconds"] > 0).all()
    return df, meta


def test_runner_world1_train_prefill_decode(tmp_path):
    out = tmp_path / "w1.csv"
    res = _run(["-m", "real_backend.run", "--model", str(SMALL), "--set", "parallel.ep=1", "--set",
                "moe.structure=dcca", "--set", "model.layers=1", "--steps", "2", "--warmup", "1",
                "--out", str(out)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df, _ = _check_run_table(out, 1, 2, "dcca")
    got = set(zip(df.phase, df.direction))
    for ph in ("embedding", "attention", "gate", "descend", "dispatch", "experts", "combine", "ascend", "lm_head"):
        assert (ph, "fwd") in got and (ph, "bwd") in got, ph
    assert ("optimizer", "none") in got and ("grad_allreduce", "bwd") in got
    # phases of a step add up to (nearly) the step time; never more
    for (step, rank), g in df.groupby(["step", "rank"]):
        total = g[g.phase == "step"].seconds.item()
        parts = g[g.phase != "step"].seconds.sum()
        assert 0.7 * total < parts <= total * 1.001
    for mode in ("prefill", "decode"):
        o = tmp_path / f"{mode}.csv"
        r = _run(["-m", "real_backend.run", "--model", str(SMALL), "--set", "parallel.ep=1", "--set",
                  f"run.mode={mode}", "--set", "run.batch_size=4", "--steps", "1", "--warmup", "0", "--out", str(o),
                  "--quiet"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        d, _ = _check_run_table(o, 1, 1, "cdac")
        assert set(d.direction) <= {"fwd", "none"} and "experts" in set(d.phase)


def test_paired_run_alternates_cdac_and_dcca_in_one_launch(tmp_path):
    """--paired-out: one launch, both structures, each table a run of its own that names the other,
    over the same measured window (their steps alternate)."""
    cdac, dcca, timeline = tmp_path / "c.csv", tmp_path / "d.csv", tmp_path / "t.csv"
    res = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "real_backend.run",
                "--model", str(SMALL), "--set", "parallel.ep=2", "--set", "parallel.dp=2", "--set", "model.layers=1",
                "--steps", "3", "--warmup", "1", "--out", str(cdac), "--paired-out", str(dcca), "--quiet",
                "--timeline", str(timeline)],
               cwd=tmp_path, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    dc, mc = _check_run_table(cdac, 2, 3, "cdac")
    dd, md = _check_run_table(dcca, 2, 3, "dcca")
    assert set(dc.structure) == {"cdac"} and set(dd.structure) == {"dcca"}
    assert "descend" in set(dd.phase) and "descend" not in set(dc.phase)
    assert mc["paired_with"]["table"] == "d.csv" and md["paired_with"]["table"] == "c.csv"
    assert mc["paired_with"]["order"] == md["paired_with"]["order"] == ["cdac", "dcca"]
    assert mc["measured_window_unix"] == md["measured_window_unix"]
    # DCCA's All-to-All carries r.h values per token copy, CDAC's h (the same tokens, other routers)
    cfg = load_config(SMALL, ["parallel.ep=2", "parallel.dp=2", "model.layers=1", "moe.structure=dcca"])
    per_copy = {s: d[(d.phase == "dispatch") & (d.direction == "fwd")]["bytes"].sum()
                for s, d in (("cdac", dc), ("dcca", dd))}
    assert 0.5 * cfg.low_dim / cfg.model.hidden < per_copy["dcca"] / per_copy["cdac"] < 2 * cfg.low_dim / cfg.model.hidden
    _check_timeline(timeline, {"cdac": dc, "dcca": dd})
    # nothing to pair with, or one file for both: refused before anything runs
    for bad, msg in ((["--set", "moe.structure=dense", "--paired-out", str(tmp_path / "x.csv")], "no pair"),
                     (["--paired-out", str(tmp_path / "same.csv")], "same file"),
                     (["--timeline", str(tmp_path / "same.csv")], "the same file as a run table")):
        out = tmp_path / "same.csv"
        r = _run(["-m", "real_backend.run", "--model", str(SMALL), "--set", "parallel.ep=1", *bad,
                  "--steps", "1", "--out", str(out)], cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
        assert not out.exists() and not (tmp_path / "x.csv").exists()


def _check_timeline(path: Path, tables: dict) -> None:
    """--timeline: every interval of the run tables, on one clock for the ranks of the machine."""
    from moesim.calibrate.arrivals import call_spreads, load_timeline
    tl = load_timeline(path)
    assert read_table(path)[1]["tables"] == ["c.csv", "d.csv"]
    # the intervals add up to the run tables' seconds and counts, phase by phase
    sums = tl.assign(seconds=tl.end_s - tl.start_s).groupby(["structure", "step", "rank", "phase", "direction"])
    for structure, table in tables.items():
        t = table.set_index(["step", "rank", "phase", "direction"])
        for (s, step, rank, phase, direction), g in sums:
            if s == structure:
                assert g["seconds"].sum() == pytest.approx(t.loc[(step, rank, phase, direction), "seconds"], abs=1e-9)
                assert len(g) == t.loc[(step, rank, phase, direction), "count"]
    # each rank's intervals lie in its step, in order; the paired steps alternate, CDAC first
    for (s, step, rank), g in tl.groupby(["structure", "step", "rank"]):
        whole = g[g.phase == "step"].iloc[0]
        inner = g[g.phase != "step"].sort_values("seq")
        assert (inner.start_s >= whole.start_s).all() and (inner.end_s <= whole.end_s + 1e-9).all()
        assert (np.diff(inner.start_s.to_numpy()) >= 0).all()
    steps = tl[tl.phase == "step"].set_index(["structure", "step", "rank"])
    assert (steps.loc["cdac"].end_s <= steps.loc["dcca"].start_s).all()
    # the main thread's CPU: within each interval's wall time, and the step's holds its phases'
    assert (tl.cpu_s >= 0).all() and (tl.cpu_s <= tl.end_s - tl.start_s + 2e-3).all()
    inner_cpu = tl[tl.phase != "step"].groupby(["structure", "step", "rank"]).cpu_s.sum()
    assert (inner_cpu <= steps.cpu_s + 1e-6).all()
    # an All-to-All releases no rank before every rank has entered it: one clock across processes
    a2a = tl[tl.phase.isin(["dispatch", "combine"])].sort_values("seq").copy()
    a2a["k"] = a2a.groupby(["structure", "step", "rank", "phase", "direction"]).cumcount()
    for _, call in a2a.groupby(["structure", "step", "phase", "direction", "k"]):
        assert len(call) == 2 and call.start_s.max() <= call.end_s.min()
    spreads = call_spreads(tl, str(path))
    assert set(spreads.structure) == {"cdac", "dcca"} and (spreads.entry_spread >= 0).all()
    assert len(spreads) == len(a2a) // 2


def test_runner_refuses_mismatched_world_and_bad_config(tmp_path):
    out = tmp_path / "x.csv"
    r = _run(["-m", "real_backend.run", "--model", str(SMALL), "--steps", "1", "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 2 and "parallel.ep" in r.stderr and "1 launched" in r.stderr
    r = _run(["-m", "real_backend.run", "--model", str(SMALL), "--set", "moe.top_k=99", "--out", str(out)])
    assert r.returncode == 2 and "moe.top_k" in r.stderr
    assert not out.exists()


def test_runner_torchrun_4_ranks_records_bytes(tmp_path):
    out = tmp_path / "w4.csv"
    res = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "real_backend.run",
                "--model", str(SMALL), "--set", "parallel.ep=2", "--set", "parallel.dp=4",
                "--steps", "2", "--warmup", "1", "--out", str(out)], cwd=tmp_path, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df, meta = _check_run_table(out, 4, 2, "cdac")
    assert meta["backend"] == "gloo" and set(df.ep) == {2} and set(df.dp) == {4}
    disp = df[(df.phase == "dispatch") & (df.direction == "fwd")]
    assert (disp["bytes"] > 0).all() and (disp["bytes_remote"] <= disp["bytes"]).all()
    cfg = load_config(SMALL, ["parallel.ep=2", "parallel.dp=4"])
    # dispatch payload = kept token copies x h x 4 bytes, at most tokens * k copies per rank and layer
    assert (disp["bytes"] <= cfg.tokens_per_dp_rank * cfg.moe.top_k * cfg.model.hidden * 4 * cfg.model.layers).all()
    ar = df[df.phase == "grad_allreduce"]
    assert (ar["bytes"] > 0).all()


def test_microbench_world1(tmp_path):
    out = tmp_path / "mb.csv"
    res = _run(["-m", "real_backend.microbench", "--gemm", "64,64,64", "--gemm", "128,256,64",
                "--a2a-sizes", "4KiB,64KiB", "--allreduce-sizes", "4KiB", "--reps", "3", "--warmup", "1",
                "--model", str(SMALL), "--out", str(out), "--quiet"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df, meta = read_table(out)
    assert meta["kind"] == "microbench" and meta["world_size"] == 1
    g = df[df.kind == "gemm"]
    assert {(64, 64, 64), (128, 256, 64)} <= set(zip(g.m, g.n, g.k))
    assert len(g) % 3 == 0 and set(g.rep) == {0, 1, 2}
    assert (g.flop == 2 * g.m * g.n * g.k).all() and (g.seconds > 0).all()
    a = df[df.kind == "all_to_all"]
    assert sorted(a.size_bytes.unique()) == [4096, 65536]
    assert set(df.kind) == {"gemm", "all_to_all", "all_reduce"}


def test_experts_backward_stacks_gradients_once():
    """Local experts read their weights through one unbind per stacked tensor: the backward graph
    holds no per-expert select (whose backward writes a zero-filled gradient of the whole stack per
    expert: n times the work), and the gradients equal those of each expert run alone."""
    from real_backend.layers import Experts
    torch.manual_seed(0)
    ex = Experts(6, 8, 16, expert=True).double()
    for prm in ex.parameters():
        torch.nn.init.normal_(prm, std=0.3)
    counts = [3, 0, 5, 2, 1, 4]
    x = torch.randn(sum(counts), 8, dtype=torch.float64)
    y = ex(x, counts)
    names, todo, seen = set(), [y.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [f for f, _ in fn.next_functions]
    assert "UnbindBackward0" in names and "SelectBackward0" not in names
    y.square().sum().backward()
    for i, (lo, n) in enumerate(zip(np.cumsum([0] + counts[:-1]), counts)):
        w1, b1, w2, b2 = (prm.detach()[i].clone().requires_grad_() for prm in (ex.w1, ex.b1, ex.w2, ex.b2))
        yi = torch.addmm(b2, torch.nn.functional.gelu(torch.addmm(b1, x[lo:lo + n], w1)), w2)
        yi.square().sum().backward()
        for got, want in ((ex.w1.grad[i], w1.grad), (ex.b1.grad[i], b1.grad), (ex.w2.grad[i], w2.grad),
                          (ex.b2.grad[i], b2.grad)):
            assert torch.allclose(got, want, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# failure handling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_failing_rank_bounded_exit_named_no_output_no_leftovers(tmp_path, mode):
    out = tmp_path / f"fail-{mode}.csv"
    t0 = time.monotonic()
    res = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "real_backend.run",
                "--model", str(SMALL), "--set", "parallel.ep=2", "--set", "model.layers=1",
                "--steps", "3", "--warmup", "1", "--timeout", "5", "--out", str(out),
                "--fail-rank", "1", "--fail-mode", mode, "--fail-step", "1"], cwd=tmp_path, timeout=90)
    elapsed = time.monotonic() - t0
    text = res.stdout + res.stderr
    assert res.returncode != 0
    assert elapsed < 60
    if mode == "hang":
        assert "rank 1 is hung" in text or "rank 1 (stuck in phase 'experts'" in text, text[-3000:]
    else:
        assert ("rank      : 1" in text and "exitcode  : 86" in text) or "rank 1 (its process" in text, text[-3000:]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    deadline = time.monotonic() + 10
    while _procs_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _procs_mentioning(str(out)) == []


@pytest.mark.parametrize("launched", [True, False])
def test_exit_process_skips_teardown_only_under_a_launcher(tmp_path, launched):
    """Under torchrun (RANK set) a rank leaves with its status and its printed lines but without the
    interpreter's teardown (no exit handlers); started by hand it exits normally."""
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, pathlib, sys; from real_backend.parallel import exit_process; "
            f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('x')); "
            "print('tables written', end=''); sys.stderr.write('warn'); exit_process(3)")
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    if launched:
        env["RANK"] = "0"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 3 and r.stdout == "tables written" and r.stderr.endswith("warn")
    assert marker.exists() is not launched
