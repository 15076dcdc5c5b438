"""Where a testbed rank's main thread spends its CPU in a step, phase by phase, against the model.

``real_backend.run --timeline FILE`` records, with every timed interval, the CPU time the rank's
main thread spent in it (``cpu_s``, ``time.thread_time``). That thread runs the forward, the
backward (CPU autograd runs on the calling thread) and the collective calls; gloo's own threads
(its TCP loop and workers) are not in it. Per structure and phase this reports, per rank-step (mean
over the measured steps and the ranks), in seconds:

- ``wall_s``: the phase's time (its intervals summed), as ``real_backend.run`` tables time it;
- ``cpu_s``: the main thread's CPU in it; ``cpu_s / wall_s`` is the share of the phase it ran;
- with ``--campaign DIR``, ``model_s``: the alone work the campaign's model books for the phase (its
  compute ops' priced seconds x the profile's alone factor, and the All-to-All CPU per call where
  the profile has one), for the configuration simulated with the campaign's profile like its
  committed runs of it; and ``cpu_s - model_s``.

A ``(between)`` row holds the step's CPU outside every phase interval (zeroing gradients, the loss,
the Python between phases) and ``step`` the whole step. The phases' rows add up to ``step``.

    python -m moesim.calibrate.phasecpu TIMELINE.csv [TIMELINE.csv ...] [--campaign DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.calibrate.arrivals import campaign_config, load_timeline
from moesim.errors import InputFileError, MoesimError
from moesim.phases import COMM_PHASES, PHASES

PROG = "python -m moesim.calibrate.phasecpu"
BETWEEN = "(between)"


def load_cpu_timeline(path: str | Path) -> pd.DataFrame:
    """A ``--timeline`` table that records the main thread's CPU per interval (``cpu_s``), checked."""
    df = load_timeline(path)
    if "cpu_s" not in df.columns:
        raise InputFileError(path, "no 'cpu_s' column: the table predates the main thread's CPU per interval "
                                   "(re-run real_backend.run --timeline)")
    cpu = pd.to_numeric(df["cpu_s"], errors="coerce")
    if cpu.isna().any():
        raise InputFileError(path, f"column 'cpu_s' must be numeric (row {int(cpu.isna().idxmax()) + 1} is not; "
                                   f"a GPU run records no host CPU per interval)")
    if (cpu < 0).any():
        raise InputFileError(path, f"row {int((cpu < 0).idxmax()) + 1}: negative cpu_s")
    df["cpu_s"] = cpu
    return df


def phase_cpu(df: pd.DataFrame) -> pd.DataFrame:
    """Per structure and phase (and ``(between)``, ``step``): wall and main-thread CPU seconds per
    rank-step, the mean over the table's (step, rank) pairs. Columns: structure, phase, wall_s, cpu_s."""
    df = df.assign(wall_s=df["end_s"] - df["start_s"])
    keys = ["structure", "step", "rank"]
    steps = df[df["phase"] == "step"].set_index(keys)[["wall_s", "cpu_s"]]
    if steps.empty:
        raise MoesimError("the timeline has no 'step' intervals")
    if steps.index.duplicated().any():
        raise MoesimError("the timeline has more than one 'step' interval for a (structure, step, rank)")
    inner = df[df["phase"] != "step"].groupby(keys + ["phase"])[["wall_s", "cpu_s"]].sum()
    between = steps.sub(inner.groupby(level=keys).sum(), fill_value=0.0)
    parts = [inner.reset_index(),
             between.reset_index().assign(phase=BETWEEN),
             steps.reset_index().assign(phase="step")]
    per = pd.concat(parts, ignore_index=True)
    # a phase a rank-step lacks counts as 0 there (every rank-step has its step interval)
    full = per.pivot_table(index=keys, columns="phase", values=["wall_s", "cpu_s"], fill_value=0.0, aggfunc="sum")
    out = full.groupby(level="structure").mean().stack(level="phase", future_stack=True).reset_index()
    order = {p: i for i, p in enumerate(PHASES + (BETWEEN, "step"))}
    out["_o"] = out["phase"].map(lambda p: order.get(p, len(order)))
    return out.sort_values(["structure", "_o", "phase"]).drop(columns="_o").reset_index(drop=True)[
        ["structure", "phase", "wall_s", "cpu_s"]]


