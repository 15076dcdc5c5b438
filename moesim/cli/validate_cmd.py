"""``moesim validate``: simulate measured runs and compare predicted with measured step and phase times."""
from __future__ import annotations

import argparse
import json

import numpy as np

from moesim.units import fmt_seconds, fmt_si


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="predicted vs measured step and phase times of real_backend runs",
                       description="Simulate each measured run (config from the table's metadata, its testbed "
                                   "topology with the profile's calibrated links) and print predicted vs measured "
                                   "step time and per-phase times, the absolute percentage error per run, MAPE and "
                                   "max error, and DCCA-over-CDAC speedups. Repeated runs of one configuration form one row (median "
                                   "over the runs). A campaign directory (with manifest.json) "
                                   "brings its own profile, topologies and fit/held-out split. Several campaign "
                                   "directories are judged together: per campaign its held-out results, and per "
                                   "configuration the signed speedup error on every campaign (a model bias shows "
                                   "as one sign throughout).")
    p.add_argument("runs", nargs="+", metavar="RUN_CSVS",
                   help="real_backend.run tables, or a campaign directory, or several campaign directories")
    p.add_argument("--profile", metavar="NAME|FILE", help="device profile (default: the campaign manifest's)")
    p.add_argument("--topology", metavar="FILE", help="topology for every run (default: each run's <csv>.topology.json "
                                                     "or the manifest's, else one built from the table's testbed meta)")
    p.add_argument("--bucket-bytes", type=float, default=None,
                   help="gradient all-reduce bucket (default: real_backend's 64 MiB)")
    p.add_argument("--json", action="store_true", help="print one JSON object (fractions, seconds)")
    p.add_argument("--plot", metavar="FILE.html", help="write an HTML plot (predicted vs measured, speedups, phases)")
    p.add_argument("--phases", action="store_true", help="print every configuration's per-phase times")
    p.add_argument("--a2a-cost", action="store_true",
                   help="print, per testbed and structure, the line of All-to-All phase time against remote bytes per rank-step, "
                        "measured and predicted (what a byte and what the waiting cost in a step), and on shaped one-rank-per-host "
                        "testbeds the least mean rate of a host link over its rank's All-to-All phases; then the campaign's phases as one "
                        "floor with each testbed's bytes inside it, max(W, bytes x s), and after it, W + bytes x s (with several "
                        "campaigns: that fit alone, one line per campaign)")
    p.add_argument("--skew", action="store_true",
                   help="print every configuration's rank skew, measured and predicted: how far apart the ranks "
                        "are in an All-to-All (mean minus min over ranks of the time per call), and its last-arriver "
                        "time (min over ranks of the time per call; moesim.calibrate.skew)")
    p.add_argument("--speedup-split", action="store_true",
                   help="print, per DCCA-over-CDAC pair, the step difference CDAC - DCCA split by phase group "
                        "(All-to-All, all-reduce, compute, time outside the phases), measured and predicted, with "
                        "the speedup error each group alone would cause (moesim.validate.speedupsplit; JSON "
                        "speedup_split)")
    p.add_argument("--measured-phases", metavar="PHASE[,PHASE...]",
                   help="what-if: the speedups the model would predict with these phases predicted exactly "
                        "(their measured times in both structures' steps), e.g. grad_allreduce; indicative only, "
                        "the model books waiting in other phases than the runs do (moesim.validate.counterfactual)")
    p.add_argument("--a2a-start", choices=("together", "pairwise"),
                   help="what-if: All-to-Alls on shared cores start when every rank is there (together) or each "
                        "rank pair when both are (pairwise), whatever the profile says; indicative only, the "
                        "profile's other parameters were fitted with its own setting")
    p.add_argument("--time-slice", type=float, metavar="SECONDS",
                   help="what-if: the shared cores' time slice (0: processor sharing), whatever the profile says; "
                        "indicative only, as --a2a-start")
    p.add_argument("--a2a-cpu", type=float, metavar="SECONDS",
                   help="what-if: the alone CPU work each rank of an All-to-All does on the shared cores once its "
                        "data has landed, whatever the profile says; indicative only, as --a2a-start")
    p.add_argument("--release-spread", type=float, metavar="FRACTION",
                   help="what-if: every All-to-All across hosts, shaped or not, releases its members over this "
                        "fraction of its time (the step release spread, python -m moesim.calibrate.arrivals), "
                        "whatever the profile says; indicative only, as --a2a-start")
    p.add_argument("--compute-first", choices=("on", "off"),
                   help="what-if: with time slices, a released rank's compute goes ahead of the All-to-All CPU "
                        "(--a2a-cpu) of the ranks still in a call for its first slice (on), or queues behind it "
                        "(off), whatever the profile says; indicative only, as --a2a-start")
    p.add_argument("--a2a-cpu-overlap", choices=("on", "off"),
                   help="what-if: a rank's All-to-All CPU runs beside the call's transfer from its arrival (on) "
                        "or after its data has landed (off), whatever the profile says; indicative only, as "
                        "--a2a-start")
    p.add_argument("--continuous-bucket", choices=("on", "off"),
                   help="what-if: shaped links' token buckets accounted continuously (on) or per stage (off), "
                        "whatever the profile says (moesim.network.fluid); indicative only, as --a2a-start")
    p.set_defaults(func=run)


