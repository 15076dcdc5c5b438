"""Benchmark of the flow-level network model (a script, not a timed test).

    python benchmarks/bench_network.py            # everything (about a minute on 2 cores)
    python benchmarks/bench_network.py --quick    # skip the 8,192-GPU cases
    python benchmarks/bench_network.py --json out/bench_network.json

Reports wall-clock seconds on this machine for:
- the max-min solver alone on 1e3..1e6 explicit flows (random GPU pairs on the 1,024-GPU cluster),
  and the routing of those pairs (first time, uncached);
- one uniform All-to-All over 1,024 and 8,192 GPUs on the parametric cluster (8 GPUs per node,
  NVSwitch, one 400 Gb/s NIC per GPU, rail-optimised, 32 nodes per leaf group, 8 spines), from a
  freshly built topology (routing and symmetry detection included), and again with warm caches;
- the same with the hierarchical 2d algorithm, and a ring all-reduce;
- an engine-like run: every expert-parallel group's All-to-All at once, 96 times in a row (24 layers x
  dispatch/combine x forward/backward);
- an All-to-All-v with lognormal per-pair sizes on the paper cluster (one event per distinct finish).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moesim.io import write_json_atomic  # noqa: E402
from moesim.network import FluidNetwork, NetworkParams, collectives, max_min_rates, router_for  # noqa: E402
from moesim.network import simulate_collective  # noqa: E402
from moesim.topology.generators import bigmac_paper, cluster  # noqa: E402

ROWS: list[dict] = []


def record(case: str, seconds: float, **info) -> None:
    row = {"case": case, "wall_s": round(seconds, 4), **info}
    ROWS.append(row)
    extra = ", ".join(f"{k}={v}" for k, v in info.items())
    print(f"{case:<58} {seconds:9.3f} s   {extra}", flush=True)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_solver() -> None:
    topo = cluster(128, 8)
    rng = np.random.default_rng(0)
    for n in (1_000, 10_000, 100_000, 1_000_000):
        s = rng.integers(0, topo.num_gpus, n)
        t = (s + rng.integers(1, topo.num_gpus, n)) % topo.num_gpus
        routes, t_route = timed(lambda: router_for(topo).routes(s, t))
        rows = routes.pair_of_entry
        rates, t_solve = timed(lambda: max_min_rates(rows, routes.links, routes.fracs, topo.link_capacity, n))
        record(f"max-min solve, {n:,} flows (1,024-GPU cluster)", t_solve, nnz=len(rows),
               route_s=round(t_route, 3), min_rate_GBps=round(float(rates.min()) / 1e9, 3))


def bench_all_to_all(gpus: int, algorithm: str) -> None:
    topo, t_topo = timed(lambda: cluster(gpus // 8, 8))
    coll = collectives.all_to_all(range(gpus), 64e6, topo, algorithm)   # 64 MB per rank
    res, t_first = timed(lambda: simulate_collective(topo, coll, record_flows=False))
    _, t_again = timed(lambda: simulate_collective(topo, coll, record_flows=False))
    flows = sum(s.num_flows for s in coll.stages)
    record(f"All-to-All {algorithm}, {gpus:,} GPUs, fresh topology", t_first, flows=flows,
           topology_build_s=round(t_topo, 3), simulated_ms=round(res.time_s * 1e3, 4))
    record(f"All-to-All {algorithm}, {gpus:,} GPUs, warm caches", t_again)


def bench_ring(gpus: int) -> None:
    topo = cluster(gpus // 8, 8)
    coll = collectives.all_reduce(range(gpus), 256e6, topo)
    res, t = timed(lambda: simulate_collective(topo, coll, record_flows=False))
    record(f"ring all-reduce, {gpus:,} GPUs ({2 * (gpus - 1)} steps, pipelined)", t,
           simulated_ms=round(res.time_s * 1e3, 3))


def bench_engine_like(gpus: int, ep: int, layers: int = 96) -> None:
    topo = cluster(gpus // 8, 8)

    def run():
        net = FluidNetwork(topo)
        groups = [collectives.all_to_all(range(g * ep, (g + 1) * ep), 32e6) for g in range(gpus // ep)]
        for layer in range(layers):
            for g, coll in enumerate(groups):
                net.start(coll, (layer, g), net.now)
            net.run_until_idle()
        return net
    net, t = timed(run)
    record(f"{layers} x {gpus // ep} concurrent All-to-Alls (ep={ep}), {gpus:,} GPUs", t,
           solves=net.stats["solves"], memo_hits=net.stats["memo_hits"], events=net.stats["events"])


def bench_all_to_all_v() -> None:
    topo = bigmac_paper()
    rng = np.random.default_rng(0)
    m = rng.lognormal(0.0, 1.0, (32, 32)) * 2e6
    coll = collectives.all_to_all(range(32), m, topo)
    net = FluidNetwork(topo, NetworkParams())
    _, t1 = timed(lambda: (net.start(coll, 0, net.now), net.run_until_idle()))
    _, t2 = timed(lambda: [(net.start(coll, i, net.now), net.run_until_idle()) for i in range(1, 11)])
    record("All-to-All-v (lognormal sizes), 32 GPUs, paper cluster, first", t1, events=net.stats["events"] // 11,
           simulated_ms=round(net.timings[0].time_s * 1e3, 3))
    record("  ... the same matrix again, per collective (memoised)", t2 / 10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 8,192-GPU cases")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench_solver()
    for gpus in (1024,) if args.quick else (1024, 8192):
        bench_all_to_all(gpus, "direct")
    for gpus in (1024,) if args.quick else (1024, 8192):
        bench_all_to_all(gpus, "2d")
    bench_ring(1024)
    bench_engine_like(1024, 64)
    if not args.quick:
        bench_engine_like(8192, 64)
        bench_engine_like(8192, 32)
    bench_all_to_all_v()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"total {time.perf_counter() - t0:.1f} s, peak memory {peak:.0f} MiB")
    if args.json:
        write_json_atomic(args.json, {"rows": ROWS, "peak_memory_mib": round(peak)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
