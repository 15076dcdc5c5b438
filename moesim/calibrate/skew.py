"""How far apart the ranks of a step leave their All-to-Alls: the rank skew, measured and simulated.

A rank's All-to-All phase (dispatch, combine) lasts from the moment it reaches the collective until it
has its data back. Ranks that reach it early wait for the last one, so in every call the phase times of
the ranks differ by how far apart they arrived (and were released). The *skew* of a step is, per
All-to-All phase and direction, the mean over ranks minus the minimum over ranks of a rank's mean time
per call (seconds), and the skew of a run is the median of that over its steps and phases. The
simulator's wait spans give the same quantity for a simulated step, with the same estimator.

On the testbed, R ranks on C < R cores reach each All-to-All apart because the kernel runs some ranks
while others wait for a core; processor sharing (every rank progressing together) puts them there at
once. The skew is an observable that step times do not show, so it calibrates the CPU scheduler of
:mod:`moesim.engine.cpupool` (its time slice) apart from the fit of step times
(:func:`moesim.calibrate.insitu.fit_insitu`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.errors import MoesimError
from moesim.validate.a2acost import A2A_PHASES


def _skew(per_call: pd.DataFrame, keys: list[str]) -> float:
    """Median over ``keys`` groups of (mean - min over ranks) of ``per`` (s)."""
    g = per_call.groupby(keys)["per"].agg(["min", "mean"])
    if g.empty:
        raise MoesimError("no All-to-All phases to measure a rank skew from")
    return float((g["mean"] - g["min"]).median())


def measured_skew(df: pd.DataFrame) -> float:
    """Rank skew (s) of a ``real_backend.run`` table's steps (columns step, rank, phase, direction,
    seconds, count)."""
    a = df[df["phase"].isin(A2A_PHASES)]
    if a.empty or a["rank"].nunique() < 2:
        raise MoesimError("a rank skew needs All-to-All phases of at least two ranks")
    g = a.groupby(["step", "phase", "direction", "rank"]).agg(s=("seconds", "sum"), c=("count", "sum")).reset_index()
    g["per"] = g["s"] / g["c"].clip(lower=1)
    return _skew(g, ["step", "phase", "direction"])


def simulated_skew(result) -> float:
    """Rank skew (s) of a simulated step (:class:`moesim.engine.SimResult` simulated rank by rank).

    A call is what ``real_backend`` times as one: a layer's phase in one direction, so the forward
    dispatch's split-size exchange and its payload All-to-All (two collectives in the engine) are one
    call, as in the runs' ``count`` column."""
    rows = [(sp.phase, sp.direction, c, sp.layer, sp.end - sp.start)
            for c, spans in enumerate(result.class_spans) for sp in spans
            if sp.name.startswith("wait:") and sp.phase in A2A_PHASES]
    d = pd.DataFrame(rows, columns=["phase", "direction", "rank", "layer", "t"])
    if d.empty or d["rank"].nunique() < 2:
        raise MoesimError("a simulated rank skew needs a step simulated rank by rank (shared cores)")
    g = d.groupby(["phase", "direction", "rank"]).agg(s=("t", "sum"), calls=("layer", "nunique")).reset_index()
    g["per"] = g["s"] / g["calls"]
    return _skew(g, ["phase", "direction"])


def pick_time_slice(candidates, measured: np.ndarray, simulate_skews) -> tuple[float, dict]:
    """The candidate time slice (s) whose simulated skews come closest to ``measured`` (one per fit
    configuration, s) in root mean square; ties go to the shorter slice. ``simulate_skews(q)`` returns
    the simulated skews at slice ``q``. Returns (slice, {slice: rms s})."""
    rms = {}
    for q in sorted(float(x) for x in candidates):
        sim = np.asarray(simulate_skews(q), dtype=float)
        rms[q] = float(np.sqrt(np.mean((sim - measured) ** 2)))
    best = min(rms.values())
    return next(q for q, v in rms.items() if v <= best * (1 + 1e-6) + 1e-12), rms