def _engine(args: argparse.Namespace) -> dict:
    out = {}
    if args.a2a_start is not None:
        out["pairwise_a2a"] = args.a2a_start == "pairwise"
    if args.time_slice is not None:
        out["time_slice_s"] = args.time_slice
    if args.a2a_cpu is not None:
        out["a2a_cpu_s"] = args.a2a_cpu
    if args.release_spread is not None:
        out["release_spread"] = args.release_spread
    if args.compute_first is not None:
        out["compute_first"] = args.compute_first == "on"
    if args.a2a_cpu_overlap is not None:
        out["a2a_cpu_overlap"] = args.a2a_cpu_overlap == "on"
    if args.continuous_bucket is not None:
        out["continuous_bucket"] = args.continuous_bucket == "on"
    return out


def _print_what_if(engine: dict | None) -> None:
    if engine:
        print("what-if engine: " + ", ".join(f"{k}={v}" for k, v in engine.items())
              + " (indicative: a profile's parameters were fitted with its own settings)")


def _print_call_times(rows: list[dict]) -> None:
    """Per All-to-All phase and direction, the median over configurations of the time per call of the
    last arriver, the mean rank and the first arriver, measured and predicted."""
    if not rows:
        return
    print("time per All-to-All call by phase, median over the configurations: last arriver, mean over ranks, "
          "first arriver")
    print(f"{'phase':18s} {'last':>9s} {'predicted':>9s} {'mean':>9s} {'predicted':>9s} {'first':>9s} "
          f"{'predicted':>9s}")
    for key in sorted({k for r in rows for k in r}):
        cells = []
        for stat in ("last", "mean", "first"):
            for side in ("measured", "predicted"):
                cells.append(fmt_seconds(float(np.median([r[key][side][stat] for r in rows if key in r]))))
        print(f"{key:18s} " + " ".join(f"{c:>9s}" for c in cells))


def _print_speedup_split(split: list[dict]) -> None:
    """Per pair, CDAC - DCCA per step by phase group, measured/predicted, and the speedup error each
    group alone would cause (:mod:`moesim.validate.speedupsplit`)."""
    from moesim.validate.speedupsplit import LABELS
    groups = [g for g in LABELS if any(g in s for s in split)]
    print("CDAC - DCCA per step, measured/predicted (ms), with the speedup error each group alone would cause "
          "(the rest of both steps as measured)")
    print(f"{'pair':24s} {'role':8s} {'step':>11s} " + " ".join(f"{LABELS[g]:>21s}" for g in groups))
    for s in split:
        cells = []
        for g in groups:
            v = s.get(g)
            alone = None if v is None else v["speedup_error_alone"]
            cells.append("-" if v is None else f"{1e3 * v['measured_s']:+.0f}/{1e3 * v['predicted_s']:+.0f} "
                         + ("(-)" if alone is None else f"({100 * alone:+.1f}%)"))
        step = f"{1e3 * s['step']['measured_s']:+.0f}/{1e3 * s['step']['predicted_s']:+.0f}"
        print(f"{s['label']:24s} {s['role']:8s} {step:>11s} " + " ".join(f"{c:>21s}" for c in cells))


