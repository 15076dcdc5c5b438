"""``moesim analyze``: parameters, FLOPs and All-to-All bytes of CDAC vs DCCA for a config."""
from __future__ import annotations

import argparse

from moesim.analytic import CONVENTIONS, analyze
from moesim.cli.common import add_config_options, config_from_args, print_json
from moesim.config import load_config
from moesim.units import fmt_si


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="closed-form parameters, FLOPs and All-to-All bytes (CDAC vs DCCA)",
                       description="Closed-form counts for a config. The table compares CDAC and DCCA side by "
                                   "side; --json prints one object for the config's own structure.")
    add_config_options(p)
    p.add_argument("--convention", choices=CONVENTIONS, default="paper",
                   help="counting convention: 'paper' generalises BigMac Table 3 (default); 'layers' counts "
                        "exactly what real_backend builds")
    p.add_argument("--json", action="store_true", help="print one JSON object (SI units)")
    p.set_defaults(func=run)


def _variant(args: argparse.Namespace, structure: str):
    return load_config(args.model, [*args.overrides, f"moe.structure={structure}"])


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.json:
        print_json(analyze(cfg, args.convention))
        return 0
    cdac = analyze(_variant(args, "cdac"), args.convention)
    dcca = analyze(_variant(args, "dcca"), args.convention)
    print(f"{cfg.model.name}: {cfg.model.layers} layers, h={cfg.model.hidden}, {cfg.moe.experts} experts, "
          f"top-{cfg.moe.top_k}, r={cfg.moe.ratio}, ep={cfg.parallel.ep}, {cfg.world_size} GPUs, "
          f"mode={cfg.run.mode}, {cfg.step_tokens} tokens/step, convention={args.convention}")
    rows = [
        ("parameters", "params", ""),
        ("FLOPs per step", "flops_per_iteration", "FLOP"),
        ("All-to-All bytes per step", "a2a_bytes_per_iteration", "B"),
        ("All-to-All bytes per layer", "a2a_bytes_per_layer", "B"),
        ("All-to-All bytes per rank", "a2a_bytes_per_rank_per_iteration", "B"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'CDAC':>12}  {'DCCA':>12}  {'DCCA/CDAC':>9}")
    for label, key, unit in rows:
        a, b = cdac[key], dcca[key]
        ratio = f"{b / a:9.4f}" if a else f"{'-':>9}"
        print(f"{label:{width}}  {fmt_si(a, unit):>12}  {fmt_si(b, unit):>12}  {ratio}")
    return 0
