"""``moesim dashboard``: one self-contained interactive HTML dashboard from a sweep's results."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard", help="write an interactive, offline HTML dashboard of a sweep's results",
        description="Build one self-contained HTML file (plotly.js inlined, works offline) from a results table "
                    "written by 'moesim sweep': step-time breakdown, speedup vs network bandwidth, communication "
                    "volume, inference latency and throughput, cost per 1B tokens vs network option, a timeline "
                    "of one step and per-link utilisation, with controls for model, top-k, r and mode.")
    p.add_argument("results", metavar="RESULTS", help="results table (.parquet or .csv) from 'moesim sweep'")
    p.add_argument("-o", "--out", default="dashboard.html", help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--detail", type=int, default=3,
                   help="scenarios to re-simulate for the timeline and link views (default: %(default)s; 0 = none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moesim.dashboard import write_dashboard
    path = write_dashboard(args.results, args.out, title=args.title, detail=args.detail)
    print(f"dashboard: {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0