def run(args: argparse.Namespace) -> int:
    from moesim.validate import REAL_BACKEND_BUCKET_BYTES, validate
    from moesim.validate.across import campaign_dirs
    from moesim.validate.counterfactual import check_phases, with_measured_phases
    what_if = None if args.measured_phases is None else check_phases(
        [ph.strip() for ph in args.measured_phases.split(",") if ph.strip()])
    dirs = campaign_dirs(args.runs)
    if dirs is not None:
        return _run_across(args, dirs)
    rep = validate(args.runs, profile=args.profile, topology=args.topology,
                   bucket_bytes=args.bucket_bytes or REAL_BACKEND_BUCKET_BYTES, engine=_engine(args))
    if what_if is not None:
        rep["counterfactual"] = with_measured_phases(rep, what_if)
    if args.plot:
        from moesim.validate.plot import write_plot
        write_plot(args.plot, rep)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    nruns = sum(r.get("repeats", 1) for r in rep["rows"])
    repeated = nruns > len(rep["rows"])
    _print_what_if(rep.get("engine_what_if"))
    print(f"profile {rep['profile']['name']} ({rep['profile']['status']}); {len(rep['rows'])} configuration(s), "
          f"{nruns} run(s)" + ("; measured = median over a configuration's runs, spread = (max - min) / median"
                               if repeated else ""))
    print(f"{'configuration':34s} {'role':8s} {'measured':>10s} {'predicted':>10s} {'APE':>6s}"
          + (f" {'runs':>4s} {'spread':>6s}" if repeated else ""))
    for r in rep["rows"]:
        print(f"{r['label']:34s} {r['role']:8s} {fmt_seconds(r['measured_s']):>10s} {fmt_seconds(r['predicted_s']):>10s} "
              f"{100 * r['ape']:5.1f}%" + (f" {r.get('repeats', 1):4d} {100 * r.get('measured_spread', 0.0):5.1f}%"
                                           if repeated else ""))
        if args.phases or len(rep["rows"]) <= 4:
            parts = [f"{ph} {fmt_seconds(v['measured_s'])}/{fmt_seconds(v['predicted_s'])}"
                     for ph, v in r["phases"].items() if max(v["measured_s"], v["predicted_s"]) > 0.01 * r["measured_s"]]
            print("    phases measured/predicted: " + ", ".join(parts))
    for part in ("heldout", "fit"):
        s = rep[part]
        if s["rows"]:
            print(f"{part:8s}: {s['rows']} configurations, MAPE {100 * s['mape']:.1f}%, max error {100 * s['max_error']:.1f}%")
    if rep["judged_on"] == "all":
        print(f"all     : {rep['all']['rows']} configurations, MAPE {100 * rep['mape']:.1f}%, max error {100 * rep['max_error']:.1f}%")
    if rep["pairs"]:
        print(f"{'DCCA over CDAC speedup':30s} {'role':8s} {'measured':>9s} {'predicted':>9s} {'error':>6s}"
              + ("  per round" if repeated else ""))
        for p in rep["pairs"]:
            runs = p.get("measured_speedup_runs") or []
            print(f"{p['label']:30s} {p['role']:8s} {p['measured_speedup']:8.3f}x {p['predicted_speedup']:8.3f}x "
                  f"{100 * p['error']:5.1f}%" + ("  " + " ".join(f"{x:.2f}" for x in runs) if repeated else ""))
        spread = rep.get("speedup_round_spread")
        if spread:
            print(f"measured speedups from round to round ({spread['pairs']} held-out pairs): relative sd median "
                  f"{100 * spread['median_sd']:.1f}% (max {100 * spread['max_sd']:.1f}%), of a {spread['rounds']}-round "
                  f"estimate about {100 * spread['median_sd_of_mean']:.1f}%")
    if args.a2a_cost and rep["a2a_cost"]:
        print("All-to-All phases per rank-step = intercept + slope x remote bytes (least squares over a testbed's "
              "configurations of one structure)")
        print(f"{'testbed':21s} {'configs':>7s} {'measured':>24s} {'predicted':>24s} {'slope pred/meas':>16s}")
        for c in rep["a2a_cost"]:
            cells = [f"{1e3 * c[s]['intercept_s']:6.1f} ms + {1e9 * c[s]['s_per_byte']:5.2f} ms/MB"
                     for s in ("measured", "predicted")]
            ratio = f"{c['slope_ratio']:.2f}" if c["slope_ratio"] is not None else "-"
            print(f"{c['label']:21s} {c['configurations']:7d} {cells[0]:>24s} {cells[1]:>24s} {ratio:>16s}")
    if args.a2a_cost and rep["a2a_goodput_floor"]:
        print("Shaped host link's least mean rate over its rank's All-to-All phases (one rank per host: remote bytes "
              "x 8 / phase time / tc rate)")
        print(f"{'configuration':34s} {'role':8s} {'measured':>9s} {'predicted':>9s}")
        for g in rep["a2a_goodput_floor"]:
            cells = [f"{g[s]:.2f}" if g[s] is not None else "-" for s in ("measured", "predicted")]
            print(f"{g['label']:34s} {g['role'] or '':8s} {cells[0]:>9s} {cells[1]:>9s}")
    if args.a2a_cost and rep.get("a2a_overlap"):
        _print_overlap(rep["a2a_overlap"])
    skews = [r for r in rep["rows"] if r.get("rank_skew") and r.get("last_arriver")]
    if args.skew and skews:
        print("All-to-All rank skew (mean - min over ranks of the time per call) and last-arriver time (min over "
              "ranks of the time per call), medians over steps and phases")
        print(f"{'configuration':34s} {'skew':>10s} {'predicted':>10s} {'last':>10s} {'predicted':>10s}")
        keys = [(o, k) for o in ("rank_skew", "last_arriver") for k in ("measured_s", "predicted_s")]
        for r in skews:
            print(f"{r['label']:34s} " + " ".join(f"{fmt_seconds(r[o][k]):>10s}" for o, k in keys))
        print(f"{'median':34s} " + " ".join(f"{fmt_seconds(float(np.median([r[o][k] for r in skews]))):>10s}"
                                            for o, k in keys))
        _print_call_times([r["call_times"] for r in skews if r.get("call_times")])
    if args.speedup_split and rep.get("speedup_split"):
        _print_speedup_split(rep["speedup_split"])
    if "counterfactual" in rep:
        cf = rep["counterfactual"]
        s = cf["heldout"]
        print(f"what-if, {', '.join(cf['phases'])} predicted as measured (indicative: waiting is booked differently)")
        print(f"{'DCCA over CDAC speedup':30s} {'role':8s} {'measured':>9s} {'what-if':>9s} {'error':>6s} {'before':>6s}")
        for p in cf["pairs"]:
            print(f"{p['label']:30s} {p['role']:8s} {p['measured_speedup']:8.3f}x {p['predicted_speedup']:8.3f}x "
                  f"{100 * p['error']:5.1f}% {100 * p['error_before']:5.1f}%")
        if s["pairs"]:
            print(f"held-out pairs within {100 * s['target']:.0f}%: {s['within_target']} of {s['pairs']} "
                  f"(before: {s['within_target_before']}); mean error {100 * s['mean_error']:.2f}%, "
                  f"mean signed {100 * s['mean_signed_error']:+.2f}%")
    if "targets_met" in rep:
        t = rep["targets"]
        print(f"targets (MAPE <= {100 * t.get('mape', 0):.0f}%, speedup error <= {100 * t.get('speedup_error', 0):.0f}%): "
              f"{'met' if rep['targets_met'] else 'NOT met'}")
    return 0


