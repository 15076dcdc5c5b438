"""``moesim calibrate``: fit a measured device and network profile from real_backend microbenchmarks."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from moesim.units import fmt_seconds, fmt_si


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit a measured profile from real_backend microbenchmark tables",
                       description="Fit the cost model from measurement tables: the GEMM efficiency curve "
                                   "(efficiency_max, half_size), memory bandwidth and per-op overhead (single-process "
                                   "GEMM / memory tables, plus single-process run tables for the framework overhead), "
                                   "the core share of each rank (GEMMs at the target world size), and per link class "
                                   "latency and bandwidth plus per-collective overhead (All-to-All / all-reduce tables "
                                   "from the testbed). Prints the residuals of each fit and writes the profile "
                                   "(status: measured, with provenance) atomically; nothing is written on error.")
    p.add_argument("measurements", nargs="+", metavar="MEASUREMENTS",
                   help="CSV tables from real_backend.microbench / moesim.calibrate.membench / real_backend.run "
                        "(world size 1), or directories of them")
    p.add_argument("--out", required=True, metavar="FILE.yaml", help="profile to write, e.g. calibration/cpu-testbed.yaml")
    p.add_argument("--name", default=None, help="profile name (default: the output file's stem)")
    p.add_argument("--topology", metavar="FILE",
                   help="topology of the machines measured, for tables without testbed metadata")
    p.add_argument("--peak-flops", type=float, default=None, metavar="FLOP/S",
                   help="reference peak for the GEMM tables' dtype: of one CPU core (default: from /proc/cpuinfo: "
                        "SIMD width x FMA x clock) or, required for GPU tables, the GPU's datasheet peak "
                        "(e.g. 989e12 bf16 on an H100/H200 SXM); a given peak bounds efficiency_max at 1")
    p.add_argument("--ranks", type=int, default=None,
                   help="ranks sharing the machine in the runs this profile is for (default: the largest world measured)")
    p.add_argument("--min-contended-seconds", type=float, default=5e-3,
                   help="GEMMs shorter than this alone are not used for the core share (default 5 ms)")
    # moesim.calibrate.fit.NIC_EFFICIENCY_FROM / _DEFAULT, spelled out so that `moesim` starts without pandas
    p.add_argument("--nic-efficiency", choices=("joint", "one-way"), default="one-way",
                   help="rows that fit the tc-shaped links' efficiency: the 4 MiB one-way rings of three or more "
                        "ranks alone, after the joint fit (one-way, default), leaving the All-to-Alls' two-way loss "
                        "to the two-way penalty; or all collectives with the other network parameters (joint)")
    p.add_argument("--json", action="store_true", help="print the profile and residuals as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moesim.calibrate import calibrate, write_profile
    out = Path(args.out)
    cal = calibrate(args.measurements, name=args.name or out.stem, peak_flops=args.peak_flops, ranks=args.ranks,
                    min_contended_s=args.min_contended_seconds, topology=args.topology,
                    nic_efficiency=args.nic_efficiency)
    write_profile(out, cal.profile)
    if args.json:
        print(json.dumps({"out": str(out), "profile": _plain(cal.profile), "residuals": cal.residuals}, indent=2))
        return 0
    d, c = cal.profile["device"], cal.profile["calibration"]
    print(f"calibrated from {len(cal.tables)} table(s) -> {out} ({cal.profile['name']}, status measured)")
    gpu = cal.profile["provenance"].get("gpu")
    where = (f"one {gpu['name']} per rank" if gpu else
             f"per rank of {c['ranks_per_machine']} on {c['cores']} cores, core share "
             f"{c.get('contention', {}).get('core_share', 1.0):.3f}")
    print(f"  compute ({where}): peak {', '.join(f'{k} ' + fmt_si(v, 'FLOP/s') for k, v in d['peak_flops'].items())}, "
          f"efficiency_max {d['gemm']['efficiency_max']:.3f}, half_size {d['gemm']['half_size']:.1f}, "
          f"memory {fmt_si(d['memory_bandwidth'], 'B/s')}, op overhead {fmt_seconds(d['op_overhead_s'])}"
          + (" (overlapping the work: an op costs the larger)" if d.get("op_overhead_overlaps") else ""))
    net = cal.profile.get("network")
    if net:
        print(f"  network: per message {fmt_seconds(net['latency_per_message_s'])}, per collective "
              f"{fmt_seconds(net['collective_overhead_s'])}")
        for cls, lp in c.get("links", {}).items():
            bits = []
            if lp.get("efficiency") is not None:
                src = c.get("nic_efficiency_from", {})
                how = (f" (from {src['rows_used']} one-way rows; joint fit {src['joint_efficiency']:.3f})"
                       if cls == "nic" and src.get("rows") == "one-way" else "")
                bits.append(f"efficiency {lp['efficiency']:.3f} of the tc rate{how}")
            if lp.get("max_bandwidth"):
                bits.append(f"max {fmt_si(lp['max_bandwidth'], 'B/s')}")
            bits.append(f"link latency {fmt_seconds(lp['latency_s'])}")
            print(f"    {cls:9s} " + ", ".join(bits))
    print("  residuals of the fit:")
    for line in cal.residual_lines():
        print("    " + line)
    for note in c.get("fit_notes", []):
        print(f"  note: {note}")
    return 0


def _plain(obj):
    from moesim.calibrate.profile_io import _clean
    return _clean(obj)