def model_alone_work(result) -> dict[str, float]:
    """{phase: alone CPU seconds per rank-step} the simulated step books: its compute ops' priced
    seconds x the alone factor, plus the All-to-All CPU per call (shared cores), mean over the ranks."""
    from moesim.workload.ops import Compute, Wait
    prog, classes = result.program, result.classes
    factor = result.cpu_pool[1] if result.cpu_pool else 1.0
    a2a_cpu = float(getattr(result.profile.device, "a2a_cpu_s", 0.0) or 0.0) if result.cpu_pool else 0.0
    phase_of = [it.phase for it in prog.items if isinstance(it, Compute)]
    totals: dict[str, float] = {}
    for c in range(classes.count):
        weight = len(classes.members[c]) / prog.world
        for ph, d in zip(phase_of, classes.durations[c]):
            totals[ph] = totals.get(ph, 0.0) + weight * float(d) * factor
    if a2a_cpu > 0:
        members = {cid: {int(r) for g in spec.groups for r in g}
                   for cid, spec in prog.collectives.items() if spec.op == "all_to_all"}
        for it in prog.items:
            if isinstance(it, Wait) and it.cid in members:
                share = len(members[it.cid]) / prog.world
                totals[it.phase] = totals.get(it.phase, 0.0) + a2a_cpu * share
    return totals


def check_same_model(df: pd.DataFrame, cfg, path: str | Path, config: str) -> None:
    """Refuse a timeline whose run used another model than the campaign's runs of ``config`` (the
    metadata's config against ``cfg``: model, MoE, parallel layout and batch; structure and seed
    aside): the model's work would be another model's."""
    meta_cfg = (df.attrs.get("meta") or {}).get("config") or {}
    want = cfg.to_dict()
    diffs = [f"{sec}.{k} = {v!r} (the campaign's: {want[sec][k]!r})"
             for sec in ("model", "moe", "parallel", "run") for k, v in (meta_cfg.get(sec) or {}).items()
             if k not in ("structure", "seed") and k in (want.get(sec) or {}) and want[sec][k] != v]
    if diffs:
        raise InputFileError(path, f"its run is not the campaign's model for {config}: " + "; ".join(diffs[:4]))


def report(paths: list, campaign: str | Path | None = None) -> pd.DataFrame:
    """:func:`phase_cpu` of each timeline, labelled by its configuration, with the model's alone work
    beside (``model_s``, NaN without a campaign)."""
    sim = None
    if campaign is not None:
        from moesim.calibrate.configsim import CampaignSimulator
        sim = CampaignSimulator(campaign)
    parts = []
    for path in paths:
        df = load_cpu_timeline(path)
        table = phase_cpu(df)
        table.insert(0, "timeline", Path(path).name)
        table["model_s"] = np.nan
        for structure in table["structure"].unique():
            config = campaign_config(df, structure, path)
            table.loc[table["structure"] == structure, "config"] = config
            if sim is None:
                continue
            res = sim.simulate(config)
            if res is None:
                raise MoesimError(f"{campaign}: the campaign has no run of {config}")
            check_same_model(df, res.cfg, path, config)
            work = model_alone_work(res)
            rows = table["structure"] == structure
            table.loc[rows, "model_s"] = table.loc[rows, "phase"].map(
                lambda p: work.get(p, 0.0) if p not in (BETWEEN, "step") else
                (0.0 if p == BETWEEN else sum(work.values())))
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("timelines", nargs="+", metavar="TIMELINE.csv",
                    help="real_backend.run --timeline tables with the main thread's CPU (cpu_s)")
    ap.add_argument("--campaign", default=None, metavar="DIR",
                    help="campaign directory: the model's alone work per phase beside (its profile, its runs' "
                         "topology and traffic)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (seconds)")
    args = ap.parse_args(argv)
    try:
        table = report(args.timelines, args.campaign)
    except MoesimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(table.to_json(orient="records", indent=2))
        return 0
    model = args.campaign is not None
    for config, part in table.groupby("config", sort=False):
        print(f"{config} ({part['timeline'].iloc[0]}), ms per rank-step; CPU: the main thread's"
              + ("; model: the alone work it books" if model else ""))
        head = f"  {'phase':22s} {'wall':>7s} {'CPU':>7s} {'CPU/wall':>8s}"
        print(head + (f" {'model':>7s} {'CPU-model':>9s}" if model else ""))
        for r in part.itertuples():
            share = r.cpu_s / r.wall_s if r.wall_s > 0 else float("nan")
            tag = " (comm)" if r.phase in COMM_PHASES else ""
            line = f"  {r.phase + tag:22s} {1e3 * r.wall_s:7.1f} {1e3 * r.cpu_s:7.1f} {share:8.2f}"
            if model:
                line += f" {1e3 * r.model_s:7.1f} {1e3 * (r.cpu_s - r.model_s):+9.1f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