def _run_across(args: argparse.Namespace, dirs: list) -> int:
    """Several campaign directories: per campaign and per configuration, over the held-out pairs."""
    from moesim.errors import MoesimError
    from moesim.validate import REAL_BACKEND_BUCKET_BYTES
    from moesim.validate.across import validate_across
    unused = [f"--{n.replace('_', '-')}" for n in ("profile", "topology", "plot", "measured_phases", "phases",
                                                   "skew", "speedup_split") if getattr(args, n)]
    if unused:
        raise MoesimError(f"{', '.join(unused)}: not available when several campaigns are judged together "
                          "(each brings its own profile and topologies; judge one campaign for those; --a2a-cost "
                          "prints each campaign's floor fit)")
    rep = validate_across(dirs, bucket_bytes=args.bucket_bytes or REAL_BACKEND_BUCKET_BYTES, engine=_engine(args))
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    _print_what_if(next(iter(rep["reports"].values())).get("engine_what_if"))
    names = [c["name"] for c in rep["campaigns"]]
    width = max(34, max(len(n) for n in names) + 1)
    print(f"{'campaign':{width}s} {'profile':30s} {'MAPE':>6s} {'max':>6s} {'pairs ok':>9s} {'mean':>6s} "
          f"{'signed':>7s}  worst pair")
    for c in rep["campaigns"]:
        mape = "-" if c["heldout_mape"] is None else f"{100 * c['heldout_mape']:5.1f}%"
        mx = "-" if c["heldout_max_error"] is None else f"{100 * c['heldout_max_error']:5.1f}%"
        mean = "-" if c["mean_error"] is None else f"{100 * c['mean_error']:5.1f}%"
        sgn = "-" if c["mean_signed_error"] is None else f"{100 * c['mean_signed_error']:+6.1f}%"
        worst = "" if c["worst"] is None else f"{c['worst']['label']} {100 * c['worst']['error']:.1f}%"
        print(f"{c['name']:{width}s} {c['profile']:30s} {mape:>6s} {mx:>6s} {c['within_target']:>4d} of {c['pairs']:<2d} "
              f"{mean:>6s} {sgn:>7s}  {worst}")
    print("signed speedup error per held-out pair (predicted / measured - 1), campaigns in the order above")
    print(f"{'configuration':24s} {'over':>4s} {'under':>5s} {'mean':>7s} {'max |e|':>7s}  per campaign")
    for c in rep["configurations"]:
        cells = " ".join(f"{100 * c['signed_errors'][n]:+5.1f}" if n in c["signed_errors"] else "    -" for n in names)
        print(f"{c['label']:24s} {c['over']:4d} {c['under']:5d} {100 * c['mean_signed_error']:+6.1f}% "
              f"{100 * c['max_abs_error']:6.1f}%  {cells}")
    t = rep["total"]
    if t["pairs"]:
        print(f"all {t['campaigns']} campaigns: {t['within_target']} of {t['pairs']} held-out pairs within target; "
              f"mean error {100 * t['mean_error']:.2f}%, mean signed {100 * t['mean_signed_error']:+.2f}%, "
              f"worst {100 * t['max_error']:.1f}%")
    _print_replicate_floor(rep.get("replicate_floor"), t)
    if args.a2a_cost:
        _print_overlap_across(rep["reports"])
    if rep.get("phase_groups"):
        print("where the time goes, held-out configurations (a group's time per step, predicted / measured - 1): "
              + "; ".join(f"{g['group']} mean |e| {100 * g['mean_error']:.1f}%, signed {100 * g['mean_signed_error']:+.1f}% "
                          f"({g['rows']} rows)" for g in rep["phase_groups"]))
    return 0


