"""Study: does sharing the cores explicitly explain the DCCA-over-CDAC speedup error on the testbed?

With a fixed core share, every op is priced at the share the contended GEMM microbenchmark
measures, and the in-situ fit sets the receiver wait and the shaped-link penalties
(:mod:`moesim.calibrate.insitu`). The scheduler probe (``real_backend.schedprobe``) showed that
the ranks' real core share depends on the structure: CDAC's long, rate-limited All-to-Alls release
the ranks at different times, so they compute apart and get more of a core; DCCA's short ones keep
them in step. The engine's shared-core
mode models both ends of that (:class:`moesim.engine.SimOptions` ``cpu_pool``): processor sharing
of the machine's cores among the ranks that compute, and All-to-All members released over the
measured spread (:mod:`moesim.calibrate.release`).

This study refits the in-situ parameters of a campaign's profile twice on its fit runs
(:func:`moesim.calibrate.insitu.fit_insitu`): once with the fixed core share, once with the
shared-core mode (which adds the pool's effective cores K and the alone factor g, a priced op's
work alone per priced second, to the fit), and judges both on the held-out runs with ``moesim
validate`` itself. It writes no profile of the campaign; the report says which model wins where.

    python -m moesim.calibrate.poolstudy calibration/avx2/validation --out calibration/avx2/poolstudy.json
"""

from __future__ import annotations

import argparse
import copy
import glob
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from moesim.calibrate.campaign import DEFAULT_PATTERNS
from moesim.errors import MoesimError

PROG = "moesim.calibrate.poolstudy"


def _judge(campaign: str, profile_dict: dict, tmp: Path, name: str) -> dict:
    from moesim.calibrate.profile_io import write_profile
    from moesim.validate import validate
    path = tmp / f"{name}.yaml"
    write_profile(path, profile_dict)
    rep = validate([campaign], profile=str(path))
    held = [p for p in rep["pairs"] if p["role"] == "heldout"]
    return {"heldout": rep["heldout"], "fit": rep["fit"], "speedup_max_error": rep["speedup_max_error"],
            "pairs_within_10pct": int(sum(p["error"] <= 0.10 for p in held)), "pairs_judged": len(held),
            "pairs": [{k: p[k] for k in ("label", "measured_speedup", "predicted_speedup", "error")} for p in held]}


def run_study(campaign: str, patterns: list[str], profile: str | None = None, fixed_grids: dict | None = None,
              pool_grids: tuple | None = None, refine: int = 3) -> dict:
    """Refit ``campaign``'s profile with the fixed share and with shared cores; judge both.
    ``fixed_grids``: keyword grids for the fixed-share fit (wait_grid, penalty_grid, peer_grid,
    burst_fractions, the last also used by the shared-core fit); ``pool_grids``/``refine``: those of
    the shared-core fit."""
    from moesim.calibrate.insitu import fit_insitu
    from moesim.calibrate.profile_io import raw_profile
    from moesim.validate.core import resolve_inputs
    camp = resolve_inputs([campaign])
    prof_ref = profile or camp.profile
    if not prof_ref:
        raise MoesimError(f"{campaign}: no profile recorded; pass --profile")
    prof, raw = raw_profile(prof_ref)
    if "network" not in raw:
        raise MoesimError(f"{prof.path or prof_ref}: the study needs a measured profile with a network section")
    fit_runs = [s.path for s in camp.runs if s.role == "fit"]
    if not fit_runs or len(fit_runs) == len(camp.runs):
        raise MoesimError(f"{campaign}: the study needs fit and held-out runs (a campaign directory with a manifest)")
    out = {"campaign": str(campaign), "profile": str(prof.path or prof_ref), "patterns": [str(p) for p in patterns]}
    with tempfile.TemporaryDirectory(prefix="moesim-poolstudy-") as tmp:
        for mode in ("fixed_share", "cpu_pool"):
            cal = SimpleNamespace(profile=copy.deepcopy(raw), residuals={})
            if mode == "fixed_share":
                cal = fit_insitu(cal, fit_runs, **(fixed_grids or {}))
            else:
                bursts = {k: v for k, v in (fixed_grids or {}).items() if k == "burst_fractions"}
                cal = fit_insitu(cal, fit_runs, patterns=patterns, pool_grids=pool_grids, refine=refine, **bursts)
            insitu = cal.profile["calibration"]["insitu"]
            params = {k: insitu[k] for k in ("receiver_wait_s", "nic_two_way_penalty", "nic_peer_penalty", "nic_burst_s")}
            if mode == "cpu_pool":
                pool = cal.profile["calibration"]["cpu_pool"]
                params.update({k: pool[k] for k in ("pool_cores", "alone_factor", "release_spread")})
            out[mode] = {"params": params, "evaluations": insitu["evaluations"],
                         **_judge(campaign, cal.profile, Path(tmp), mode)}
    return out


