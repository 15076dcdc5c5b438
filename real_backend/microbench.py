"""Microbenchmarks for calibration: GEMM shapes, All-to-All sizes and all-reduce sizes over the
current process group (torchrun, the testbed, or a world of one).

    torchrun --nproc_per_node=4 -m real_backend.microbench --out mb.csv
    python -m real_backend.testbed --hosts 2 --ranks-per-host 2 --rate 100mbit -- microbench --out mb.csv

Every rank runs every measurement at the same time (a barrier aligns the start of each
repetition; the timed region holds only the operation), so GEMM rows include the contention of
the world size you run at. Collectives run over the whole world (``group`` = world) and, when
the ranks span several hosts, also within each host (``intra_node``) and across hosts with one
rank per host (``inter_node``): link classes can be fitted separately.

Output: a tidy CSV (``results.MICROBENCH_COLUMNS``), one row per rank, measurement and
repetition (warm-up repetitions are not recorded): raw rows, so take medians downstream.
``bytes``: GEMM operand + result bytes; All-to-All bytes this rank sends (``bytes_remote``: to
other ranks); all-reduce tensor bytes. ``flop``: 2*M*N*K for GEMMs.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from moesim.errors import MoesimError
from moesim.units import parse_bytes

PROG = "real_backend.microbench"
DEFAULT_GEMMS = [(m, n, k) for m in (64, 256, 1024) for (n, k) in ((256, 256), (1024, 256), (256, 1024), (1024, 1024))]
DEFAULT_SIZES = "4KiB,64KiB,512KiB,2MiB,8MiB"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _shape(text: str) -> tuple[int, int, int]:
    try:
        m, n, k = (int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"GEMM shape '{text}' is not M,N,K") from None
    if min(m, n, k) < 1:
        raise argparse.ArgumentTypeError(f"GEMM shape '{text}' must be positive")
    return m, n, k


def _sizes(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(parse_bytes(s.strip())) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output CSV (rank 0, atomic)")
    ap.add_argument("--kinds", default="gemm,all_to_all,all_reduce",
                    help="comma list of gemm, all_to_all, all_reduce (default: all)")
    ap.add_argument("--gemm", type=_shape, action="append", default=None, metavar="M,N,K",
                    help="GEMM shape (repeatable; default: a 12-shape grid)")
    ap.add_argument("--model", default=None, metavar="PRESET|FILE",
                    help="also benchmark the GEMM shapes of this config (per rank, one micro-batch)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--a2a-sizes", type=_sizes, default=_sizes(DEFAULT_SIZES),
                    help=f"bytes each rank sends per All-to-All (default {DEFAULT_SIZES})")
    ap.add_argument("--allreduce-sizes", type=_sizes, default=_sizes(DEFAULT_SIZES),
                    help=f"all-reduce tensor sizes (default {DEFAULT_SIZES})")
    ap.add_argument("--reps", type=int, default=5, help="recorded repetitions (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="unrecorded repetitions first (default 2)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--ops-per-timing", type=int, default=1, metavar="N",
                    help="GEMMs issued back to back between the two time stamps, seconds = elapsed / N "
                         "(default 1: an isolated op, launch latency included; on a GPU, N > 1 gives the "
                         "steady-state cost of an op in a queue)")
    ap.add_argument("--groups", default="auto", choices=("auto", "world"),
                    help="auto: world plus intra_node/inter_node groups when ranks span hosts")
    ap.add_argument("--timeout", type=float, default=300.0, help="collective timeout / watchdog seconds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    return ap


def config_gemms(cfg) -> list[tuple[int, int, int]]:
    """(M, N, K) of the config's GEMMs on one rank for one micro-batch (forward shapes)."""
    h, v = cfg.model.hidden, cfg.model.vocab
    if cfg.run.mode == "train":
        t = cfg.run.micro_batch_tokens or cfg.tokens_per_dp_rank
    elif cfg.run.mode == "prefill":
        t = cfg.step_tokens // cfg.parallel.dp_size
    else:
        t = cfg.run.batch_size // cfg.parallel.dp_size
    shapes = [(t, 3 * h, h), (t, h, h), (t, v, h)]
    if cfg.is_moe:
        e, k, ep = cfg.moe.experts, cfg.moe.top_k, cfg.parallel.ep
        per_expert = max(1, round(t * k * ep / e))  # rows per local expert (uniform routing)
        d, inner = cfg.expert_io_dim, cfg.expert_inner_dim
        shapes += [(per_expert, inner, d), (per_expert, d, inner), (t, e, h)]
        if cfg.moe.structure == "dcca":
            shapes += [(t, cfg.low_dim, h), (t, h, cfg.low_dim)]
    else:
        f = cfg.model.dense_ffn
        shapes += [(t, f, h), (t, h, f)]
    return list(dict.fromkeys(shapes))


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("gemm", "all_to_all", "all_reduce")]
    if bad or args.reps < 1 or args.warmup < 0 or args.ops_per_timing < 1:
        print(f"{PROG}: error: bad --kinds {bad}" if bad
              else f"{PROG}: error: --reps >= 1, --warmup >= 0, --ops-per-timing >= 1", file=sys.stderr)
        return 2
    per = args.ops_per_timing
    gemms = list(args.gemm or DEFAULT_GEMMS)
    if args.model:
        from moesim.config import load_config
        try:
            gemms += config_gemms(load_config(args.model, args.overrides))
        except MoesimError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2

    import torch
    import torch.distributed as dist

    from real_backend.parallel import finish_process_group, gather_rows_to_rank0, init_distributed, torch_meta
    from real_backend.results import MICROBENCH_COLUMNS, write_table
    from real_backend.timing import Progress, Recorder
    from real_backend.watchdog import Watchdog, report

    if args.threads:
        torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", "0"))
    progress = Progress()
    watchdog = None
    try:
        backend, device = init_distributed(args.timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
        rec = Recorder(device, progress=progress)
        dtype = getattr(torch, DTYPES[args.dtype])
        elem = torch.tensor([], dtype=dtype).element_size()
        groups: list[tuple[str, Any, int]] = [("world", dist.group.WORLD, world)]
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if args.groups == "auto" and 1 < local < world and world % local == 0:
            nodes = world // local
            for name, members in ([("intra_node", [list(range(n * local, (n + 1) * local)) for n in range(nodes)]),
                                   ("inter_node", [list(range(i, world, local)) for i in range(local)])]):
                for ranks in members:  # every rank creates every group
                    g = dist.new_group(ranks)
                    if rank in ranks:
                        groups.append((name, g, len(ranks)))
        watchdog = Watchdog(progress, rank, world, args.timeout, PROG)
        watchdog.start()

        def timed(fn) -> float:
            t0 = rec.stamp()
            fn()
            t1 = rec.stamp()
            if rec.cuda:
                torch.cuda.synchronize(device)
            return rec._seconds(t0, t1)

        rows: list[dict] = []

        def record(reps_fn, base: dict, barrier_group=None) -> None:
            for rep in range(args.warmup + args.reps):
                progress.touch(base["kind"], "none")
                with progress.collective_call("barrier"):
                    dist.barrier(group=barrier_group)
                secs = reps_fn()
                if rep >= args.warmup:
                    rows.append(dict(base, rank=rank, rep=rep - args.warmup, seconds=secs))

        if "gemm" in kinds:
            for (m, n, k) in gemms:
                a = torch.randn(m, k, device=device).to(dtype)
                b = torch.randn(k, n, device=device).to(dtype)
                base = {"kind": "gemm", "group": "local", "group_size": 1, "m": m, "n": n, "k": k,
                        "dtype": args.dtype, "flop": 2 * m * n * k, "bytes": (m * k + k * n + m * n) * elem}
                def mm_n(a=a, b=b) -> None:   # outputs dropped at once: the allocator reuses one buffer
                    for _ in range(per):
                        torch.mm(a, b)
                record(lambda: timed(mm_n) / per, base)
        for name, grp, gsize in groups:
            if "all_to_all" in kinds:
                for size in args.a2a_sizes:
                    per_peer = max(1, size // (elem * gsize))
                    x = torch.randn(per_peer * gsize, device=device).to(dtype)
                    y = torch.empty_like(x)
                    nbytes = x.numel() * elem

                    def a2a():
                        with progress.collective_call(f"{name}:all_to_all"):
                            return timed(lambda: dist.all_to_all_single(y, x, group=grp))
                    base = {"kind": "all_to_all", "group": name, "group_size": gsize, "size_bytes": nbytes,
                            "dtype": args.dtype, "bytes": nbytes, "bytes_remote": nbytes * (gsize - 1) // gsize,
                            "flop": 0}
                    record(a2a, base, grp)
            if "all_reduce" in kinds:
                for size in args.allreduce_sizes:
                    x = torch.randn(max(1, size // elem), device=device).to(dtype)
                    nbytes = x.numel() * elem

                    def allreduce():
                        with progress.collective_call(f"{name}:all_reduce"):
                            return timed(lambda: dist.all_reduce(x, group=grp))
                    base = {"kind": "all_reduce", "group": name, "group_size": gsize, "size_bytes": nbytes,
                            "dtype": args.dtype, "bytes": nbytes, "flop": 0}
                    record(allreduce, base, grp)
        gathered = gather_rows_to_rank0(rows, progress, watchdog)
        if rank == 0:
            meta = torch_meta("microbench", backend, device, reps=args.reps, warmup=args.warmup,
                              local_world_size=local, argv=sys.argv[1:] if argv is None else list(argv))
            meta["ops_per_timing"] = per
            if device.type == "cpu":
                try:  # the GEMMs' peak travels with them: a later refit on another CPU must not use its own
                    from moesim.calibrate.profile_io import cpu_peak_flops_per_core
                    meta["cpu_peak_flops_per_core"], meta["cpu_peak_flops_from"] = cpu_peak_flops_per_core()
                except Exception:  # noqa: BLE001 - no /proc/cpuinfo: calibrate then needs --peak-flops
                    pass
            common = {"run_id": meta["run_id"], "host": meta["host"], "backend": backend, "world_size": world}
            all_rows = [dict(r, **common) for r in gathered]
            write_table(args.out, MICROBENCH_COLUMNS, all_rows, meta)
            if not args.quiet:
                _summary(all_rows, args.out)
        finish_process_group(PROG)
        return 0
    except KeyboardInterrupt:
        report(f"{PROG}: rank {rank}: interrupted", 130)
    except Exception as exc:  # noqa: BLE001
        msg = f"{PROG}: rank {rank} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if progress.collective is not None and watchdog is not None:
            msg += "\n" + watchdog.diagnose(settle=2.0)
        report(msg, 1)
    return 1


def _summary(rows: list[dict], out: str) -> None:
    import statistics
    from collections import defaultdict
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        key = (r["kind"], r["group"], r.get("m"), r.get("n"), r.get("k"), r.get("size_bytes"))
        groups[key].append(r["seconds"])
    print(f"{PROG}: {len(rows)} rows -> {out}")
    for (kind, group, m, n, k, size), secs in groups.items():
        med = statistics.median(secs)
        if kind == "gemm":
            print(f"  gemm {m}x{n}x{k}: {med * 1e3:.3f} ms  {2 * m * n * k / med / 1e9:.1f} GFLOP/s")
        else:
            print(f"  {kind} [{group}] {size} B: {med * 1e3:.3f} ms  {size / med / 1e6:.1f} MB/s per rank")



if __name__ == "__main__":
    from real_backend.parallel import exit_process
    exit_process(main())