def _print_replicate_floor(floor: dict | None, model: dict) -> None:
    """Per campaign, the held-out pairs the other campaigns of its machine class predict within target,
    and the total beside the model's."""
    if not floor or not floor["total"]["pairs"]:
        print("replicate floor: no campaign has another of its machine class that measured its configurations")
        return
    print("replicate floor, no model: each held-out pair predicted by the geometric mean of its configuration's "
          "measured speedups in the other campaigns of its machine class (moesim.validate.replicates)")
    width = max(34, max(len(c["name"]) for c in floor["campaigns"]) + 1)
    print(f"{'campaign':{width}s} {'machine class':20s} {'pairs ok':>9s} {'mean':>6s} {'signed':>7s}  worst pair")
    for c in floor["campaigns"]:
        if not c["pairs"]:
            print(f"{c['name']:{width}s} {str(c['machine_class']):20s} {'no other campaign of its class':>9s}")
            continue
        print(f"{c['name']:{width}s} {str(c['machine_class']):20s} {c['within_target']:>4d} of {c['pairs']:<2d} "
              f"{100 * c['mean_error']:5.1f}% {100 * c['mean_signed_error']:+6.1f}%  "
              f"{c['worst']['label']} {100 * c['worst']['error']:.1f}%")
    f = floor["total"]
    line = (f"replicate floor: {f['within_target']} of {f['pairs']} held-out pairs within target, mean error "
            f"{100 * f['mean_error']:.2f}%, worst {100 * f['max_error']:.1f}%")
    if model.get("pairs"):
        line += (f" (the model: {model['within_target']} of {model['pairs']}, mean error {100 * model['mean_error']:.2f}%, "
                 f"worst {100 * model['max_error']:.1f}%)")
    print(line)