def _floats(text: str) -> tuple:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    from moesim.calibrate import insitu as I
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("campaign", help="a campaign directory (manifest.json names the profile and the fit runs)")
    ap.add_argument("--patterns", action="append", default=None,
                    help=f"real_backend.patterns tables with release columns (glob; repeatable; default {DEFAULT_PATTERNS})")
    ap.add_argument("--profile", help="profile name or file (default: the campaign's)")
    ap.add_argument("--wait-ms", type=_floats, default=None, help="receiver-wait grid of both fits (ms)")
    ap.add_argument("--penalty", type=_floats, default=None, help="two-way penalty grid b of both fits")
    ap.add_argument("--peer", type=_floats, default=None, help="peer-host penalty grid c of both fits")
    ap.add_argument("--bursts", type=_floats, default=None, help="burst fractions (of the tbf bucket) of both fits")
    ap.add_argument("--cores", type=_floats, default=I.POOL_CORES_GRID, help="grid of effective cores K")
    ap.add_argument("--alone", type=_floats, default=I.ALONE_GRID, help="grid of alone factors g in (0, 1]")
    ap.add_argument("--refine", type=int, default=3, help="coordinate-search rounds of the shared-core fit")
    ap.add_argument("--out", help="write the report here (JSON, atomically)")
    args = ap.parse_args(argv)
    from moesim.io import write_json_atomic
    wait_s = tuple(w * 1e-3 for w in args.wait_ms) if args.wait_ms else None
    fixed = {k: v for k, v in (("wait_grid", wait_s), ("penalty_grid", args.penalty), ("peer_grid", args.peer),
                               ("burst_fractions", args.bursts)) if v}
    pool_grids = (args.cores, args.alone, wait_s or I.POOL_WAIT_GRID_S, args.penalty or I.POOL_PENALTY_GRID,
                  args.peer or I.POOL_PEER_GRID)
    try:
        files = sorted({f for pat in (args.patterns or [DEFAULT_PATTERNS]) for f in (glob.glob(pat) or [pat])})
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise MoesimError(f"patterns table not found: {missing[0]}")
        rep = run_study(args.campaign, files, args.profile, fixed, pool_grids, args.refine)
    except MoesimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for mode in ("fixed_share", "cpu_pool"):
        r = rep[mode]
        pr = ", ".join(f"{k} {v:.4g}" for k, v in r["params"].items())
        print(f"{mode:11s} fit MAPE {r['fit']['mape']:.1%} | held-out MAPE {r['heldout']['mape']:.1%}, max "
              f"{r['heldout']['max_error']:.1%} | speedup max {r['speedup_max_error']:.1%}, "
              f"{r['pairs_within_10pct']} of {r['pairs_judged']} pairs within 10 %\n    ({pr})")
        for p in r["pairs"]:
            print(f"    {p['label']:24s} measured {p['measured_speedup']:.3f}  predicted {p['predicted_speedup']:.3f}  "
                  f"({p['error']:.1%})")
    if args.out:
        write_json_atomic(args.out, rep)
        print(f"{PROG}: report -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
