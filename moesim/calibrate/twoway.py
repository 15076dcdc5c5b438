"""The shaped links' two-way loss (b, c), fitted on isolated All-to-Alls or on trains of them.

A tc-shaped link that carries a rank pair's exchange both ways passes ``1 / (1 + b + c (k - 1))`` of
its rate, k the peer hosts a host exchanges with (``moesim.network.fluid``). The in-situ fit
(:mod:`moesim.calibrate.insitu`) can fit b and c on the fit runs' step times, where they trade
against the waiting in a step; this module fits them on a measurement that holds nothing else: the
``real_backend.patterns`` All-to-All at several sizes per rank pair, on testbeds with 2 and more
hosts (``calibration/patterns/sizesweep-*.csv``). Each repetition follows an idle gap, so it starts
with a full token bucket. Or on trains (``source="trains"``, ``calibration/patterns/train-*.csv``):
the ``all_to_all_train`` pattern, All-to-Alls back to back as a step issues them, simulated as
that many calls each starting when the previous one ends. Every (testbed, size) is simulated with
the calibrated links (efficiency, latencies) and the configured bucket, and (b, c) minimise the
sum of squared log errors of the median repetition: a grid, then a pattern search (diagonal moves
too) that halves its steps. c is fitted only when the sweep holds both two-host testbeds and bigger
ones (which tell b and c apart); else it is 0. With ``rate_exponent`` the loss may fall with the rate:
b and c hold at the sweep's lowest tc rate R0 and scale by ``(R / R0) ** -γ`` at rate R
(``LinkParams.two_way_rate_exponent``), γ ≥ 0 fitted with them (the sweep needs two tc rates).

The loss may also set in only after an onset H (``two_way_onset_s``: full rate for the first H s of
two-way traffic; :mod:`moesim.network.fluid`). :func:`onset_scan` refits (b, c) at each H of a grid,
with or without the bucket, and reports how well each fits; ``python -m moesim.calibrate.twoway``
prints that scan for a profile's links.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from moesim.calibrate.netmodel import LinkParams, simulate_measured
from moesim.calibrate.tables import _read_raw
from moesim.errors import InputFileError, MoesimError

SIZE_SWEEP_PATTERNS = "calibration/patterns/sizesweep-*.csv"
#: back-to-back All-to-Alls (``real_backend.patterns --patterns all_to_all_train``), costed like a step's
TRAIN_PATTERNS = "calibration/patterns/train-*.csv"
#: the pattern each source fits on
SOURCE_PATTERN = {"sizesweep": "all_to_all", "trains": "all_to_all_train"}
PENALTY_GRID = tuple(np.round(np.arange(0.0, 0.71, 0.1), 2))
PEER_GRID = tuple(np.round(np.arange(0.0, 0.51, 0.1), 2))
#: rate exponents γ scanned when the loss may fall with the rate (then refined with b and c, never below 0)
RATE_EXPONENT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
REFINE_ROUNDS = 6


@dataclass
class TwoWayFit:
    """``penalty`` b and ``peer`` c (at ``reference_rate`` bytes/s, scaled by ``(rate / reference_rate)
    ** -rate_exponent``; exponent 0: at every rate); ``rows``: per table the testbed, bytes per rank
    pair, measured and predicted seconds (median repetition); ``files``: the tables."""

    penalty: float
    peer: float
    rows: pd.DataFrame
    files: list
    source: str = "sizesweep"
    rate_exponent: float = 0.0
    reference_rate: float = 0.0

    def record(self) -> dict:
        """What a profile keeps of the fit (``calibration.two_way_from``)."""
        err = np.log(self.rows["predicted_s"] / self.rows["measured_s"])
        what = ("isolated All-to-Alls of several sizes (real_backend.patterns after an idle gap: full token bucket)"
                if self.source == "sizesweep" else
                "trains of back-to-back All-to-Alls (real_backend.patterns all_to_all_train, costed like a step's)")
        rate = ({"two_way_rate_exponent": self.rate_exponent, "two_way_reference_rate": self.reference_rate}
                if self.rate_exponent else {})
        return {"source": self.source, "two_way_penalty": self.penalty, "peer_penalty": self.peer, **rate,
                "tables": self.files, "rows": len(self.rows),
                "max_error": float(np.max(np.abs(np.expm1(err)))), "rms_log_error": float(np.sqrt(np.mean(err ** 2))),
                "meaning": f"b and c of the tc-shaped links fitted on {what} with the simulator, "
                           "then held in the in-situ fit (moesim.calibrate.twoway)"}


def read_size_sweep(paths: Sequence[str | os.PathLike], pattern: str = "all_to_all") -> pd.DataFrame:
    """One row per ``real_backend.patterns`` table: hosts, ranks_per_host, rate_bits, bytes_per_pair,
    calls (All-to-Alls per repetition: 1, or a train's), measured_s (median over its ``pattern``
    repetitions, per call), repetitions, file. Errors name the file."""
    if not paths:
        raise MoesimError("no size-sweep tables given (real_backend.patterns all_to_all at several --bytes "
                          "on shaped testbeds)")
    rows = []
    for path in paths:
        p = Path(path)
        kind, meta, df = _read_raw(p)
        if kind != "patterns":
            raise InputFileError(p, f"is a '{kind}' table, expected a 'patterns' table (real_backend.patterns)")
        tb = meta.get("testbed") or {}
        try:
            hosts, rph, rate = int(tb["hosts"]), int(tb["ranks_per_host"]), float(tb.get("rate_bits") or 0.0)
        except (KeyError, TypeError, ValueError):
            raise InputFileError(p, "meta 'testbed' must give hosts and ranks_per_host (run it on "
                                    "real_backend.testbed)") from None
        if rate <= 0:
            raise InputFileError(p, "meta 'testbed' has no tc rate: the two-way loss is fitted on shaped links only")
        missing = [c for c in ("pattern", "seconds", "bytes_per_pair") if c not in df.columns]
        if missing:
            raise InputFileError(p, f"missing column(s) {', '.join(missing)}")
        a2a = df[df["pattern"].astype(str) == pattern]
        if a2a.empty:
            raise InputFileError(p, f"no {pattern} rows (run real_backend.patterns --patterns {pattern})")
        for col in ("seconds", "bytes_per_pair"):
            vals = pd.to_numeric(a2a[col], errors="coerce")
            bad = vals.isna() | ~np.isfinite(vals) | (vals <= 0)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputFileError(p, f"column '{col}' {pattern} row {i + 1}: not a positive number "
                                        f"({a2a[col].iloc[i]!r})")
        sizes = pd.to_numeric(a2a["bytes_per_pair"]).unique()
        if len(sizes) != 1:
            raise InputFileError(p, f"{pattern} rows of several sizes ({', '.join(map(str, sizes))}): one "
                                    "size per table")
        calls = 1
        if "calls" in a2a.columns:
            counts = pd.to_numeric(a2a["calls"], errors="coerce").unique()
            if len(counts) != 1 or not np.isfinite(counts[0]) or counts[0] < 1:
                raise InputFileError(p, f"column 'calls' of the {pattern} rows must be one positive integer")
            calls = int(counts[0])
        rows.append({"hosts": hosts, "ranks_per_host": rph, "rate_bits": rate, "bytes_per_pair": float(sizes[0]),
                     "calls": calls, "measured_s": float(pd.to_numeric(a2a["seconds"]).median()) / calls,
                     "repetitions": len(a2a), "file": p.name})
    return pd.DataFrame(rows)


def predict(sweep: pd.DataFrame, links: Mapping[str, LinkParams], latency_per_message: float, burst_s: float,
            penalty: float, peer: float, onset_s: float = 0.0, rate_exponent: float = 0.0,
            reference_rate: float = 0.0) -> np.ndarray:
    """Simulated seconds per call of every row of ``sweep`` with b = ``penalty``, c = ``peer`` (at
    ``reference_rate`` bytes/s, scaled by ``(rate / reference_rate) ** -rate_exponent``) and the
    loss's onset ``onset_s`` on the ``nic`` links: its ``calls`` All-to-Alls back to back from a full
    bucket."""
    nic = replace(links["nic"], two_way_penalty=float(penalty), peer_penalty=float(peer), burst_s=float(burst_s),
                  two_way_onset_s=float(onset_s), two_way_rate_exponent=float(rate_exponent),
                  two_way_reference_rate=float(reference_rate) if rate_exponent else 0.0)
    lk = {**links, "nic": nic}
    calls = sweep["calls"] if "calls" in sweep.columns else pd.Series(1, index=sweep.index)
    return np.array([simulate_measured("all_to_all", "world", int(r.hosts), int(r.ranks_per_host),
                                       r.bytes_per_pair * r.hosts * r.ranks_per_host, r.rate_bits, lk,
                                       latency_per_message, 0.0, repeat=int(n)) / int(n)
                     for r, n in zip(sweep.itertuples(), calls)])


def fit_two_way(sweep: pd.DataFrame, links: Mapping[str, LinkParams], latency_per_message: float, burst_s: float,
                penalty_grid=PENALTY_GRID, peer_grid=PEER_GRID, refine: int = REFINE_ROUNDS,
                source: str = "sizesweep", onset_s: float = 0.0, rate_exponent: bool = False,
                exponent_grid=RATE_EXPONENT_GRID) -> TwoWayFit:
    """Fit (b, c) on ``sweep`` (:func:`read_size_sweep`) with the calibrated ``links`` (which must hold
    ``nic``), ``latency_per_message`` (s), a full bucket of ``burst_s`` seconds at the rate and the
    loss's onset ``onset_s`` (s, held); with ``rate_exponent``, (b, c, γ) with b and c at the sweep's
    lowest tc rate (γ over ``exponent_grid``, then refined, never below 0)."""
    if "nic" not in links:
        raise MoesimError("the two-way fit needs calibrated 'nic' links (fit the network microbenchmarks "
                          "of a shaped testbed first)")
    if sweep.empty:
        raise MoesimError("the size sweep holds no row")
    meas = sweep["measured_s"].to_numpy()
    peers_on = bool((sweep["hosts"] == 2).any() and (sweep["hosts"] > 2).any())
    reference_rate = float(sweep["rate_bits"].min()) / 8.0
    if rate_exponent and sweep["rate_bits"].nunique() < 2:
        raise MoesimError(f"a two-way loss that falls with the rate needs tables at two or more tc rates; "
                          f"{', '.join(sweep['file'])} have one")
    cache: dict = {}

    def loss(x) -> float:
        key = tuple(round(v, 9) for v in x)
        if key not in cache:
            pred = predict(sweep, links, latency_per_message, burst_s, key[0], key[1], onset_s=onset_s,
                           rate_exponent=key[2], reference_rate=reference_rate)
            cache[key] = (float(np.sum(np.log(pred / meas) ** 2)), pred)
        return cache[key][0]

    gammas = tuple(float(g) for g in exponent_grid) if rate_exponent else (0.0,)
    best = min(itertools.product(penalty_grid, peer_grid if peers_on else (0.0,), gammas), key=loss)
    steps = (float(np.diff(penalty_grid).min(initial=0.1)) / 2,
             float(np.diff(peer_grid).min(initial=0.1)) / 2 if peers_on else 0.0,
             float(np.diff(sorted(gammas)).min(initial=0.5)) / 2 if rate_exponent else 0.0)
    for _ in range(refine):          # pattern search with diagonal moves (b and c trade along a valley)
        for _ in range(8):
            moves = itertools.product(*[(-1, 0, 1) if h > 0 else (0,) for h in steps])
            cand = min((tuple(max(0.0, v + m * h) for v, m, h in zip(best, mv, steps)) for mv in moves), key=loss)
            if loss(cand) >= loss(best):
                break
            best = cand
        steps = tuple(h / 2 for h in steps)
    b, c, gamma = (round(float(v), 9) for v in best)
    rows = sweep.assign(predicted_s=cache[(b, c, gamma)][1])
    return TwoWayFit(b, c, rows, list(sweep["file"]), source, gamma, reference_rate if gamma else 0.0)


ONSET_GRID_S = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03)


def onset_scan(sweep: pd.DataFrame, links: Mapping[str, LinkParams], latency_per_message: float,
               bursts_s=(0.0,), onset_grid=ONSET_GRID_S, **fit_args) -> pd.DataFrame:
    """For each bucket (s at the rate) in ``bursts_s`` and onset H (s) in ``onset_grid``: (b, c) fitted
    on ``sweep`` with H held (:func:`fit_two_way`), and how well: ``rms_log_error`` and ``max_error``
    (fraction) over the rows, and ``errors`` (signed, per row of ``sweep``)."""
    rows = []
    for burst in bursts_s:
        for h in onset_grid:
            fit = fit_two_way(sweep, links, latency_per_message, float(burst), onset_s=float(h), **fit_args)
            rec = fit.record()
            rows.append({"burst_s": float(burst), "onset_s": float(h), "two_way_penalty": fit.penalty,
                         "peer_penalty": fit.peer, "rms_log_error": rec["rms_log_error"],
                         "max_error": rec["max_error"],
                         "errors": (fit.rows["predicted_s"] / fit.rows["measured_s"] - 1.0).round(4).tolist()})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    """``python -m moesim.calibrate.twoway``: the onset scan of the shaped links' two-way loss."""
    import argparse
    import glob

    from moesim.calibrate.netmodel import TESTBED_TBF_BURST_S
    from moesim.calibrate.profile_io import link_params, raw_profile
    ap = argparse.ArgumentParser(prog="python -m moesim.calibrate.twoway", description=(
        "Fit the tc-shaped links' two-way loss (b, c) on real_backend.patterns tables with the simulator, at "
        "each onset H of a grid (the loss sets in after H s of two-way traffic; 0: at once), with the "
        "testbed's whole token bucket and without one, and print how well each fits."))
    ap.add_argument("--profile", default="cpu-testbed", help="profile whose calibrated links are used "
                                                              "(name or file; default cpu-testbed)")
    ap.add_argument("--source", choices=tuple(SOURCE_PATTERN), default="trains",
                    help="trains of back-to-back All-to-Alls (default) or the isolated size sweep")
    ap.add_argument("--patterns", default=None, help="tables (glob; default: the source's committed ones, "
                                                     "trains without the compute-between-calls variant)")
    ap.add_argument("--onset-grid", default=",".join(str(h) for h in ONSET_GRID_S), help="onsets H (s)")
    ap.add_argument("--rate-exponent", action="store_true",
                    help="instead of the onset scan, one fit with the testbed's bucket of (b, c, gamma): b and c "
                         "at the tables' lowest tc rate, scaled by (rate / that rate) ** -gamma (gamma >= 0)")
    args = ap.parse_args(argv)
    try:
        grid = tuple(float(x) for x in args.onset_grid.split(",") if x)
    except ValueError:
        ap.error(f"--onset-grid: expected seconds separated by commas, got {args.onset_grid!r}")
    if not grid or any(not 0.0 <= h < 1.0 for h in grid):
        ap.error(f"--onset-grid: onsets must lie in [0, 1) s, got {args.onset_grid!r}")
    pattern = args.patterns or (TRAIN_PATTERNS if args.source == "trains" else SIZE_SWEEP_PATTERNS)
    files = sorted(f for f in glob.glob(pattern) if args.patterns or "compute" not in Path(f).name)
    if not files:
        ap.error(f"no tables match {pattern!r} (run from the repository root, or pass --patterns)")
    _, raw = raw_profile(args.profile)
    links = link_params(raw)
    sweep = read_size_sweep(files, SOURCE_PATTERN[args.source])
    if args.rate_exponent:
        fit = fit_two_way(sweep, links, float(raw["network"]["latency_per_message_s"]), TESTBED_TBF_BURST_S,
                          source=args.source, rate_exponent=True)
        rec = fit.record()
        print(f"{len(files)} tables, bucket {TESTBED_TBF_BURST_S * 1e3:.1f} ms: b = {fit.penalty:.3f}, "
              f"c = {fit.peer:.3f} at {fit.reference_rate * 8 / 1e6:.0f} Mbit/s, gamma = {fit.rate_exponent:.3f} "
              f"(rms log error {rec['rms_log_error']:.3f}, max {rec['max_error']:.1%})")
        for r in fit.rows.itertuples():
            print(f"  {r.file}: {r.measured_s * 1e3:.1f} ms measured, {r.predicted_s * 1e3:.1f} ms predicted "
                  f"({r.predicted_s / r.measured_s - 1:+.1%})")
        return 0
    scan = onset_scan(sweep, links, float(raw["network"]["latency_per_message_s"]),
                      bursts_s=(TESTBED_TBF_BURST_S, 0.0), onset_grid=grid)
    print(f"{len(files)} tables: " + ", ".join(sweep["file"]))
    print(f"{'bucket':>7} {'onset':>7} {'b':>6} {'c':>6} {'rms log':>8} {'max':>7}  signed error per table")
    for r in scan.itertuples():
        print(f"{r.burst_s * 1e3:5.1f}ms {r.onset_s * 1e3:5.1f}ms {r.two_way_penalty:6.3f} {r.peer_penalty:6.3f} "
              f"{r.rms_log_error:8.3f} {r.max_error:6.1%}  " + " ".join(f"{e:+.1%}" for e in r.errors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
