"""``moesim sweep``: run a what-if sweep (grid/list of scenarios) into one tidy table."""
from __future__ import annotations

import argparse
import signal
import sys

from moesim.errors import MoesimError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a grid/list of what-if scenarios (resumable, parallel) into a Parquet table",
        description="Expand SWEEP.yaml (base + grid and/or list over config keys, topology parameters, profile, "
                    "All-to-All algorithm and cost inputs), simulate every scenario in parallel and write one "
                    "tidy row per scenario. Finished scenarios are journalled next to the output, so running the "
                    "same command again after an interruption finishes only the missing ones.")
    p.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (see README: 'Sweep files')")
    p.add_argument("--out", "-o", default="results.parquet",
                   help="results table: .parquet (needs pyarrow) or .csv (default: %(default)s)")
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="local worker processes (default: CPU count; 1 = in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask distributed cluster, e.g. tcp://10.0.0.5:8786 (workers need moesim "
                        "installed and access to files the sweep names)")
    p.add_argument("--connect-timeout", type=float, default=20.0, metavar="SECONDS",
                   help="how long to try reaching the Dask scheduler (default: %(default)s)")
    p.add_argument("--retry-errors", action="store_true", help="run again the scenarios whose row says error")
    p.add_argument("--fresh", action="store_true", help="forget finished scenarios and run everything")
    p.add_argument("--check", action="store_true",
                   help="only validate: expand the sweep and build every scenario's config and topology")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dashboard", metavar="HTML", help="also write the dashboard of the results to HTML")
    p.set_defaults(func=run)


def _sigterm(signum, frame):  # pragma: no cover - exercised by the interruption test
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from moesim.sweep import check_sweep, load_sweep, run_sweep
    spec = load_sweep(args.sweep)
    if args.check:
        bad = check_sweep(spec)
        print(f"{spec.name}: {len(spec.scenarios)} scenarios"
              + (f" ({spec.duplicates} duplicates merged)" if spec.duplicates else "")
              + (f", {len(bad)} invalid" if bad else ", all valid"))
        for sc, err in bad:
            print(f"  scenario {sc.index} ({sc.id}): {err}")
        return 1 if bad else 0
    if args.scheduler and args.jobs:
        raise MoesimError("--jobs and --scheduler exclude each other (the Dask cluster decides the parallelism)")
    signal.signal(signal.SIGTERM, _sigterm)
    rep = run_sweep(spec, args.out, jobs=args.jobs, scheduler=args.scheduler, retry_errors=args.retry_errors,
                    fresh=args.fresh, progress=not args.no_progress, connect_timeout=args.connect_timeout)
    ran = f"ran {rep.ran}" + (f", {rep.already_done} already finished" if rep.already_done else "")
    print(f"{spec.name}: {rep.total} scenarios ({ran}) in {rep.elapsed_s:.1f} s: {rep.ok} ok, {rep.errors} error(s)"
          + (f", {rep.missing} not run" if rep.missing else "") + f"; wrote {rep.out}")
    for msg in rep.error_messages[:10]:
        print(f"  {msg}")
    if len(rep.error_messages) > 10:
        print(f"  ... and {len(rep.error_messages) - 10} more (see the 'error' column)")
    if args.dashboard:
        from moesim.dashboard import write_dashboard
        write_dashboard(args.out, args.dashboard)
        print(f"dashboard: {args.dashboard}")
    if rep.missing:
        print(f"moesim sweep: {rep.missing} scenarios were not run (worker processes kept dying); "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
