"""``moesim cost``: CDAC vs DCCA time, traffic and dollars for training and inference on a cluster."""
from __future__ import annotations

import argparse
import math

from moesim.cli.common import add_config_options, print_json
from moesim.errors import MoesimError
from moesim.units import fmt_seconds, fmt_si

MODES = ("train", "prefill", "decode")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cost", help="training time, inference latency and dollars, CDAC vs DCCA",
        description="Simulate CDAC and DCCA steps (training, prefill, decode) of the config on a cluster and turn "
                    "them into communication volume per link class, training time for N tokens, time to first "
                    "token, per-token latency, throughput, and dollars per step, per 1B tokens, per training run "
                    "and per million generated tokens. Unless --set parallel.* is given, the layout is pure expert "
                    "parallelism over all GPUs (ep = gcd(GPUs, experts)).")
    add_config_options(p)
    t = p.add_argument_group("cluster")
    t.add_argument("--topology", metavar="FILE", help="topology file (default: generated, see --topo)")
    t.add_argument("--topo", dest="topo", action="append", default=[], metavar="KEY=VALUE",
                   help="topology generator parameter as in sweep files, e.g. --topo kind=cluster --topo nodes=4 "
                        "--topo nic_bandwidth='400 Gbit/s' (default kind: the BigMac paper's 32-GPU cluster)")
    t.add_argument("--profile", metavar="NAME|FILE", help="device profile for every GPU (default: the topology's)")
    t.add_argument("--algorithm", choices=("direct", "2d"), default="direct", help="All-to-All algorithm")
    c = p.add_argument_group("prices (US dollars)")
    c.add_argument("--gpu-hour-usd", type=str, default=None, help="price of one GPU-hour (no dollars without it)")
    c.add_argument("--upgrade-usd", type=str, default="0", help="one-off network-upgrade cost, charged to the training run")
    c.add_argument("--upgrade-usd-per-gpu-hour", type=str, default="0", help="recurring network-upgrade cost per GPU-hour")
    c.add_argument("--internode-usd-per-gb", type=str, default="0", help="price per GB of inter-node traffic")
    c.add_argument("--train-tokens", type=str, default="100B", help="tokens of a training run (default: %(default)s)")
    c.add_argument("--serve-tokens", type=str, default=None, help="tokens served, to amortise --upgrade-usd for inference")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of train,prefill,decode (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object (SI units, dollars)")
    p.set_defaults(func=run)


def _topology_dict(args) -> dict:
    from moesim.config.loader import _parse_value
    if args.topology and args.topo:
        raise MoesimError("--topology FILE and --topo KEY=VALUE exclude each other")
    if args.topology:
        return {"file": args.topology}
    out = {}
    for item in args.topo:
        if "=" not in item:
            raise MoesimError(f"--topo '{item}' is not of the form KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def estimate(args) -> dict:
    """Simulate the requested modes for both structures and price them."""
    from moesim.economics import CostInputs, StepMeasure, compare, serving_costs, step_costs
    from moesim.sweep import SweepSpecError, parse_spec, simulate_scenario
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise MoesimError(f"--modes: unknown mode '{m}' (expected {', '.join(MODES)})")
    cost = {"gpu_hour_usd": args.gpu_hour_usd, "upgrade_usd": args.upgrade_usd,
            "upgrade_usd_per_gpu_hour": args.upgrade_usd_per_gpu_hour,
            "internode_usd_per_gb": args.internode_usd_per_gb, "train_tokens": args.train_tokens,
            "serve_tokens": args.serve_tokens}
    inputs = CostInputs.from_mapping(cost)
    base = {"model": args.model, "set": list(args.overrides), "topology": _topology_dict(args),
            "a2a_algorithm": args.algorithm}
    if args.profile:
        base["profile"] = args.profile
    try:
        spec = parse_spec({"base": base, "grid": {"moe.structure": ["cdac", "dcca"], "run.mode": modes}})
    except SweepSpecError as exc:
        reason = exc.reason.split(": ", 1)[1] if exc.reason.startswith("scenario ") else exc.reason
        raise MoesimError(f"{exc.field}: {reason}") from None
    out: dict = {"cost_inputs": inputs.to_dict(), "cdac": {}, "dcca": {}}
    steps: dict = {}
    for sc in spec.scenarios:
        s, mode = sc.inputs["moe.structure"], sc.inputs["run.mode"]
        res = simulate_scenario(sc)
        step = StepMeasure.from_result(res)
        steps[(s, mode)] = step
        summ = res.summary()
        out[s][mode] = {"step_time_s": res.step_time_s, "tokens_per_step": step.tokens_per_step,
                        "a2a_bytes_per_step": summ["a2a_bytes_per_step"],
                        "bytes_by_link_class": summ["bytes_by_link_class"],
                        "breakdown_s": summ["breakdown_s"], **step_costs(step, inputs)}
        out.setdefault("setup", {
            "model": summ["model"], "top_k": summ["top_k"], "ratio": res.cfg.moe.ratio, "gpus": summ["world_size"],
            "parallel": summ["parallel"], "topology": res.topology.name, "profile": summ["profile"]["name"]})
    for s in ("cdac", "dcca"):
        if (s, "prefill") in steps and (s, "decode") in steps:
            out[s]["serving"] = serving_costs(steps[(s, "prefill")], steps[(s, "decode")], inputs)
    out["dcca_over_cdac"] = {k: compare(out["cdac"][k], out["dcca"][k]) for k in out["cdac"]}
    return out


def _money(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4g}"


def _print(est: dict) -> None:
    s = est["setup"]
    ci = est["cost_inputs"]
    price = "no GPU-hour price (--gpu-hour-usd)" if ci["gpu_hour_usd"] is None else f"${ci['gpu_hour_usd']:g}/GPU-h"
    print(f"{s['model']} top-{s['top_k']} r={s['ratio']:g} on {s['topology']} ({s['gpus']} GPUs, dp={s['parallel']['dp']}, "
          f"tp={s['parallel']['tp']}, ep={s['parallel']['ep']}), profile {s['profile']}; {price}")
    print(f"{'':38s} {'CDAC':>14s} {'DCCA':>14s} {'DCCA/CDAC':>10s}")

    def line(name, mode, key, fmt, sub=None):
        a = est["cdac"].get(mode, {})
        b = est["dcca"].get(mode, {})
        va, vb = (a.get(key), b.get(key)) if sub is None else (a.get(key, {}).get(sub), b.get(key, {}).get(sub))
        if va is None and vb is None:
            return
        ratio = f"{vb / va:10.4f}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else f"{'':10s}"
        print(f"  {name:36s} {fmt(va):>14s} {fmt(vb):>14s} {ratio}")

    sec = lambda x: "-" if x is None else fmt_seconds(x)  # noqa: E731
    dur = lambda x: "-" if x is None else (f"{x / 86400:.3g} days" if x >= 86400 else fmt_seconds(x))  # noqa: E731
    byt = lambda x: "-" if x is None else fmt_si(x, "B")  # noqa: E731
    rate = lambda x: "-" if x is None else fmt_si(x, "tok/s")  # noqa: E731
    if "train" in est["cdac"]:
        t = est["cdac"]["train"]
        n = t["train_tokens"]
        run = f"{n / 1e9:g}B" if n >= 1e9 else f"{n:,.0f}"
        print(f"training ({t['tokens_per_step']:.0f} tokens per step, run of {run} tokens)")
        line("step time", "train", "step_time_s", sec)
        line("throughput", "train", "tokens_per_s", rate)
        line("All-to-All bytes per step", "train", "a2a_bytes_per_step", byt)
        for cls_ in sorted(t["bytes_by_link_class"]):
            line(f"bytes per step on {cls_} links", "train", "bytes_by_link_class", byt, cls_)
        line("inter-node bytes per step", "train", "internode_bytes_per_step", byt)
        line("inter-node bytes per run", "train", "train_internode_bytes", byt)
        line("training time", "train", "train_time_s", dur)
        line("GPU-hours per run", "train", "train_gpu_hours", lambda x: "-" if x is None else f"{x:,.0f}")
        line("dollars per step", "train", "usd_per_step", _money)
        line("dollars per 1B tokens", "train", "usd_per_1b_tokens", _money)
        line("dollars per training run", "train", "train_usd", _money)
    if "prefill" in est["cdac"]:
        print(f"inference: prefill ({est['cdac']['prefill']['tokens_per_step']:.0f} prompt tokens per step)")
        line("time to first token", "prefill", "ttft_s", sec)
        line("prefill throughput", "prefill", "prefill_tokens_per_s", rate)
        line("All-to-All bytes per step", "prefill", "a2a_bytes_per_step", byt)
        line("dollars per step", "prefill", "usd_per_step", _money)
    if "decode" in est["cdac"]:
        print(f"inference: decode ({est['cdac']['decode']['tokens_per_step']:.0f} sequences, one token each per step)")
        line("per-token latency", "decode", "per_token_latency_s", sec)
        line("decode throughput", "decode", "decode_tokens_per_s", rate)
        line("All-to-All bytes per step", "decode", "a2a_bytes_per_step", byt)
        line("dollars per million decode tokens", "decode", "usd_per_million_generated_tokens", _money)
    if "serving" in est["cdac"]:
        g = est["cdac"]["serving"]["gen_len"]
        print(f"inference: whole responses of {g} tokens (prefill + {g - 1} decode steps)")
        line("response time", "serving", "response_time_s", sec)
        line("generation throughput", "serving", "generated_tokens_per_s", rate)
        line("dollars per million generated tokens", "serving", "usd_per_million_generated_tokens", _money)


def run(args: argparse.Namespace) -> int:
    est = estimate(args)
    if args.json:
        print_json(est)
    else:
        _print(est)
    return 0
