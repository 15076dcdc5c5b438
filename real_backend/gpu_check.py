"""One prepared script for a machine with a CUDA GPU: the layers on CUDA with NCCL at world size 1,
checked against the CPU reference, then timed with the runner (CUDA events).

    python -m real_backend.gpu_check --out-dir "$OUT"            # on the GPU machine
    python -m real_backend.gpu_check --allow-cpu --out-dir /tmp/x  # dry run of the same script here

Checks (each prints PASS/FAIL with the error):
1. backend selection: NCCL chosen automatically when CUDA is available; a world-1 group starts.
2. MoE layer (CDAC and DCCA, capacity drops, forced skew, shared expert) on CUDA fp32 (TF32 off),
   through the real NCCL All-to-All: output and every gradient vs ``reference.reference_moe`` on CPU
   in fp64 (relative tolerance 1e-4).
3. Small GPT on CUDA vs the same weights on CPU: loss and all gradients (rel. tol. 1e-3).
4. Timing: ``real_backend.run`` on small-gpt (fp32 and bf16 autocast), a GPT3-medium-width MoE with
   fewer layers (bf16, CDAC and DCCA), prefill and decode; CSVs and a summary JSON in --out-dir.
Exit status 0 when every check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = Path(__file__).resolve().parent / "configs" / "small-gpt.yaml"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / (b.abs().max() + 1e-30)).item() if a.numel() else 0.0


def check_moe(device: torch.device, groups, structure: str, cf: Optional[float]) -> float:
    from moesim.config import load_config
    from real_backend.layers import MoE, load_full_state
    from real_backend.parallel import single
    from real_backend.reference import reference_moe
    from real_backend.timing import Recorder

    T, h, E, k = 256, 128, 8, 2
    cfg = load_config({"model": {"layers": 1, "hidden": h, "heads": 4, "seq_len": T, "vocab": 64},
                       "moe": {"structure": structure, "experts": E, "top_k": k, "capacity_factor": cf,
                               "shared_experts": 1}, "parallel": {"ep": 1}})
    gen = torch.Generator().manual_seed(7)
    full = MoE(cfg, single(), with_norm=False).double()
    with torch.no_grad():
        for name, p in full.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * (1.0 if "gate" in name else 0.1))
    x = torch.randn(T, h, generator=gen, dtype=torch.float64)
    g = torch.randn(T, h, generator=gen, dtype=torch.float64)
    base = torch.where(torch.rand(T, generator=gen) < 0.7, 0, torch.randint(0, E, (T,), generator=gen))
    forced = (base.unsqueeze(1) + torch.arange(k)) % E

    moe = MoE(cfg, groups, Recorder(device), with_norm=False).to(device)
    load_full_state(moe, {n: p.detach() for n, p in full.named_parameters()}, groups.ep_rank)
    moe.router.forced = forced
    xd = x.float().to(device).requires_grad_(True)
    y, aux = moe(xd)
    ((y * g.float().to(device)).sum() + 0.1 * aux).backward()
    torch.cuda.synchronize() if device.type == "cuda" else None

    params = {n: p.detach().clone().requires_grad_(True) for n, p in full.named_parameters()}
    xr = x.clone().requires_grad_(True)
    yr, auxr, dropped = reference_moe(xr, params, structure, k, cf, forced=forced)
    ((yr * g).sum() + 0.1 * auxr).backward()
    errs = [_rel(y, yr), _rel(xd.grad, xr.grad)] + [_rel(p.grad, params[n].grad) for n, p in moe.named_parameters()]
    if moe.last_plan.dropped != dropped:
        raise AssertionError(f"dropped {moe.last_plan.dropped} != reference {dropped}")
    return max(errs)


def check_gpt(device: torch.device, groups) -> float:
    from moesim.config import load_config
    from real_backend.layers import GPT, load_full_state
    from real_backend.parallel import single

    cfg = load_config(SMALL, ["parallel.ep=1", "moe.structure=dcca", "moe.shared_experts=1", "model.vocab=1024"])
    gen = torch.Generator().manual_seed(3)
    ref = GPT(cfg, single())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=gen) * 0.05)
    ids = torch.randint(0, 1024, (4, 128), generator=gen)
    tgt = torch.randint(0, 1024, (4, 128), generator=gen)
    model = GPT(cfg, groups).to(device)
    load_full_state(model, {n: p.detach() for n, p in ref.named_parameters()}, 0)
    loss, aux = model(ids.to(device), tgt.to(device))
    (loss + 0.01 * aux).backward()
    ref64 = ref.double()
    lr, ar = ref64(ids, tgt)
    (lr + 0.01 * ar).backward()
    errs = [abs(loss.item() - lr.item()) / abs(lr.item())]
    rp = dict(ref64.named_parameters())
    errs += [_rel(p.grad, rp[n].grad) for n, p in model.named_parameters()]
    return max(errs)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m real_backend.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--allow-cpu", action="store_true", help="run on CPU/gloo when no GPU (dry run)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "checks": {}, "timings": {}}
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: no CUDA device (use --allow-cpu for a dry run)", file=sys.stderr)
        return 2
    if torch.cuda.is_available():
        summary["device_name"] = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ok = True

    def check(name: str, fn: Callable[[], float], tol: float) -> None:
        nonlocal ok
        t0 = time.perf_counter()
        try:
            err = fn()
            passed = err <= tol
            summary["checks"][name] = {"max_rel_err": err, "tol": tol, "passed": passed,
                                       "seconds": time.perf_counter() - t0}
            print(f"{'PASS' if passed else 'FAIL'} {name}: max rel err {err:.2e} (tol {tol:g})", flush=True)
            ok &= passed
        except Exception as exc:  # noqa: BLE001
            summary["checks"][name] = {"error": f"{type(exc).__name__}: {exc}", "passed": False}
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            ok = False

    import torch.distributed as dist

    from moesim.config import load_config
    from real_backend.parallel import build_groups, default_backend, init_distributed
    backend, device = init_distributed(60.0)
    summary["backend"] = backend
    expected = "nccl" if torch.cuda.is_available() else "gloo"
    print(f"{'PASS' if backend == expected == default_backend() else 'FAIL'} backend: {backend} on {device}")
    ok &= backend == expected
    groups = build_groups(load_config(SMALL, ["parallel.ep=1"]), backend, device)
    for structure in ("cdac", "dcca"):
        for cf in (None, 0.5):
            check(f"moe-{structure}-{'drop' if cf else 'dropless'}-vs-cpu-reference",
                  lambda s=structure, c=cf: check_moe(device, groups, s, c), 1e-4)
    check("gpt-dcca-vs-cpu", lambda: check_gpt(device, groups), 1e-3)
    dist.destroy_process_group()

    if not args.skip_timing:
        from real_backend.results import read_table
        from real_backend.run import main as run_main
        medium = ["model.layers=4", "model.hidden=1024", "model.heads=16", "model.seq_len=2048",
                  "model.vocab=50257", "model.dtype=bf16", "moe.experts=16", "moe.top_k=4", "parallel.ep=1",
                  "run.global_batch_tokens=8192", "run.batch_size=8", "run.prompt_len=512"]
        runs = {
            "small-cdac-fp32": (str(SMALL), ["parallel.ep=1"]),
            "small-dcca-bf16": (str(SMALL), ["parallel.ep=1", "moe.structure=dcca", "model.dtype=bf16"]),
            "medium4L-cdac-bf16": ("gpt3-medium", medium),
            "medium4L-dcca-bf16": ("gpt3-medium", medium + ["moe.structure=dcca"]),
            "medium4L-dcca-prefill": ("gpt3-medium", medium + ["moe.structure=dcca", "run.mode=prefill"]),
            "medium4L-dcca-decode": ("gpt3-medium", medium + ["moe.structure=dcca", "run.mode=decode"]),
        }
        if not torch.cuda.is_available():  # keep the dry run short
            runs = {k: v for k, v in runs.items() if k.startswith("small")}
        for name, (model, sets) in runs.items():
            csv = out / f"{name}.csv"
            argv_run = ["--model", model, "--steps", str(args.steps), "--warmup", "2", "--out", str(csv), "--quiet"]
            for s in sets:
                argv_run += ["--set", s]
            t0 = time.perf_counter()
            try:
                rc = run_main(argv_run)
                df, meta = read_table(csv)
                step = df[df.phase == "step"].seconds.median()
                phases = df[df.phase != "step"].groupby(["phase", "direction"]).seconds.mean().to_dict()
                summary["timings"][name] = {"rc": rc, "step_median_s": step, "timing": meta.get("timing"),
                                            "phases": {f"{p}:{d}": v for (p, d), v in phases.items()},
                                            "wall_s": time.perf_counter() - t0}
                print(f"TIME {name}: step median {step * 1e3:.2f} ms ({meta.get('timing')})", flush=True)
                ok &= rc == 0
            except Exception as exc:  # noqa: BLE001
                summary["timings"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"FAIL timing {name}: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
                ok = False
    summary["passed"] = bool(ok)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"gpu_check: {'ALL PASSED' if ok else 'FAILURES'}; summary -> {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
