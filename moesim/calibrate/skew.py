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

The *last-arriver time* of a step is, per All-to-All phase and direction, the minimum over ranks of a
rank's mean time per call: the time the rank that reached the call last (and so waited for no peer)
still spent in it, its own cost of the call. The last-arriver time of a run is the median of that over
its steps and phases. Step times cannot tell this cost apart from slower compute or more waiting in
each call; the last-arriver time can, so it calibrates the CPU each call costs
(``a2a_cpu_s``, :mod:`moesim.engine.cpupool`).
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


def _last_arriver(per_call: pd.DataFrame, keys: list[str]) -> float:
    """Median over ``keys`` groups of the min over ranks of ``per`` (s)."""
    g = per_call.groupby(keys)["per"].min()
    if g.empty:
        raise MoesimError("no All-to-All phases to measure a last-arriver time from")
    return float(g.median())


def _measured_per_call(df: pd.DataFrame) -> pd.DataFrame:
    """Per step, phase, direction and rank of a ``real_backend.run`` table: the mean time per
    All-to-All call ``per`` (s)."""
    a = df[df["phase"].isin(A2A_PHASES)]
    if a.empty or a["rank"].nunique() < 2:
        raise MoesimError("a rank skew or last-arriver time needs All-to-All phases of at least two ranks")
    g = a.groupby(["step", "phase", "direction", "rank"]).agg(s=("seconds", "sum"), c=("count", "sum")).reset_index()
    g["per"] = g["s"] / g["c"].clip(lower=1)
    return g


def _simulated_per_call(result) -> pd.DataFrame:
    """Per phase, direction and rank of a step simulated rank by rank: the mean time per call ``per``
    (s). A call is what ``real_backend`` times as one: a layer's phase in one direction, so the forward
    dispatch's split-size exchange and its payload All-to-All (two collectives in the engine) are one
    call, as in the runs' ``count`` column."""
    rows = [(sp.phase, sp.direction, c, sp.layer, sp.end - sp.start)
            for c, spans in enumerate(result.class_spans) for sp in spans
            if sp.name.startswith("wait:") and sp.phase in A2A_PHASES]
    d = pd.DataFrame(rows, columns=["phase", "direction", "rank", "layer", "t"])
    if d.empty or d["rank"].nunique() < 2:
        raise MoesimError("a simulated rank skew or last-arriver time needs a step simulated rank by rank "
                          "(shared cores)")
    g = d.groupby(["phase", "direction", "rank"]).agg(s=("t", "sum"), calls=("layer", "nunique")).reset_index()
    g["per"] = g["s"] / g["calls"]
    return g


def measured_skew(df: pd.DataFrame) -> float:
    """Rank skew (s) of a ``real_backend.run`` table's steps (columns step, rank, phase, direction,
    seconds, count)."""
    return _skew(_measured_per_call(df), ["step", "phase", "direction"])


def simulated_skew(result) -> float:
    """Rank skew (s) of a simulated step (:class:`moesim.engine.SimResult` simulated rank by rank)."""
    return _skew(_simulated_per_call(result), ["phase", "direction"])


def measured_last_arriver(df: pd.DataFrame) -> float:
    """Last-arriver time per All-to-All call (s) of a ``real_backend.run`` table's steps."""
    return _last_arriver(_measured_per_call(df), ["step", "phase", "direction"])


def simulated_last_arriver(result) -> float:
    """Last-arriver time per All-to-All call (s) of a step simulated rank by rank."""
    return _last_arriver(_simulated_per_call(result), ["phase", "direction"])


def _call_times(per_call: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per phase and direction: the median over ``keys`` groups of the min (``last``: the last
    arriver's), mean and max (``first``: the first arriver's) over ranks of ``per`` (s)."""
    g = per_call.groupby(keys)["per"].agg(last="min", mean="mean", first="max")
    return g.groupby(["phase", "direction"]).median()


def measured_call_times(df: pd.DataFrame) -> pd.DataFrame:
    """Per All-to-All phase and direction of a ``real_backend.run`` table: the time per call of the last
    arriver (``last``), the mean over ranks (``mean``) and the first arriver (``first``), medians over
    the steps (s); index (phase, direction)."""
    return _call_times(_measured_per_call(df), ["step", "phase", "direction"])


def simulated_call_times(result) -> pd.DataFrame:
    """:func:`measured_call_times` of a step simulated rank by rank."""
    return _call_times(_simulated_per_call(result), ["phase", "direction"])


def pick_closest(candidates, measured: np.ndarray, simulate) -> tuple[float, dict]:
    """The candidate (a time slice, an All-to-All CPU; s) whose simulated observables come closest to
    ``measured`` (one per fit configuration, s) in root mean square; ties go to the smaller candidate.
    ``simulate(q)`` returns the simulated observables at candidate ``q``. Returns (candidate,
    {candidate: rms s})."""
    rms = {}
    for q in sorted(float(x) for x in candidates):
        sim = np.asarray(simulate(q), dtype=float)
        rms[q] = float(np.sqrt(np.mean((sim - measured) ** 2)))
    best = min(rms.values())
    return next(q for q, v in rms.items() if v <= best * (1 + 1e-6) + 1e-12), rms
