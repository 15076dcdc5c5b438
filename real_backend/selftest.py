"""Correctness harness: expert-parallel layers on gloo vs the naive single-process reference.

``run_checks(world, cases)`` spawns ``world`` processes (torch.multiprocessing, gloo over a
FileStore), runs each case and returns, per case, the relative max error of the forward output and
of every gradient, plus the bytes each rank passed to ``all_to_all_single``.

Case kinds:
* ``moe``: one MoE layer (no LayerNorm) on T tokens per rank, ep = world; loss = sum(y * G) +
  0.1 * aux; compares y, dL/dx and the gradients of gate, descend/ascend, shared and every routed
  expert (gathered from their owners) with ``reference.reference_moe`` run rank by rank.
* ``gpt``: a small GPT (dp = world, ``ep`` given), loss = mean over ranks of CE + 0.01 * aux,
  gradients averaged with ``comm.sync_gradients``; compares the losses and all gradients with the
  same model at ep = 1 run on every rank's batch in one process.

CLI: ``python -m real_backend.selftest --world 2`` prints the table of errors.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from typing import Any, Optional

import torch
import torch.distributed as dist

from moesim.config import load_config
from real_backend.comm import sync_gradients
from real_backend.layers import GPT, MoE, is_expert_param, load_full_state
from real_backend.parallel import build_groups, single
from real_backend.reference import reference_moe
from real_backend.timing import Recorder

AUX_MOE = 0.1
AUX_GPT = 0.01


def default_cases(world: int) -> list[dict]:
    """The standard matrix: CDAC and DCCA x (dropless, capacity drops) x (gate top-k, forced skew,
    biased-logit skew), with a shared expert in some, plus a GPT case (ep = world, and ep = 2 with
    expert replicas when world = 4)."""
    cases = []
    for structure in ("cdac", "dcca"):
        for routing in ("topk", "forced_skew", "bias_skew"):
            for cf in (None, 0.75):
                cases.append({"kind": "moe", "name": f"{structure}-{routing}-{'drop' if cf else 'dropless'}",
                              "structure": structure, "routing": routing, "capacity_factor": cf,
                              "shared": 1 if routing == "bias_skew" else 0})
    cases.append({"kind": "gpt", "name": f"gpt-dcca-ep{world}", "structure": "dcca", "ep": world,
                  "capacity_factor": 1.0, "shared": 1})
    if world >= 4:
        cases.append({"kind": "gpt", "name": "gpt-cdac-ep2-replicas", "structure": "cdac", "ep": 2,
                      "capacity_factor": None, "shared": 0})
    return cases


# ---------------------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().double()
    b = b.detach().double()
    if a.shape != b.shape:
        return float("inf")
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / (scale + 1e-30) if a.numel() else 0.0


def _moe_cfg(case: dict, world: int):
    h, E = case.get("hidden", 32), case.get("experts", 8)
    T = case.get("tokens", 24)
    return load_config({
        "model": {"layers": 1, "hidden": h, "heads": 2, "seq_len": T, "vocab": 64, "dtype": "fp32"},
        "moe": {"structure": case["structure"], "experts": E, "top_k": case.get("top_k", 2), "ratio": 0.25,
                "capacity_factor": case["capacity_factor"], "shared_experts": case.get("shared", 0)},
        "parallel": {"ep": world},
        "run": {"global_batch_tokens": T * world},
    })


def _forced(gen: torch.Generator, n: int, E: int, k: int) -> torch.Tensor:
    """Skewed distinct top-k choices: ~80% of tokens start at expert 0, the rest anywhere."""
    base = torch.where(torch.rand(n, generator=gen) < 0.8, torch.zeros(n, dtype=torch.long),
                       torch.randint(0, E, (n,), generator=gen))
    return (base.unsqueeze(1) + torch.arange(k).unsqueeze(0)) % E


def _bias(E: int) -> torch.Tensor:
    b = torch.zeros(E, dtype=torch.float64)
    b[0], b[1] = 3.0, 1.5
    b[-1] = -4.0
    return b


def _run_moe_case(case: dict, rank: int, world: int) -> Optional[dict]:
    cfg = _moe_cfg(case, world)
    groups = build_groups(cfg, "gloo", torch.device("cpu"))
    E, k, h = cfg.moe.experts, cfg.moe.top_k, cfg.model.hidden
    T = cfg.model.seq_len
    gen = torch.Generator().manual_seed(1234)
    full = MoE(cfg, single(), with_norm=False).double()
    with torch.no_grad():
        for name, p in full.named_parameters():
            scale = 1.0 if "gate" in name else (0.3 if name.endswith(("b1", "b2")) else p.shape[-2] ** -0.5)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    # data and forced routing from their own generator: identical for CDAC and DCCA cases
    dgen = torch.Generator().manual_seed(4321)
    X = torch.randn(world * T, h, generator=dgen, dtype=torch.float64)
    G = torch.randn(world * T, h, generator=dgen, dtype=torch.float64)
    forced = _forced(dgen, world * T, E, k) if case["routing"] == "forced_skew" else None
    bias = _bias(E) if case["routing"] == "bias_skew" else None

    rec = Recorder("cpu")
    moe = MoE(cfg, groups, rec, with_norm=False).double()
    load_full_state(moe, {n: p.detach() for n, p in full.named_parameters()}, groups.ep_rank)
    if forced is not None:
        moe.router.forced = forced[rank * T:(rank + 1) * T]
    if bias is not None:
        moe.router.set_bias(bias)
    x = X[rank * T:(rank + 1) * T].clone().requires_grad_(True)
    y, aux = moe(x)
    ((y * G[rank * T:(rank + 1) * T]).sum() + AUX_MOE * aux).backward()
    plan = moe.last_plan

    # gather everything to rank 0
    def gather_rows(t: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    y_all = gather_rows(y.detach())
    dx_all = gather_rows(x.grad)
    grads = {}
    for name, p in moe.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if is_expert_param(p) and name.startswith("experts."):
            grads[name] = gather_rows(g)          # ep = world: owners in rank order
        else:
            g = g.clone()
            dist.all_reduce(g)                    # the loss is a sum over ranks
            grads[name] = g
    info = {"bytes": {f"{ph}:{d}": rec.bytes_by(ph, d) for ph in ("dispatch", "combine") for d in ("fwd", "bwd")},
            "bytes_remote": {f"{ph}:{d}": rec.bytes_by(ph, d, remote=True)
                             for ph in ("dispatch", "combine") for d in ("fwd", "bwd")},
            "in_splits": plan.in_splits, "dropped": plan.dropped}
    infos = [None] * world
    dist.all_gather_object(infos, info)
    if rank != 0:
        return None

    params = {n: p.detach().clone().requires_grad_(True) for n, p in full.named_parameters()}
    Xr = X.clone().requires_grad_(True)
    total = 0.0
    outs = []
    dropped_ref = []
    for r in range(world):
        sl = slice(r * T, (r + 1) * T)
        out, aux_r, dr = reference_moe(Xr[sl], params, cfg.moe.structure, k, cfg.moe.capacity_factor,
                                       forced=None if forced is None else forced[sl], logit_bias=bias)
        outs.append(out)
        dropped_ref.append(dr)
        total = total + (out * G[sl]).sum() + AUX_MOE * aux_r
    total.backward()
    errors = {"output": _rel(y_all, torch.cat(outs).detach()), "grad:x": _rel(dx_all, Xr.grad)}
    for name, p in params.items():
        errors[f"grad:{name}"] = _rel(grads[name], p.grad)
    return {"errors": errors, "ranks": infos, "dropped_ref": dropped_ref,
            "dims": {"hidden": h, "a2a_dim": cfg.a2a_dim}}


def _gpt_cfg(case: dict, world: int):
    return load_config({
        "model": {"layers": 2, "hidden": 32, "heads": 2, "seq_len": 8, "vocab": 50, "dtype": "fp32"},
        "moe": {"structure": case["structure"], "experts": 4, "top_k": 2, "ratio": 0.25,
                "capacity_factor": case["capacity_factor"], "shared_experts": case.get("shared", 0)},
        "parallel": {"ep": case["ep"], "dp": world},
        "run": {"global_batch_tokens": 16 * world},
    })


def _run_gpt_case(case: dict, rank: int, world: int) -> Optional[dict]:
    cfg = _gpt_cfg(case, world)
    groups = build_groups(cfg, "gloo", torch.device("cpu"))
    gen = torch.Generator().manual_seed(99)
    full = GPT(cfg, single()).double()
    with torch.no_grad():
        for name, p in full.named_parameters():
            base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
            scale = 0.5 if "gate" in name else 0.15
            p.copy_(base + torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    B, S, V = 2, cfg.model.seq_len, cfg.model.vocab
    ids = torch.randint(0, V, (world, B, S), generator=gen)
    tgt = torch.randint(0, V, (world, B, S), generator=gen)
    model = GPT(cfg, groups, Recorder("cpu")).double()
    load_full_state(model, {n: p.detach() for n, p in full.named_parameters()}, groups.ep_rank)
    loss, aux = model(ids[rank], tgt[rank])
    (loss + AUX_GPT * aux).backward()
    sync_gradients(model.dense_parameters(), model.expert_parameters(), groups.dp_group, groups.dp_size,
                   groups.expert_dp_group, model.rec)
    losses = [None] * world
    dist.all_gather_object(losses, float(loss.detach()))
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.contiguous()
        if is_expert_param(p) and ".experts." in name:
            parts = [torch.empty_like(g) for _ in range(world)]
            dist.all_gather(parts, g)
            reps = [torch.cat(parts[i * cfg.parallel.ep:(i + 1) * cfg.parallel.ep]) for i in range(groups.expert_dp_size)]
            grads[name] = reps
        else:
            parts = [torch.empty_like(g) for _ in range(world)]
            dist.all_gather(parts, g)
            grads[name] = parts
    if rank != 0:
        return None
    total = 0.0
    ref_losses = []
    for r in range(world):
        l_r, a_r = full(ids[r], tgt[r])
        ref_losses.append(float(l_r.detach()))
        total = total + (l_r + AUX_GPT * a_r) / world
    total.backward()
    errors = {"loss": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))}
    for name, p in full.named_parameters():
        # every dp rank (or expert replica) must hold the same, correct gradient
        errors[f"grad:{name}"] = max(_rel(g, p.grad) for g in grads[name])
    return {"errors": errors}


def _worker(rank: int, world: int, store: str, cases: list[dict], out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        results: dict[str, Any] = {}
        for case in cases:
            t0 = time.perf_counter()
            fn = _run_moe_case if case["kind"] == "moe" else _run_gpt_case
            res = fn(case, rank, world)
            if rank == 0:
                res["seconds"] = time.perf_counter() - t0
                res["case"] = case
                results[case["name"]] = res
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def run_checks(world: int, cases: Optional[list[dict]] = None) -> dict[str, dict]:
    """Spawn ``world`` gloo processes, run ``cases`` (default: ``default_cases(world)``), return results."""
    import torch.multiprocessing as mp
    cases = cases if cases is not None else default_cases(world)
    with tempfile.TemporaryDirectory(prefix="moesim-selftest-") as tmp:
        out_path = os.path.join(tmp, "results.json")
        mp.spawn(_worker, args=(world, os.path.join(tmp, "store"), cases, out_path), nprocs=world, join=True)
        with open(out_path) as f:
            return json.load(f)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m real_backend.selftest", description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-9)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run_checks(args.world)
    worst_all = 0.0
    for name, r in res.items():
        worst = max(r["errors"].values())
        worst_all = max(worst_all, worst)
        print(f"{name:36s} max rel err {worst:.2e}  ({r['seconds']:.2f} s)")
    print(f"world {args.world}: {len(res)} cases in {time.perf_counter() - t0:.1f} s; worst {worst_all:.2e}")
    return 0 if worst_all <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
