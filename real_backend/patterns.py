"""Goodput of point-to-point traffic patterns: which traffic loses throughput on shaped links.

    python -m real_backend.testbed --hosts 4 --ranks-per-host 1 --rate 150mbit -- \\
        patterns --out calibration/measurements/patterns-4x1-150mbit.csv

Each pattern is a set of (src, dst) rank pairs that send ``--bytes`` each at once with gloo
``isend``/``irecv`` (gloo keeps one TCP connection per rank pair, in both directions), framed by
barriers after ``--gap`` seconds of idle link (token buckets full again); plus ``all_to_all`` with
``all_to_all_single`` and equal splits (or, with ``--uneven F``, rank 0 sending and receiving F
times ``--bytes`` to and from every peer, as a router's busiest expert rank does). Rank 0 writes one row per pattern and repetition: seconds,
bytes on the busiest host link (``bottleneck_bytes``: the most any one host sends or receives to
or from other hosts) and, on a shaped testbed, ``goodput`` = bottleneck bytes / seconds / tc rate.
``release_first_s`` / ``release_last_s``: when the first and the last rank taking part got its
own sends and receives back, from the earliest start (wall clock, one machine's clock for every
namespace), so ``release_spread`` = (last - first) / last is how unevenly the pattern lets its
ranks go: a fluid model that shares links fairly releases an even All-to-All's ranks together.

Patterns (ranks are hosts when each host holds one rank): ``single`` 0->1; ``pair_two_way`` 0<->1
on one connection; ``fan_in`` all -> 0; ``fan_out`` 0 -> all; ``ring`` i -> i+1; ``exchange`` every
ordered pair (the All-to-All's traffic, posted as point-to-point); ``all_to_all``;
``all_to_all_train``: ``--train`` All-to-Alls back to back, as a training step issues them, each rank
going on to the next as soon as its own call returns (no barrier between calls), with
``--train-compute`` fixed CPU work (that many 128 x 128 fp32 matmuls) between calls. ``calls`` is how
many All-to-Alls a row holds, its times cover all of them (``goodput`` counts the bytes of every
call), and ``release_mean_s`` is the mean over the ranks of their return from the last call, so
``release_mean_s / calls`` is what a call costs a rank on average in a train, the quantity a step's
All-to-All phase times measure. ``--late S`` (``all_to_all`` only): the last rank reaches the call S
seconds after the others, as a step's last arriver does, so the others exchange among themselves
first; ``call_after_last_arrival_s`` is then what the late rank's own exchanges cost, and
``bottleneck_bytes`` and ``goodput`` count only the late rank's exchanges (over that time). Per call
(medians over a row's calls): ``call_arrival_skew_s``, how far apart the ranks reached it; ``call_after_last_arrival_s``, from the last arrival to the last
return; ``call_rank_mean_s``, a rank's mean time in it (for one-call patterns, from the barrier).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional

PROG = "real_backend.patterns"
COLUMNS = ("pattern", "rep", "ranks", "bytes_per_pair", "pairs", "calls", "compute_matmuls", "bottleneck_bytes",
           "uneven", "seconds", "goodput", "release_first_s", "release_last_s", "release_mean_s", "release_spread",
           "call_arrival_skew_s", "call_after_last_arrival_s", "call_rank_mean_s", "late_s", "rate_bits",
           "run_id", "host", "backend", "world_size")
#: matmul size of ``--train-compute`` (square, fp32)
COMPUTE_DIM = 128


def _pairs(name: str, n: int) -> list[tuple[int, int]]:
    if name == "single":
        return [(0, 1)]
    if name == "pair_two_way":
        return [(0, 1), (1, 0)]
    if name == "fan_in":
        return [(i, 0) for i in range(1, n)]
    if name == "fan_out":
        return [(0, i) for i in range(1, n)]
    if name == "ring":
        return [(i, (i + 1) % n) for i in range(n)]
    if name in ("exchange", "all_to_all", "all_to_all_train"):
        return [(i, j) for i in range(n) for j in range(n) if i != j]
    raise ValueError(name)


PATTERNS = ("single", "pair_two_way", "fan_in", "fan_out", "ring", "exchange", "all_to_all", "all_to_all_train")


def bottleneck_bytes(pairs: list[tuple[int, int]], nbytes: int, host_of, rank0_bytes: int | None = None) -> int:
    """The most bytes any host sends to, or receives from, other hosts (``rank0_bytes``: what a pair
    with rank 0 carries each way, when rank 0's pairs are bigger)."""
    up: dict[int, int] = {}
    down: dict[int, int] = {}
    for s, d in pairs:
        if host_of(s) != host_of(d):
            n = rank0_bytes if (rank0_bytes is not None and 0 in (s, d)) else nbytes
            up[host_of(s)] = up.get(host_of(s), 0) + n
            down[host_of(d)] = down.get(host_of(d), 0) + n
    return max([*up.values(), *down.values(), 0])


def release_times(starts, ends, pairs: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(first, last, spread) of the release of the ranks taking part in ``pairs``: ``starts`` and
    ``ends`` are each rank's wall-clock start and return (s); times count from the earliest start
    of a taking-part rank; spread = (last - first) / last."""
    part = sorted({r for pair in pairs for r in pair})
    t0 = min(starts[r] for r in part)
    rel = [ends[r] - t0 for r in part]
    first, last = min(rel), max(rel)
    return first, last, (last - first) / last if last > 0 else 0.0


def mean_release(starts, ends, pairs: list[tuple[int, int]]) -> float:
    """Mean over the ranks taking part in ``pairs`` of their return (s), counted from the earliest
    start of a taking-part rank (as :func:`release_times`)."""
    part = sorted({r for pair in pairs for r in pair})
    t0 = min(starts[r] for r in part)
    return sum(ends[r] - t0 for r in part) / len(part)


def call_times(arrive, ret, pairs: list[tuple[int, int]]) -> tuple[float, float, float]:
    """Per call (``arrive[r][i]``, ``ret[r][i]``: when rank r reached call i and got it back, s), over
    the ranks taking part in ``pairs``, the medians over calls of: how far apart the ranks reached it
    (max - min), how long it took from the last arrival to the last return, and a rank's mean time in
    it. In a train, what the first measures adds to a call's cost beyond the second."""
    part = sorted({r for pair in pairs for r in pair})
    skew, after, mean = [], [], []
    for i in range(len(arrive[part[0]])):
        a = [arrive[r][i] for r in part]
        e = [ret[r][i] for r in part]
        skew.append(max(a) - min(a))
        after.append(max(e) - max(a))
        mean.append(sum(x - y for x, y in zip(e, a)) / len(part))
    return statistics.median(skew), statistics.median(after), statistics.median(mean)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output CSV (rank 0, atomic)")
    ap.add_argument("--bytes", type=int, default=1 << 20, help="bytes per rank pair (default 1 MiB)")
    ap.add_argument("--reps", type=int, default=5, help="recorded repetitions per pattern (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded repetitions first (default 1)")
    ap.add_argument("--gap", type=float, default=0.05, help="idle seconds before each repetition (default 0.05)")
    ap.add_argument("--patterns", default=",".join(PATTERNS), help=f"comma list of {', '.join(PATTERNS)}")
    ap.add_argument("--train", type=int, default=8,
                    help="All-to-Alls back to back in the all_to_all_train pattern (default 8)")
    ap.add_argument("--train-compute", type=int, default=0, metavar="MATMULS",
                    help=f"fixed CPU work between the train's calls: {COMPUTE_DIM} x {COMPUTE_DIM} fp32 matmuls (default 0)")
    ap.add_argument("--uneven", type=float, default=1.0, metavar="F",
                    help="all_to_all and all_to_all_train: rank 0 sends and receives F x --bytes per peer (default 1)")
    ap.add_argument("--late", type=float, default=0.0, metavar="S",
                    help="all_to_all: the last rank enters the call S seconds after the others (default 0)")
    ap.add_argument("--timeout", type=float, default=300.0, help="collective timeout seconds")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    names = [p.strip() for p in args.patterns.split(",") if p.strip()]
    bad = [p for p in names if p not in PATTERNS]
    if bad or args.bytes < 4 or args.reps < 1 or args.warmup < 0 or args.gap < 0 or args.train < 1 \
            or args.train_compute < 0 or not args.uneven >= 1.0 or not 0.0 <= args.late < 60.0:
        print(f"{PROG}: error: " + (f"unknown pattern(s) {bad}" if bad else
                                    "--bytes >= 4, --reps >= 1, --warmup >= 0, --gap >= 0, --train >= 1, "
                                    "--train-compute >= 0, --uneven >= 1, 0 <= --late < 60"), file=sys.stderr)
        return 2
    import torch
    import torch.distributed as dist

    from real_backend.parallel import finish_process_group, init_distributed, torch_meta
    from real_backend.results import write_table

    backend, _ = init_distributed(args.timeout, backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world < 2:
        print(f"{PROG}: error: needs at least 2 ranks (run it under real_backend.testbed or torchrun)", file=sys.stderr)
        return 2
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    host_of = lambda r: r // local  # noqa: E731
    tb = os.environ.get("MOESIM_TESTBED")
    import json
    rate_bits = (json.loads(tb).get("rate_bits") or 0.0) if tb else 0.0
    elems = args.bytes // 4
    send = torch.ones(elems)
    recv = [torch.empty(elems) for _ in range(world)]
    big = int(round(elems * args.uneven))          # rank 0's elements per peer, each way
    splits = [big if (rank == 0) != (peer == 0) else elems for peer in range(world)]
    a2a_in, a2a_out = torch.ones(sum(splits)), torch.empty(sum(splits))
    a2a = (lambda: dist.all_to_all_single(a2a_out, a2a_in)) if big == elems else (  # noqa: E731
        lambda: dist.all_to_all_single(a2a_out, a2a_in, output_split_sizes=splits, input_split_sizes=splits))
    mat = torch.ones(COMPUTE_DIM, COMPUTE_DIM)
    rows = []
    for name in names:
        pairs = _pairs(name, world)
        uneven = args.uneven if name in ("all_to_all", "all_to_all_train") else 1.0
        bneck = bottleneck_bytes(pairs, elems * 4, host_of, big * 4 if uneven > 1.0 else None)
        calls = args.train if name == "all_to_all_train" else 1
        work = args.train_compute if name == "all_to_all_train" else 0
        late = args.late if name == "all_to_all" else 0.0
        if late:   # what the late rank's own exchanges put on the busiest host link (the others are done)
            bneck = bottleneck_bytes([p for p in pairs if world - 1 in p], elems * 4, host_of,
                                     big * 4 if uneven > 1.0 else None)
        for rep in range(args.warmup + args.reps):
            dist.barrier()
            time.sleep(args.gap)
            dist.barrier()
            w0 = time.time()
            t0 = time.perf_counter()
            marks = torch.zeros(2 * calls, dtype=torch.float64)   # (arrival, return) of each call
            if name == "all_to_all":
                if late and rank == world - 1:
                    time.sleep(late)
                arrived = time.time()
                a2a()
            elif name == "all_to_all_train":
                for call in range(calls):
                    for _ in range(work if call else 0):
                        torch.mm(mat, mat)
                    marks[2 * call] = time.time()
                    a2a()
                    marks[2 * call + 1] = time.time()
            else:
                reqs = []
                for s, d in pairs:
                    if s == rank:
                        reqs.append(dist.isend(send, d, tag=s * world + d))
                    if d == rank:
                        reqs.append(dist.irecv(recv[s], s, tag=s * world + d))
                for q in reqs:
                    q.wait()
            w1 = time.time()
            dist.barrier()
            dt = time.perf_counter() - t0
            if calls == 1:
                marks[0], marks[1] = (arrived if name == "all_to_all" else w0), w1
            stamps = torch.zeros(world, 2 + 2 * calls, dtype=torch.float64)
            stamps[rank, 0], stamps[rank, 1], stamps[rank, 2:] = w0, w1, marks
            dist.all_reduce(stamps)                  # every rank's times, outside the timing
            first, last, spread = release_times(stamps[:, 0].tolist(), stamps[:, 1].tolist(), pairs)
            mean = mean_release(stamps[:, 0].tolist(), stamps[:, 1].tolist(), pairs)
            skew, after_last, rank_mean = call_times(stamps[:, 2::2].tolist(), stamps[:, 3::2].tolist(), pairs)
            if rep >= args.warmup and rank == 0:
                rows.append({"pattern": name, "rep": rep - args.warmup, "ranks": world, "bytes_per_pair": elems * 4,
                             "pairs": len(pairs), "calls": calls, "compute_matmuls": work, "uneven": uneven,
                             "bottleneck_bytes": bneck,
                             "seconds": dt,
                             "goodput": (None if not (rate_bits and bneck) else
                                         calls * bneck / dt / (rate_bits / 8.0) if not late else
                                         bneck / after_last / (rate_bits / 8.0) if after_last > 0 else None),
                             "release_first_s": first, "release_last_s": last, "release_mean_s": mean,
                             "release_spread": spread, "call_arrival_skew_s": skew,
                             "call_after_last_arrival_s": after_last, "call_rank_mean_s": rank_mean,
                             "late_s": late,
                             "rate_bits": rate_bits or None, "world_size": world, "backend": backend})
    if rank == 0:
        meta = torch_meta("patterns", backend, "cpu", argv=list(argv if argv is not None else sys.argv[1:]),
                          local_world_size=local)
        for r in rows:
            r.update(run_id=meta["run_id"], host=meta["host"])
        write_table(args.out, COLUMNS, rows, meta)
        med = {}
        for r in rows:
            med.setdefault(r["pattern"], []).append(r)
        for name, rs in med.items():
            rs.sort(key=lambda r: r["seconds"])
            m = rs[len(rs) // 2]
            gp = f", goodput {m['goodput']:.2f} of the rate" if m["goodput"] else ""
            spreads = sorted(r["release_spread"] for r in rs)
            per = f" ({m['calls']} calls)" if m["calls"] > 1 else ""
            print(f"{PROG}: {name:16s} {m['seconds'] * 1e3:8.1f} ms{per}{gp}, ranks released over the last "
                  f"{100 * spreads[len(spreads) // 2]:.0f} % (median)", flush=True)
    finish_process_group(PROG)
    return 0


if __name__ == "__main__":
    from real_backend.parallel import exit_process
    exit_process(main())