def _print_overlap(fit: dict) -> None:
    """The campaign's All-to-All phases as one floor with the bytes inside it or after it."""
    print(f"All-to-All phases per rank-step as one floor W and one byte time per testbed, fitted on the measured "
          f"phases of all {fit['rows']} configurations (moesim.validate.a2acost.overlap_fit)")
    for form, shape in (("overlapping", "max(W, bytes x s)"), ("additive", "W + bytes x s")):
        f = fit[form]
        tbs = ", ".join(f"{t['hosts']}x{t['ranks_per_host']} " + (f"{t['rate_bits'] / 1e6:g}Mbit {t['rate_fraction']:.2f} of the rate"
                                             if t["rate_bits"] else f"unshaped {fmt_si(1.0 / t['s_per_byte'], 'B/s')}")
                        for t in f["testbeds"])
        print(f"  {form:11s} {shape:18s} W {fmt_seconds(f['floor_s']):>8s}  MAPE {100 * f['mape']:5.1f}%  "
              f"max {100 * f['max_error']:5.1f}%  goodput: {tbs}")
    eng = fit["engine"]
    print(f"  the engine's predicted phases: MAPE {100 * eng['mape']:.1f}%, max "
          f"{100 * eng['max_error']:.1f}%; the max form's worst row: {fit['overlapping']['worst']['label']} "
          f"{100 * fit['overlapping']['worst']['error']:+.1f}%")
    if "overlapping" in eng:
        o, a = eng["overlapping"], eng["additive"]
        rates = ", ".join(f"{t['hosts']}x{t['ranks_per_host']} {t['rate_bits'] / 1e6:g}Mbit {t['rate_fraction']:.2f}"
                          for t in o["testbeds"] if t["rate_bits"])
        print(f"  the engine's phases fitted the same way: max form W {fmt_seconds(o['floor_s'])} MAPE "
              f"{100 * o['mape']:.1f}%, additive W {fmt_seconds(a['floor_s'])} MAPE {100 * a['mape']:.1f}%; "
              f"goodput of the rate (max form): {rates}")


def _print_overlap_across(reports: dict) -> None:
    """Per campaign: its All-to-All phases' floor fit (:func:`moesim.validate.a2acost.overlap_fit`)."""
    print("All-to-All phases per rank-step as one floor W with each testbed's bytes inside it, max(W, bytes x s), or "
          "after it, W + bytes x s (all configurations' measured phases; moesim.validate.a2acost.overlap_fit)")
    width = max(34, max(len(n) for n in reports) + 1)
    print(f"{'campaign':{width}s} {'W':>8s} {'max form':>15s} {'additive':>15s} {'engine':>15s}  "
          f"goodput / rate (shaped)   max form's worst row   | the engine's phases: W, max form, additive, goodput")
    for name, rep in reports.items():
        fit = rep.get("a2a_overlap")
        if not fit:
            print(f"{name:{width}s} -")
            continue
        cells = [f"{100 * fit[k]['mape']:5.1f}% / {100 * fit[k]['max_error']:4.1f}%"
                 for k in ("overlapping", "additive", "engine")]
        rates = " ".join(f"{t['hosts']}x{t['ranks_per_host']}@{t['rate_bits'] / 1e6:g}:{t['rate_fraction']:.2f}"
                         for t in fit["overlapping"]["testbeds"] if t["rate_bits"])
        w, eng = fit["overlapping"]["worst"], fit["engine"]
        own = ""
        if "overlapping" in eng:
            own = (f"   | {fmt_seconds(eng['overlapping']['floor_s'])}, {100 * eng['overlapping']['mape']:.1f}%, "
                   f"{100 * eng['additive']['mape']:.1f}%, " + " ".join(
                       f"{t['rate_fraction']:.2f}" for t in eng["overlapping"]["testbeds"] if t["rate_bits"]))
        print(f"{name:{width}s} {fmt_seconds(fit['overlapping']['floor_s']):>8s} {cells[0]:>15s} {cells[1]:>15s} "
              f"{cells[2]:>15s}  {rates}   {w['label']} {100 * w['error']:+.1f}%{own}")
