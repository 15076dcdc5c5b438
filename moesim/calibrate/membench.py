"""Memory-bandwidth microbenchmark (needs torch): element-wise ``c = a + b`` over a range of sizes,
timed the way ``real_backend.microbench`` times GEMMs, written as a microbench table (``kind`` =
``memory``, ``size_bytes`` = bytes moved: two reads and one write).

    python -m moesim.calibrate.membench --out mem.csv                      # one process
    torchrun --nproc_per_node=4 -m moesim.calibrate.membench --out mem4.csv  # every rank at once

``real_backend.microbench`` has no memory kind; this fills the gap so that ``moesim calibrate`` can
fit the memory bandwidth and the per-op overhead that the cost model uses for memory-bound work
(LayerNorm, residual adds, softmax, permutes, Adam).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import socket
import sys
import time
import uuid

from moesim.io import atomic_path

PROG = "moesim.calibrate.membench"
COLUMNS = ("kind", "group", "group_size", "m", "n", "k", "size_bytes", "dtype", "rank", "rep", "seconds", "bytes",
           "bytes_remote", "flop", "run_id", "host", "backend", "world_size")
DEFAULT_SIZES = "64KiB,256KiB,1MiB,4MiB,16MiB,64MiB"


def main(argv: list[str] | None = None) -> int:
    from moesim.units import parse_bytes
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"tensor sizes (bytes of each operand; default {DEFAULT_SIZES})")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (a single-GPU profile)")
    ap.add_argument("--ops-per-timing", type=int, default=1, metavar="N",
                    help="adds issued back to back between the two time stamps, seconds = elapsed / N "
                         "(default 1: an isolated op; on a GPU, N > 1 gives the steady-state cost in a queue)")
    args = ap.parse_args(argv)
    sizes = [int(parse_bytes(s.strip())) for s in args.sizes.split(",") if s.strip()]
    if args.ops_per_timing < 1:
        print(f"{PROG}: error: --ops-per-timing must be >= 1, got {args.ops_per_timing}", file=sys.stderr)
        return 2
    per = args.ops_per_timing

    import torch
    import torch.distributed as dist

    from real_backend.parallel import gpu_meta
    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"{PROG}: error: --device {args.device}: no CUDA device here", file=sys.stderr)
        return 2
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)  # noqa: E731
    rows = []
    for size in sizes:
        n = max(1, size // 4)
        a, b, c = torch.randn(n, device=dev), torch.randn(n, device=dev), torch.empty(n, device=dev)
        moved = 3 * n * 4
        for rep in range(args.warmup + args.reps):
            if world > 1:
                dist.barrier()
            sync()
            if dev.type == "cuda":      # GPU time between two events, as real_backend's Recorder times
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(per):
                    torch.add(a, b, out=c)
                end.record()
                sync()
                seconds = start.elapsed_time(end) / 1e3 / per
            else:
                t0 = time.perf_counter()
                for _ in range(per):
                    torch.add(a, b, out=c)
                seconds = (time.perf_counter() - t0) / per
            if rep >= args.warmup:
                rows.append({"kind": "memory", "group": "local", "group_size": 1, "size_bytes": moved, "dtype": "fp32",
                             "rank": rank, "rep": rep - args.warmup, "seconds": seconds, "bytes": moved, "flop": 0})
    gathered = [rows]
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
    if rank == 0:
        meta = {"kind": "microbench", "run_id": uuid.uuid4().hex[:12],
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
                "cpu_count": os.cpu_count(), "torch_version": torch.__version__, "device": str(dev), "backend": "gloo" if world > 1 else "none",
                **gpu_meta(dev),
                "world_size": world, "threads": torch.get_num_threads(), "reps": args.reps, "warmup": args.warmup,
                "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", world)), "tool": PROG, "ops_per_timing": per,
                "argv": sys.argv[1:] if argv is None else list(argv),
                "testbed": json.loads(os.environ["MOESIM_TESTBED"]) if os.environ.get("MOESIM_TESTBED") else None}
        buf = io.StringIO()
        buf.write("# moesim-real-backend v1 microbench\n# meta " + json.dumps(meta, sort_keys=True) + "\n")
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        common = {"run_id": meta["run_id"], "host": meta["host"], "backend": meta["backend"], "world_size": world}
        for part in gathered:
            for r in part:
                w.writerow(dict(r, **common))
        with atomic_path(args.out) as tmp:
            tmp.write_text(buf.getvalue())
        import statistics
        for size in sizes:
            moved = 3 * max(1, size // 4) * 4
            med = statistics.median(r["seconds"] for part in gathered for r in part if r["size_bytes"] == moved)
            print(f"  memory {moved} B: {med * 1e3:.3f} ms  {moved / med / 1e9:.2f} GB/s")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
