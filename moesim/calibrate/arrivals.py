"""When the ranks enter and leave each All-to-All call: where the rank skew comes from.

``real_backend.run --timeline FILE`` records every timed interval of the measured steps, per rank,
on one clock for the ranks of one machine (the on-one-machine testbed). Each rank makes the same
sequence of calls, so the k-th ``dispatch``/``combine`` interval of a direction in a step is the
same call on every rank. Per call this reports, in seconds:

- ``entry_spread``: last entry minus first entry over the ranks (how far apart they arrive);
- ``exit_spread``: last exit minus first exit (how far apart the call releases them);
- ``last_in_call``: last exit minus last entry (the time the call took once every rank was there);
  ``exit_spread / last_in_call`` is the fraction of it over which the call released its ranks, the
  *step release spread* (:func:`step_release_spread`; the engine's ``step_release_spread``);
- ``inherited``: the previous collective's exit spread (the call before it in the step, the gradient
  all-reduce included); ``gap_spread``: max minus min over the ranks of the time between leaving
  that call and entering this one (the work in between, with any waiting for a core).

An entry spread near ``inherited`` with a small ``gap_spread`` means the ranks arrive apart because
the previous call released them apart; a large ``gap_spread`` means the work between the calls
spreads them. (A backward interval starts when the previous backward phase ends, so a backward
call's entry includes the small local work before its exchange.)

    python -m moesim.calibrate.arrivals TIMELINE.csv [TIMELINE.csv ...] [--campaign DIR]

``--campaign DIR`` also simulates each configuration with that campaign's profile (its measured runs
of the configuration give the topology and traffic) and prints the model's numbers beside.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.errors import InputFileError, MoesimError

PROG = "python -m moesim.calibrate.arrivals"
A2A_PHASES = ("dispatch", "combine")
COLLECTIVE_PHASES = A2A_PHASES + ("grad_allreduce",)
COLUMNS = ("structure", "step", "rank", "seq", "phase", "direction", "start_s", "end_s")


def load_timeline(path: str | Path) -> pd.DataFrame:
    """A ``real_backend.run --timeline`` table, checked: the columns, numeric times, end >= start."""
    path = Path(path)
    try:
        with open(path) as f:
            first, second = f.readline(), f.readline()
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    if not first.startswith("# moesim-real-backend") or "timeline" not in first or not second.startswith("# meta "):
        raise InputFileError(path, "not a real_backend.run --timeline table (missing its '# moesim-real-backend "
                                   "v1 timeline' header)")
    try:
        meta = json.loads(second[len("# meta "):])
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"bad metadata line: {exc.msg}") from None
    try:
        df = pd.read_csv(path, skiprows=2)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputFileError(path, f"unreadable CSV: {exc}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing column(s) {', '.join(missing)}")
    if df.empty:
        raise InputFileError(path, "no intervals")
    for c in ("step", "rank", "seq", "start_s", "end_s"):
        values = pd.to_numeric(df[c], errors="coerce")
        if values.isna().any():
            raise InputFileError(path, f"column '{c}' must be numeric (row {int(values.isna().idxmax()) + 1} is not)")
        df[c] = values
    bad = df["end_s"] < df["start_s"]
    if bad.any():
        raise InputFileError(path, f"row {int(bad.idxmax()) + 1}: end_s before start_s")
    df.attrs["meta"] = meta if isinstance(meta, dict) else {}
    return df


def call_spreads(df: pd.DataFrame, source: str = "timeline") -> pd.DataFrame:
    """One row per All-to-All call (structure, step, phase, direction, k: its order among the step's
    calls of that phase and direction): ``entry_spread``, ``exit_spread``, ``inherited`` and
    ``gap_spread`` (s; the last two NaN for a step's first collective), ``last_in_call`` (s) and
    ``mean_wait`` (s: mean over the ranks of the time until the last one arrived)."""
    coll = df[df["phase"].isin(COLLECTIVE_PHASES)].sort_values(["structure", "step", "rank", "seq"])
    rows = []
    for (structure, step), g in coll.groupby(["structure", "step"], sort=True):
        per_rank = {r: gr for r, gr in g.groupby("rank")}
        counts = {r: len(gr) for r, gr in per_rank.items()}
        if len(set(counts.values())) != 1:
            raise InputFileError(source, f"{structure} step {step}: the ranks timed different numbers of "
                                         f"collective calls ({counts})")
        order = next(iter(per_rank.values()))[["phase", "direction"]].to_numpy()
        for r, gr in per_rank.items():
            if not (gr[["phase", "direction"]].to_numpy() == order).all():
                raise InputFileError(source, f"{structure} step {step}: rank {r} made its collective calls in "
                                             f"another order")
        start = np.array([gr["start_s"].to_numpy() for gr in per_rank.values()])   # ranks x calls
        end = np.array([gr["end_s"].to_numpy() for gr in per_rank.values()])
        seen: dict = {}
        for j, (phase, direction) in enumerate(order):
            k = seen.get((phase, direction), 0)
            seen[(phase, direction)] = k + 1
            if phase not in A2A_PHASES:
                continue
            gap = start[:, j] - end[:, j - 1] if j > 0 else None
            rows.append({"structure": structure, "step": int(step), "phase": phase, "direction": direction, "k": k,
                         "ranks": start.shape[0],
                         "entry_spread": float(np.ptp(start[:, j])), "exit_spread": float(np.ptp(end[:, j])),
                         "last_in_call": float(end[:, j].max() - start[:, j].max()),
                         "inherited": float(np.ptp(end[:, j - 1])) if j > 0 else float("nan"),
                         "gap_spread": float(np.ptp(gap)) if gap is not None else float("nan"),
                         "mean_wait": float(np.mean(start[:, j].max() - start[:, j]))})
    if not rows:
        raise InputFileError(source, "no All-to-All calls (dispatch, combine) in the timeline")
    return pd.DataFrame(rows)


def summary(spreads: pd.DataFrame) -> pd.DataFrame:
    """Per structure, phase and direction: the medians over the calls of :func:`call_spreads` (s)."""
    cols = ["entry_spread", "exit_spread", "inherited", "gap_spread", "mean_wait"]
    return spreads.groupby(["structure", "phase", "direction"])[cols].median()


def step_release_spread(spreads: pd.DataFrame) -> tuple[float, int]:
    """The fraction of an All-to-All's time (from the last rank's entry to the last exit) over which it
    releases its ranks: the median over the calls of ``exit_spread / last_in_call`` (calls of
    :func:`call_spreads` with ``last_in_call`` > 0), and the number of calls it is the median of. This
    is the engine's ``step_release_spread`` (:mod:`moesim.engine.netbridge`: release position j of n
    leaves at ``T - s (T - start) (n - 1 - j) / (n - 1)``, the last at the end ``T``)."""
    ok = spreads[spreads["last_in_call"] > 0]
    if ok.empty:
        raise MoesimError("no All-to-All call with a positive time after its last entry")
    frac = (ok["exit_spread"] / ok["last_in_call"]).clip(upper=1.0)
    return float(frac.median()), int(len(frac))


def simulated_timeline(result, structure: str) -> pd.DataFrame:
    """The collective calls of a step simulated rank by rank (shared cores), as a timeline table: per
    rank, each call from when the rank reached it to when it left (its wait span; the forward
    dispatch's split-size exchange and payload, two collectives in the engine, are one call as in
    ``real_backend``'s timing)."""
    rows = []
    for rank, spans in enumerate(result.class_spans):
        calls: dict = {}
        for sp in spans:
            if sp.name.startswith("wait:") and sp.phase in COLLECTIVE_PHASES:
                key = (sp.phase, sp.direction, sp.layer)
                a, b = calls.get(key, (sp.start, sp.end))
                calls[key] = (min(a, sp.start), max(b, sp.end))
        for seq, ((phase, direction, _), (a, b)) in enumerate(sorted(calls.items(), key=lambda kv: kv[1])):
            rows.append({"structure": structure, "step": 0, "rank": rank, "seq": seq, "phase": phase,
                         "direction": direction, "start_s": a, "end_s": b})
    if len(result.class_spans) < 2 or not rows:
        raise MoesimError("a simulated timeline needs a step simulated rank by rank (shared cores)")
    return pd.DataFrame(rows)


def campaign_config(measured: pd.DataFrame, structure: str, path: str | Path) -> str:
    """The campaign configuration name (``HxR-RATE-STRUCTURE-kK``) of a loaded timeline's ``structure``."""
    meta = measured.attrs.get("meta") or {}
    tb, top_k = meta.get("testbed") or {}, (meta.get("config") or {}).get("moe", {}).get("top_k")
    if not tb or top_k is None:
        raise InputFileError(path, "its metadata names no testbed or top-k (a testbed run's timeline is needed)")
    rate = "none" if not tb.get("rate_bits") else f"{tb['rate_bits'] / 1e6:g}mbit"
    return f"{tb['hosts']}x{tb['ranks_per_host']}-{rate}-{structure}-k{top_k}"


def model_timeline(timeline: str | Path, campaign: str | Path) -> pd.DataFrame:
    """For each structure of a ``--timeline`` table, the same configuration simulated with a campaign's
    profile (its measured runs of that configuration: topology and traffic), as a timeline table."""
    from moesim.calibrate.configsim import CampaignSimulator
    measured = load_timeline(timeline)
    sim = CampaignSimulator(campaign)
    parts = []
    for structure in sorted(measured["structure"].unique()):
        config = campaign_config(measured, structure, timeline)
        res = sim.simulate(config)
        if res is None:
            raise MoesimError(f"{campaign}: the campaign has no run of {config}")
        parts.append(simulated_timeline(res, structure))
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("timelines", nargs="+", metavar="TIMELINE.csv", help="real_backend.run --timeline tables")
    ap.add_argument("--campaign", metavar="DIR",
                    help="also simulate each configuration with this campaign's profile and print the model's "
                         "numbers under the measured ones")
    args = ap.parse_args(argv)
    try:
        every = []
        for path in args.timelines:
            calls = call_spreads(load_timeline(path), path)
            every.append(calls)
            s = summary(calls)
            model = summary(call_spreads(model_timeline(path, args.campaign), "model")) if args.campaign else None
            print(f"{path}: medians over the All-to-All calls, ms (entry/exit spread: last minus first rank; "
                  f"inherited: the previous collective's exit spread; gap: spread of the time since it; wait: "
                  f"mean over the ranks of the time until the last one arrived)")
            print(f"{'structure':10s}{'phase':10s}{'dir':5s}{'':9s}{'entry':>8s}{'exit':>8s}{'inherited':>11s}"
                  f"{'gap':>8s}{'wait':>8s}")
            for key, r in s.iterrows():
                rows = [("measured", r)] + ([("model", model.loc[key])] if model is not None and key in model.index else [])
                for label, v in rows:
                    print(f"{key[0]:10s}{key[1]:10s}{key[2]:5s}{label:>9s} {1e3 * v.entry_spread:7.2f}"
                          f"{1e3 * v.exit_spread:8.2f}{1e3 * v.inherited:11.2f}{1e3 * v.gap_spread:8.2f}"
                          f"{1e3 * v.mean_wait:8.2f}")
        spread, n = step_release_spread(pd.concat(every, ignore_index=True))
        print(f"step release spread: {spread:.3f} (median over {n} calls of exit spread / time from the last "
              f"entry to the last exit; campaign --release-spread)")
    except MoesimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:      # the reader (e.g. head) stopped early
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
