"""Engine speed and scale: simulate one GPT3-XL MoE training iteration (24 layers, 64 experts,
top-8, CDAC and DCCA) with flow-level contention on the parametric cluster (8 GPUs per node,
rail-optimised 400 Gb/s fabric, H100 profile), 4096 tokens per GPU, ep = 32.

    python benchmarks/bench_engine.py                 # 32, 1024 and 8192 GPUs
    python benchmarks/bench_engine.py --gpus 32 1024  # a subset
    python benchmarks/bench_engine.py --layers 6 12 24 --gpus 1024   # growth with layers
    python benchmarks/bench_engine.py --profile-run 1024               # cProfile top functions
    python benchmarks/bench_engine.py --shared-cores                   # cost of the shared-core mode

Each size runs in a fresh subprocess so its peak memory (ru_maxrss) is its own. Prints one line per
run and a Markdown table; targets (2-core machine): 32 GPUs < 1 s, 1,024 < 10 s, 8,192 < 2 min.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TARGET_S = {32: 1.0, 1024: 10.0, 8192: 120.0}


def one_run(gpus: int, layers: int, structure: str) -> dict:
    import resource

    from moesim.config import load_config
    from moesim.engine import simulate
    from moesim.topology.generators import cluster

    t0 = time.perf_counter()
    topo = cluster(nodes=max(1, gpus // 8), gpus_per_node=min(8, gpus))
    cfg = load_config("gpt3-xl", [f"moe.structure={structure}", "moe.top_k=8", "parallel.ep=32",
                                  f"parallel.dp={gpus}", f"model.layers={layers}",
                                  f"run.global_batch_tokens={4096 * gpus}"])
    t1 = time.perf_counter()
    res = simulate(cfg, topo, "h100-sxm")
    t2 = time.perf_counter()
    return {"gpus": gpus, "layers": layers, "structure": structure, "setup_s": t1 - t0, "simulate_s": t2 - t1,
            "step_time_s": res.step_time_s, "rank_classes": res.classes.count,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def shared_cores(reps: int = 20) -> int:
    """The on-one-machine testbed's campaign model (4 ranks on 2 cores, 150 Mbit/s, top-8) with the
    committed AVX2 profile: seconds per simulation with shared cores (every rank its own process,
    processor sharing, staggered release) against the fixed core share, in one run."""
    from moesim.calibrate.netmodel import testbed_graph
    from moesim.config import load_config
    from moesim.engine import SimOptions, simulate
    from moesim.topology import Topology
    topo = Topology(testbed_graph(4, 1, 150e6, cores=2), source="<testbed 4x1 150 Mbit/s>")
    print("| structure | fixed share (ms) | shared cores (ms) | ratio | rank classes |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for structure in ("cdac", "dcca"):
        cfg = load_config("real_backend/configs/small-gpt.yaml",
                          ["moe.experts=16", "model.vocab=2048", "model.seq_len=64", "run.global_batch_tokens=768",
                           "run.batch_size=8", f"moe.structure={structure}", "moe.top_k=8", "parallel.ep=4"])
        times, classes = {}, {}
        for pool in (False, True):
            simulate(cfg, topo, "calibration/avx2/cpu-testbed-avx2.yaml", SimOptions(cpu_pool=pool))  # warm caches
            t0 = time.perf_counter()
            for _ in range(reps):
                res = simulate(cfg, topo, "calibration/avx2/cpu-testbed-avx2.yaml", SimOptions(cpu_pool=pool))
            times[pool], classes[pool] = (time.perf_counter() - t0) / reps, res.classes.count
        print(f"| {structure} | {times[False] * 1e3:.1f} | {times[True] * 1e3:.1f} | {times[True] / times[False]:.2f} | "
              f"{classes[False]} -> {classes[True]} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="+", default=[32, 1024, 8192])
    ap.add_argument("--layers", type=int, nargs="+", default=[24])
    ap.add_argument("--child", nargs=3, metavar=("GPUS", "LAYERS", "STRUCTURE"), help=argparse.SUPPRESS)
    ap.add_argument("--profile-run", type=int, metavar="GPUS", help="cProfile one DCCA run and print the top 25")
    ap.add_argument("--shared-cores", action="store_true", help="cost of the shared-core mode on the testbed model")
    args = ap.parse_args()
    if args.shared_cores:
        return shared_cores()
    if args.child:
        print(json.dumps(one_run(int(args.child[0]), int(args.child[1]), args.child[2])))
        return 0
    if args.profile_run:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(one_run, args.profile_run, args.layers[0], "dcca")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        return 0
    rows = []
    for gpus in args.gpus:
        for layers in args.layers:
            for structure in ("cdac", "dcca"):
                out = subprocess.run([sys.executable, __file__, "--child", str(gpus), str(layers), structure],
                                     capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{gpus:5d} GPUs {layers:2d} layers {structure}: simulate {row['simulate_s']:.2f} s, "
                      f"step {row['step_time_s'] * 1e3:.1f} ms, {row['rank_classes']} rank class(es), "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    print("\n| GPUs | layers | structure | simulate (s) | target (s) | simulated step (ms) | peak RSS (MB) |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        target = TARGET_S.get(r["gpus"], float("nan")) if r["layers"] == 24 else float("nan")
        print(f"| {r['gpus']} | {r['layers']} | {r['structure']} | {r['simulate_s']:.2f} | {target:g} | "
              f"{r['step_time_s'] * 1e3:.1f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
