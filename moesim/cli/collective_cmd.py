"""``moesim collective``: time one collective alone on a topology with the flow-level network model."""
from __future__ import annotations

import argparse

import numpy as np

from moesim.cli.common import print_json
from moesim.errors import MoesimError
from moesim.units import fmt_seconds, fmt_si, parse_bytes, parse_duration


def parse_ranks(spec: str, num_gpus: int) -> list[int]:
    """``all``, or a comma list of ranks and inclusive ranges: ``0-31``, ``0-7,16-23``, ``3``."""
    text = spec.strip()
    if text == "all":
        return list(range(num_gpus))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise MoesimError(f"--ranks: cannot parse {part!r} (expected e.g. '0-31' or '0-7,16-23')") from None
    bad = [r for r in out if not 0 <= r < num_gpus]
    if bad:
        raise MoesimError(f"--ranks: rank {bad[0]} is not in the topology (ranks 0..{num_gpus - 1})")
    if len(set(out)) != len(out):
        raise MoesimError("--ranks: a rank is listed twice")
    return out


def register(subparsers) -> None:
    from moesim.network.collectives import OPS
    p = subparsers.add_parser(
        "collective", help="time one collective on a topology (flow-level network model)",
        description="Time one collective alone on a topology with the max-min fluid network model. "
                    "--bytes-per-rank is each rank's whole buffer (All-to-All: its send buffer, split evenly "
                    "over all ranks of the group, its own share staying local).")
    p.add_argument("--topology", required=True, metavar="FILE")
    p.add_argument("--op", required=True, choices=OPS)
    p.add_argument("--bytes-per-rank", required=True, metavar="SIZE", help="e.g. 64MiB, 1e8")
    p.add_argument("--ranks", default="all", metavar="SPEC", help="e.g. 0-31 or 0-7,16-23 (default: all)")
    p.add_argument("--algorithm", choices=("direct", "2d", "ring"), default=None,
                   help="all_to_all: direct (default) or 2d; the others: ring (default) or direct")
    p.add_argument("--latency-per-message", default="5us", metavar="DURATION", help="per-flow latency (default 5us)")
    p.add_argument("--collective-overhead", default="10us", metavar="DURATION",
                   help="per-collective launch overhead (default 10us)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from moesim.network import NetworkParams, collectives, simulate_collective
    from moesim.topology import load_topology
    try:
        size = parse_bytes(args.bytes_per_rank)
        alpha = parse_duration(args.latency_per_message)
        overhead = parse_duration(args.collective_overhead)
    except ValueError as exc:
        raise MoesimError(str(exc)) from None
    if size < 0 or alpha < 0 or overhead < 0:
        raise MoesimError("sizes and durations must not be negative")
    topo = load_topology(args.topology)
    ranks = parse_ranks(args.ranks, topo.num_gpus)
    coll = collectives.build(args.op, ranks, size, topo, args.algorithm)
    res = simulate_collective(topo, coll, NetworkParams(alpha, overhead), record_flows=False)
    links = res.link_bytes
    busiest = links.loc[links["bytes"].idxmax()] if len(links) else None
    out = {
        "topology": topo.name,
        "op": args.op,
        "algorithm": coll.algorithm,
        "ranks": len(ranks),
        "bytes_per_rank": size,
        "time_s": res.time_s,
        "algbw_bytes_per_s": size / res.time_s if res.time_s > 0 else None,
        "stages": len(res.stage_times),
        "stage_times_s": res.stage_times,
        "flows": int(sum(s.num_flows * s.repeat for s in coll.stages)),
        "network_bytes": coll.total_bytes,
        "bytes_by_class": res.bytes_by_class,
        "busiest_link": None if busiest is None or busiest["bytes"] == 0 else {
            "src": str(busiest["src"]), "dst": str(busiest["dst"]), "link_class": busiest["link_class"],
            "bytes": float(busiest["bytes"]), "capacity": float(busiest["capacity"]),
            "busy_fraction": float(busiest["bytes"] / busiest["capacity"] / res.time_s) if res.time_s > 0 else None},
        "params": {"latency_per_message_s": alpha, "collective_overhead_s": overhead},
    }
    if args.json:
        print_json(out)
        return 0
    print(f"{args.op} ({coll.algorithm}) over {len(ranks)} ranks of {topo.name}, {fmt_si(size, 'B')} per rank: "
          f"{fmt_seconds(res.time_s)}")
    print(f"  {out['stages']} stage run(s), {out['flows']} flows, {fmt_si(coll.total_bytes, 'B')} put on the network")
    for cls, b in res.bytes_by_class.items():
        print(f"  {cls:<10} {fmt_si(b, 'B')} carried")
    if out["busiest_link"]:
        bl = out["busiest_link"]
        print(f"  busiest link {bl['src']} -> {bl['dst']} ({bl['link_class']}): {fmt_si(bl['bytes'], 'B')}, "
              f"busy {100 * np.clip(bl['busy_fraction'], 0, 1):.0f}% of the time")
    return 0
