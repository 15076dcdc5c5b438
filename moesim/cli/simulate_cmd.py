"""``moesim simulate`` and ``moesim demo``: one step of CDAC or DCCA on a cluster."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from moesim.cli.common import add_config_options, config_from_args, print_json
from moesim.config import load_config
from moesim.errors import MoesimError
from moesim.units import fmt_seconds, fmt_si


def add_topology_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", metavar="FILE",
                   help="topology file (node-link JSON or GraphML); default: the BigMac paper's 32-GPU cluster")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="device profile for every GPU (default: each GPU's 'device' attribute in the topology)")
    p.add_argument("--algorithm", choices=("direct", "2d"), default="direct",
                   help="All-to-All algorithm (default: direct)")


def load_topology_arg(path: str | None):
    from moesim.topology import load_topology
    from moesim.topology.generators import bigmac_paper
    return bigmac_paper() if path is None else load_topology(path)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate one training iteration or inference step on a cluster",
                       description="Simulate one step (run.mode) of the config on a topology with link-level "
                                   "contention; print the step time and where it goes.")
    add_config_options(p)
    add_topology_options(p)
    p.add_argument("--compare", action="store_true", help="simulate CDAC and DCCA on the same cluster, with the speedup")
    p.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace (open in Perfetto or chrome://tracing)")
    p.add_argument("--timeline", metavar="FILE.csv", help="write the per-rank timeline as CSV")
    p.add_argument("--links", metavar="FILE.csv", help="write bytes and utilisation per link as CSV")
    p.set_defaults(func=run_simulate)

    d = sub.add_parser("demo", help="the main job: CDAC vs DCCA on the paper's cluster, table + HTML report",
                       description="Simulate the BigMac paper's speed experiments (its 32-GPU cluster and GPT3 "
                                   "MoE models, top-4 and top-8, training and inference) for CDAC and DCCA; "
                                   "print a table and write an HTML report.")
    d.add_argument("--models", default="gpt3-medium,gpt3-xl", help="comma-separated presets (default: %(default)s)")
    d.add_argument("--top-k", default="4,8", help="comma-separated top-k values (default: %(default)s)")
    d.add_argument("--modes", default="train,prefill", help="comma-separated modes (default: %(default)s)")
    add_topology_options(d)
    d.add_argument("--out", default="moesim-demo.html", help="HTML report path (default: %(default)s)")
    d.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    d.set_defaults(func=run_demo)


def _simulate(cfg, topo, args):
    from moesim.engine import SimOptions, simulate
    return simulate(cfg, topo, args.profile, SimOptions(a2a_algorithm=args.algorithm))


def _print_result(res) -> None:
    s = res.summary()
    print(f"{s['model']} {s['structure'].upper()} {s['mode']}: top-{s['top_k']}, {s['world_size']} GPUs "
          f"(dp={s['parallel']['dp']}, tp={s['parallel']['tp']}, ep={s['parallel']['ep']}), "
          f"profile {s['profile']['name']} ({s['profile']['status']})")
    print(f"  step time {fmt_seconds(s['step_time_s'])}, {fmt_si(s['tokens_per_s'], 'tokens/s')}, "
          f"exposed comm {fmt_seconds(s['exposed_comm_s'])}, overlapped comm {fmt_seconds(s['overlapped_comm_s'])}")
    for phase, sec in s["breakdown_s"].items():
        if sec > 0:
            print(f"    {phase:15s} {fmt_seconds(sec):>10s}  {100 * sec / s['step_time_s']:5.1f}%")


def run_simulate(args: argparse.Namespace) -> int:
    from moesim.io import atomic_path
    cfg = config_from_args(args)
    topo = load_topology_arg(args.topology)
    if args.compare:
        results = {s: _simulate(load_config(args.model, [*args.overrides, f"moe.structure={s}"]), topo, args)
                   for s in ("cdac", "dcca")}
        speedup = results["cdac"].step_time_s / results["dcca"].step_time_s
        if args.json:
            print_json({"cdac": results["cdac"].summary(), "dcca": results["dcca"].summary(), "speedup": speedup})
        else:
            for r in results.values():
                _print_result(r)
            print(f"DCCA speedup over CDAC: {speedup:.3f}x")
        main_res = results[cfg.moe.structure] if cfg.moe.structure in results else results["dcca"]
    else:
        main_res = _simulate(cfg, topo, args)
        if args.json:
            print_json(main_res.summary())
        else:
            _print_result(main_res)
    if args.trace:
        main_res.write_chrome_trace(args.trace)
    if args.timeline:
        with atomic_path(args.timeline) as tmp:
            main_res.timeline().to_csv(tmp, index=False)
    if args.links:
        with atomic_path(args.links) as tmp:
            main_res.links().to_csv(tmp, index=False)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from moesim.report import demo_rows, write_demo_report
    models = [m for m in args.models.split(",") if m]
    try:
        top_ks = [int(k) for k in args.top_k.split(",") if k]
    except ValueError:
        raise MoesimError(f"--top-k must be comma-separated integers, got {args.top_k!r}") from None
    modes = [m for m in args.modes.split(",") if m]
    topo = load_topology_arg(args.topology)
    rows, results = demo_rows(models, top_ks, modes, topo, args.profile, args.algorithm)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"CDAC vs DCCA on {topo.num_gpus} GPUs ({Path(args.topology).name if args.topology else 'BigMac paper cluster'})")
        print(f"{'model':12s} {'mode':8s} {'k':>2s} {'CDAC step':>11s} {'DCCA step':>11s} {'speedup':>8s} "
              f"{'CDAC a2a %':>10s} {'DCCA a2a %':>10s}")
        for r in rows:
            print(f"{r['model']:12s} {r['mode']:8s} {r['top_k']:2d} {fmt_seconds(r['cdac_step_s']):>11s} "
                  f"{fmt_seconds(r['dcca_step_s']):>11s} {r['speedup']:7.2f}x {100 * r['cdac_a2a_share']:9.1f}% "
                  f"{100 * r['dcca_a2a_share']:9.1f}%")
    write_demo_report(args.out, rows, results)
    if not args.json:
        print(f"report: {args.out}")
    return 0
