"""One prepared run on a machine with a CUDA GPU: the measurements of a single-GPU profile (GEMM
efficiency curve in bf16, memory bandwidth), then the CUDA/NCCL checks of ``real_backend.gpu_check``.

    python -m real_backend.gpu_profile --out-dir "$OUT"                  # on the GPU machine
    python -m real_backend.gpu_profile --allow-cpu --quick --out-dir /tmp/x  # dry run of the same script here

Writes into --out-dir (seven files, so that a lent machine's limit of eight holds with a log):
``gemm-bf16.csv`` (``real_backend.microbench --kinds gemm --dtype bf16``: a grid of shapes from
128 to 8192 plus the GEMMs of a GPT-3-medium-width MoE layer, CUDA-event timed, one op per
timing: an isolated op with the GPU idle, the host's launch latency included), ``memory.csv``
(``moesim.calibrate.membench --device cuda``, 1 MiB to 1 GiB operands, likewise),
``gemm-bf16-pipelined.csv`` and ``memory-pipelined.csv`` (the same with --ops-per-timing
{n}: ops issued back to back, so each costs what it costs in a queue, the larger of its kernel
time and its issue time), ``gpu_check.json`` and ``gpu_check.tar.gz`` (its tables), and
``commands.json`` (the GPU as nvidia-smi reports it, each step's command, exit status and wall
time). Then, on any machine, fit the profile:

    moesim calibrate DIR/gemm-bf16-pipelined.csv DIR/memory-pipelined.csv --peak-flops 989e12 --out calibration/NAME.yaml

Each step runs under its own time limit; a step that fails or runs out is recorded and the next runs.
Exit status 0 when every step succeeded.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

PROG = "real_backend.gpu_profile"
#: (M, N, K): M tokens, N x K weights, from launch-bound to compute-bound on a Hopper GPU
GEMM_GRID = [(m, n, k) for m in (128, 512, 2048, 8192) for (n, k) in ((1024, 1024), (4096, 1024), (1024, 4096),
                                                                       (4096, 4096))] + [(8192, 8192, 8192)]
QUICK_GEMMS = [(64, 64, 64), (128, 256, 128), (256, 256, 256)]
#: the MoE layer whose GEMM shapes are measured too (gpu_check's GPT-3-medium-width model)
MODEL = ["--model", "gpt3-medium", "--set", "model.hidden=1024", "--set", "model.heads=16", "--set",
         "model.seq_len=2048", "--set", "moe.experts=16", "--set", "moe.top_k=4", "--set", "parallel.ep=1",
         "--set", "run.global_batch_tokens=8192", "--set", "run.batch_size=8", "--set", "model.dtype=bf16"]
MEMORY_SIZES = "1MiB,4MiB,16MiB,64MiB,256MiB,1GiB"
#: ops per timing in the pipelined tables: the first op's launch latency is spread over this many
PIPELINED_OPS = 20
__doc__ = __doc__.replace("{n}", str(PIPELINED_OPS))
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version",
              "--format=csv"]


def steps(out: Path, quick: bool, work: Path) -> list[tuple[str, list[str], float]]:
    """(name, argv, time limit s) of the prepared run, in order."""
    py = sys.executable
    gemms = QUICK_GEMMS if quick else GEMM_GRID
    reps = ["--reps", "3", "--warmup", "1"] if quick else ["--reps", "20", "--warmup", "5"]
    per = ["--ops-per-timing", "3" if quick else str(PIPELINED_OPS)]
    out_gemm = []
    for table, extra in (("gemm-bf16.csv", []), ("gemm-bf16-pipelined.csv", per)):
        gemm = [py, "-m", "real_backend.microbench", "--kinds", "gemm", "--dtype", "bf16", *reps, *extra,
                "--out", str(out / table), "--quiet"]
        for m, n, k in gemms:
            gemm += ["--gemm", f"{m},{n},{k}"]
        out_gemm.append(gemm + ([] if quick else MODEL))
    out_mem = [[py, "-m", "moesim.calibrate.membench", "--device", "cuda" if not quick else "cpu",
                "--sizes", "64KiB,1MiB" if quick else MEMORY_SIZES, *reps, *extra, "--out", str(out / table)]
               for table, extra in (("memory.csv", []), ("memory-pipelined.csv", per))]
    check = [py, "-m", "real_backend.gpu_check", "--out-dir", str(work / "gpu_check")]
    if quick:
        check += ["--allow-cpu", "--skip-timing"]
    return [("gemm", out_gemm[0], 90.0), ("gemm-pipelined", out_gemm[1], 120.0), ("memory", out_mem[0], 45.0),
            ("memory-pipelined", out_mem[1], 45.0), ("gpu_check", check, 150.0)]


def _nvidia_smi() -> Optional[str]:
    """The GPU as nvidia-smi reports it (CSV text), or None where there is none."""
    try:
        res = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True, help="where the tables and the summary go")
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a dry run of the script)")
    ap.add_argument("--quick", action="store_true", help="a few small shapes and sizes, no gpu_check timing")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"{PROG}: error: no CUDA device here (--allow-cpu for a dry run)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "cuda": torch.version.cuda, "nvidia_smi": _nvidia_smi(),
                    "steps": []}
    ok = True
    with tempfile.TemporaryDirectory(prefix="moesim-gpu-profile-") as tmp:
        work = Path(tmp)
        for name, cmd, limit in steps(out, args.quick, work):
            print(f"== {name}: {' '.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            try:
                rc = subprocess.run(cmd, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            wall = time.perf_counter() - t0
            print(f"== {name}: exit {rc} after {wall:.1f} s", flush=True)
            record["steps"].append({"name": name, "command": cmd, "exit": rc, "wall_s": round(wall, 2),
                                    "limit_s": limit})
            ok &= rc == 0
        summary = work / "gpu_check" / "gpu_check.json"
        if summary.is_file():
            (out / "gpu_check.json").write_text(summary.read_text())
        tables = sorted((work / "gpu_check").glob("*.csv"))
        if tables:
            with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
                for f in tables:
                    tar.add(f, arcname=f.name)
    (out / "commands.json").write_text(json.dumps(record, indent=2))
    print(f"{PROG}: {'every step succeeded' if ok else 'some steps failed'}; files in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
