"""Predicted vs measured: simulate every measured run (its config from the table's metadata, its
testbed topology with the profile's calibrated links) and compare step and phase times.

Measured numbers from a ``real_backend.run`` table: the step time is the median over steps of the
mean over ranks of the ``step`` rows; a phase's time is the median over steps of the mean over
ranks of the phase's seconds (forward and backward summed). Predicted: ``SimResult.step_time_s``
and ``SimResult.mean_breakdown_s`` (the mean over ranks as well; waits count to the collective's
phase).

Repeated runs of one configuration form one row: its measured times are the medians over the
runs, and each DCCA-over-CDAC speedup is the ratio of the medians (the per-round ratios are
reported beside it). A directory argument stands for a committed campaign: its ``manifest.json`` names the profile, each
run's topology and its role (``fit`` or ``heldout``); the headline MAPE and max error are over the
held-out runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from moesim.calibrate.netmodel import testbed_graph, upgrade_testbed_topology
from moesim.calibrate.profile_io import raw_profile
from moesim.calibrate.tables import Table, read_table, testbed_of
from moesim.config import load_config
from moesim.errors import InputFileError, MoesimError
from moesim.validate.a2acost import a2a_cost, goodput_floor, overlap_fit, remote_bytes_per_step
from moesim.validate.speedupsplit import speedup_split
from moesim.validate.traffic import measured_dispatch_copies
from moesim.workload.ops import PHASES

MANIFEST = "manifest.json"
#: real_backend.comm.sync_gradients reduces gradients after the backward pass in buckets of this size
REAL_BACKEND_BUCKET_BYTES = float(64 << 20)


@dataclass
class RunSpec:
    path: Path
    topology: Path | None = None
    role: str = "heldout"


@dataclass
class Campaign:
    runs: list
    profile: str | None = None
    manifest: dict = field(default_factory=dict)
    directory: Path | None = None


def load_manifest(directory: Path) -> Campaign:
    m = directory / MANIFEST
    try:
        data = json.loads(m.read_text())
    except FileNotFoundError:
        raise InputFileError(m, "no manifest: a campaign directory needs manifest.json (written by "
                                "moesim.calibrate.campaign), or pass the run CSV files themselves") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(m, f"malformed JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not data["runs"]:
        raise InputFileError(m, "expected an object with a non-empty 'runs' list")
    runs = []
    for i, r in enumerate(data["runs"]):
        if not isinstance(r, dict) or "file" not in r:
            raise InputFileError(m, f"runs[{i}] needs a 'file'")
        role = r.get("role", "heldout")
        if role not in ("fit", "heldout"):
            raise InputFileError(m, f"runs[{i}].role must be 'fit' or 'heldout', got {role!r}")
        runs.append(RunSpec(directory / r["file"], (directory / r["topology"]) if r.get("topology") else None, role))
    prof = data.get("profile")
    return Campaign(runs, str((directory / prof).resolve()) if prof else None, data, directory)


def resolve_inputs(paths: Sequence[str | os.PathLike]) -> Campaign:
    """Run files, or one campaign directory (with manifest.json), or a mix of files and directories
    of CSVs (every run then counts as held-out)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise MoesimError("give run tables (CSV from real_backend.run) or a campaign directory")
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / MANIFEST).is_file():
        return load_manifest(paths[0])
    runs = []
    for p in paths:
        if p.is_dir():
            found = sorted(x for x in p.glob("*.csv"))
            if not found:
                raise MoesimError(f"{p}: no manifest.json and no *.csv run tables")
            runs.extend(RunSpec(x) for x in found)
        else:
            runs.append(RunSpec(p))
    return Campaign(runs)


def measured_times(table: Table) -> tuple[float, dict, int]:
    """(step seconds, {phase: seconds}, steps) of a run table (see the module docstring)."""
    df = table.df
    per_rank = df.groupby(["step", "rank", "phase"])["seconds"].sum()
    per_step = per_rank.groupby(level=["step", "phase"]).mean()
    med = per_step.groupby(level="phase").median()
    step = float(med.get("step", float("nan")))
    phases = {p: float(med[p]) for p in med.index if p != "step"}
    return step, phases, int(df["step"].nunique())


def topology_for(spec: RunSpec, table: Table, override: str | None = None):
    from moesim.topology import Topology, load_topology
    if override:
        return load_topology(override), str(override)
    cand = spec.topology
    if cand is None:
        sib = spec.path.with_suffix("").as_posix() + ".topology.json"
        cand = Path(sib) if Path(sib).is_file() else None
    cores = table.meta.get("cpu_count")
    if cand is not None:
        topo = upgrade_testbed_topology(load_topology(cand))
        # every rank of the on-one-machine testbed shares its cores (files written before the
        # testbed recorded them take the run's own cpu_count)
        if "shared_cpu_cores" not in topo.graph.graph and "tc_rate_bits" in topo.graph.graph and cores:
            topo.graph.graph["shared_cpu_cores"] = int(cores)
        return topo, str(cand)
    tb = testbed_of(table.meta)
    return Topology(testbed_graph(tb["hosts"], tb["ranks_per_host"], tb["rate_bits"] or None, cores),
                    source="<testbed from table meta>"), "(generated from the table's testbed meta)"


def _label(cfg, tb: dict) -> str:
    rate = f"{tb['rate_bits'] / 1e6:g}Mbit" if tb["rate_bits"] else "unshaped"
    return f"{tb['hosts']}x{tb['ranks_per_host']} {rate} {cfg.moe.structure} k{cfg.moe.top_k}"


def config_key(cfg, tb: dict) -> tuple:
    """What makes two runs the same configuration: testbed shape and rate, and the whole config."""
    return (tb["hosts"], tb["ranks_per_host"], tb["rate_bits"],
            json.dumps({k: v for k, v in cfg.to_dict().items() if k != "moe"}, sort_keys=True),
            json.dumps({k: v for k, v in cfg.to_dict()["moe"].items() if k != "structure"}, sort_keys=True))


def workload_id(key: tuple) -> str:
    """A short stable name of a :func:`config_key`: the same configuration (testbed, rate, model,
    routing, batch) measured in two campaigns has the same id, so their pairs can be compared."""
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


@dataclass
class LoadedRun:
    spec: RunSpec
    table: Table
    cfg: object
    tb: dict


def load_run(spec: RunSpec) -> LoadedRun:
    table = read_table(spec.path, expect="run")
    try:
        cfg = load_config(table.meta["config"])
    except MoesimError as exc:
        raise InputFileError(spec.path, f"the config in '# meta' is not valid: {exc}") from None
    return LoadedRun(spec, table, cfg, testbed_of(table.meta))


def group_repeats(loaded: list) -> list[list]:
    """Runs grouped by configuration (:func:`config_key` and structure), in first-seen order. The
    runs of one configuration must share a role."""
    groups: dict = {}
    for run in loaded:
        groups.setdefault((config_key(run.cfg, run.tb), run.cfg.moe.structure), []).append(run)
    for runs in groups.values():
        roles = {r.spec.role for r in runs}
        if len(roles) > 1:
            raise MoesimError("runs of one configuration have different roles (" + ", ".join(
                f"{r.spec.path.name}: {r.spec.role}" for r in runs) + "): a configuration is either fitted or held out")
    return list(groups.values())


def mean_copies(runs: list) -> np.ndarray | None:
    """The mean measured dispatch matrix of repeated runs (None when a run lacks byte counts)."""
    mats = []
    for r in runs:
        cfg = r.cfg
        if not (cfg.is_moe and cfg.parallel.ep > 1):
            return None
        m = measured_dispatch_copies(r.table, cfg.parallel.ep, cfg.a2a_dim, cfg.model.dtype_bytes)
        if m is None:
            return None
        mats.append(m)
    return np.mean(mats, axis=0) if mats else None


def measured_config(runs: list) -> tuple[float, dict, list[float], int]:
    """(step seconds, {phase: seconds}, per-run step seconds, steps) of a configuration's runs: the
    median over runs of each run's :func:`measured_times`."""
    per = [measured_times(r.table) for r in runs]
    step_runs = [p[0] for p in per]
    phases = {ph: float(np.median([p[1].get(ph, 0.0) for p in per])) for ph in {k for p in per for k in p[1]}}
    return float(np.median(step_runs)), phases, step_runs, int(sum(p[2] for p in per))


#: engine settings ``validate(engine=...)`` may override (what-ifs on the profile's fitted parameters)
ENGINE_WHAT_IF = {"pairwise_a2a": bool, "time_slice_s": float, "a2a_cpu_s": float, "release_spread": float,
                  "compute_first": bool, "continuous_bucket": bool, "a2a_cpu_overlap": bool}


def check_engine(engine: dict | None) -> dict:
    """The engine overrides of a what-if, checked: keys from :data:`ENGINE_WHAT_IF`; ``time_slice_s``
    in [0, 1] s, ``a2a_cpu_s`` in [0, 1) s, ``release_spread`` (every All-to-All across hosts) in [0, 1)."""
    out = {}
    for k, v in (engine or {}).items():
        if k not in ENGINE_WHAT_IF:
            raise MoesimError(f"unknown engine setting {k!r} for a what-if (known: {', '.join(ENGINE_WHAT_IF)})")
        if v is None:
            continue
        if k == "time_slice_s":
            v = float(v)
            if not (0.0 <= v <= 1.0):
                raise MoesimError(f"time_slice_s must lie in [0, 1] s, got {v!r}")
        if k in ("a2a_cpu_s", "release_spread"):
            v = float(v)
            if not (0.0 <= v < 1.0):
                raise MoesimError(f"{k} must lie in [0, 1){' s' if k == 'a2a_cpu_s' else ''}, got {v!r}")
        out[k] = ENGINE_WHAT_IF[k](v)
    return out


def validate(paths: Sequence[str | os.PathLike], profile: str | None = None, topology: str | None = None,
             bucket_bytes: float = REAL_BACKEND_BUCKET_BYTES, measured_traffic: bool = True,
             engine: dict | None = None) -> dict:
    """Simulate every configuration and compare. Returns a JSON-able report (see :func:`summarise`).

    Repeated runs of one configuration (same testbed and config, e.g. a campaign's ``--repeats``)
    form one row: measured is the median over the runs, the simulation replays their mean measured
    traffic. ``measured_traffic``: replay the measured All-to-All traffic (:mod:`.traffic`) instead
    of the config's routing. ``engine``: what-if overrides of the engine's shared-core settings
    (:data:`ENGINE_WHAT_IF`, e.g. ``{"pairwise_a2a": False}``) on the profile's fitted parameters;
    indicative only, since the profile was fitted with its own settings (recorded in the report as
    ``engine_what_if``)."""
    from moesim.engine import SimOptions, simulate
    engine = check_engine(engine)
    camp = resolve_inputs(paths)
    prof_ref = profile or camp.profile
    if not prof_ref:
        raise MoesimError("no profile: pass --profile NAME|FILE (a campaign directory's manifest.json names one)")
    prof, _ = raw_profile(prof_ref)  # the engine applies its calibrated links to each topology
    rows = []
    for runs in group_repeats([load_run(spec) for spec in camp.runs]):
        first = runs[0]
        cfg, tb = first.cfg, first.tb
        topo, topo_src = topology_for(first.spec, first.table, topology)
        if cfg.world_size != topo.num_gpus:
            raise InputFileError(first.spec.path, f"the run used {cfg.world_size} ranks but its topology "
                                                  f"({topo_src}) has {topo.num_gpus} GPUs")
        copies = mean_copies(runs) if measured_traffic else None
        res = simulate(cfg, topo, prof, SimOptions(bucket_bytes=bucket_bytes, a2a_copies=copies, **engine))
        meas_step, meas_ph, step_runs, steps = measured_config(runs)
        pred_ph = res.mean_breakdown_s   # like the measured phases: the mean over ranks
        phases = {}
        for ph in PHASES:
            m, p = meas_ph.get(ph, 0.0), float(pred_ph.get(ph, 0.0))
            if m > 0 or p > 0:
                phases[ph] = {"measured_s": m, "predicted_s": p}
        pred = res.step_time_s
        nbytes = [remote_bytes_per_step(r.table.df) for r in runs]
        rows.append({
            "file": first.spec.path.name, "files": [r.spec.path.name for r in runs], "role": first.spec.role,
            "label": _label(cfg, tb), "structure": cfg.moe.structure, "top_k": cfg.moe.top_k, "hosts": tb["hosts"],
            "ranks_per_host": tb["ranks_per_host"], "rate_bits": tb["rate_bits"], "steps": steps,
            "repeats": len(runs), "measured_s": meas_step, "measured_runs_s": step_runs,
            "measured_spread": (max(step_runs) - min(step_runs)) / meas_step,
            "predicted_s": pred, "ape": abs(pred - meas_step) / meas_step,
            "phases": phases, "topology": topo_src, "_key": config_key(cfg, tb),
            "a2a_remote_bytes": None if any(b is None for b in nbytes) else float(np.mean(nbytes)),
            "rank_skew": _per_call(runs, res, "skew"),
            "last_arriver": _per_call(runs, res, "last_arriver"),
            "call_times": _call_times(runs, res),
        })
    rep = summarise(rows, prof, camp)
    if engine:
        rep["engine_what_if"] = engine
    return rep


def _per_call(runs: list, res, what: str) -> dict | None:
    """Measured (median over the runs) and simulated per-call observable of the All-to-Alls (s;
    :mod:`moesim.calibrate.skew`): ``what`` = "skew" (the rank skew) or "last_arriver" (the
    last-arriver time per call); None where it is undefined (one rank, or a simulation that did not
    run the ranks one by one)."""
    from moesim.calibrate import skew
    if res.cpu_pool is None:
        return None
    measured, simulated = getattr(skew, f"measured_{what}"), getattr(skew, f"simulated_{what}")
    try:
        return {"measured_s": float(np.median([measured(r.table.df) for r in runs])), "predicted_s": simulated(res)}
    except MoesimError:
        return None


def _call_times(runs: list, res) -> dict | None:
    """Per All-to-All phase and direction ("dispatch/fwd", ...): the time per call of the last
    arriver, the mean over ranks and the first arriver, measured (median over the runs) and
    predicted (s; :func:`moesim.calibrate.skew.measured_call_times`); None where undefined."""
    import pandas as pd

    from moesim.calibrate.skew import measured_call_times, simulated_call_times
    if res.cpu_pool is None:
        return None
    try:
        meas = pd.concat([measured_call_times(r.table.df) for r in runs]).groupby(level=[0, 1]).median()
        pred = simulated_call_times(res)
    except MoesimError:
        return None
    return {f"{ph}/{d}": {"measured": {k: float(v) for k, v in meas.loc[(ph, d)].items()},
                          "predicted": {k: float(v) for k, v in pred.loc[(ph, d)].items()}}
            for ph, d in meas.index if (ph, d) in pred.index}


def round_spread(pairs: list) -> dict | None:
    """How much a measured speedup moves from round to round, over the held-out pairs measured in
    at least two rounds: per pair the relative standard deviation of its per-round speedups;
    ``median_sd`` and ``max_sd`` over the pairs (fractions), ``rounds`` (the most rounds of a pair)
    and ``median_sd_of_mean`` = median of sd / sqrt(rounds), the noise left in an N-round estimate.
    A perfect model still misses the measured speedup by about that much. None: no repeated pair."""
    sds, of_mean, rounds = [], [], 0
    for p in pairs:
        runs = np.asarray(p.get("measured_speedup_runs") or [], dtype=float)
        if p["role"] != "heldout" or len(runs) < 2:
            continue
        sd = float(np.std(runs, ddof=1) / np.mean(runs))
        sds.append(sd)
        of_mean.append(sd / math.sqrt(len(runs)))
        rounds = max(rounds, len(runs))
    if not sds:
        return None
    return {"pairs": len(sds), "rounds": rounds, "median_sd": float(np.median(sds)), "max_sd": float(np.max(sds)),
            "median_sd_of_mean": float(np.median(of_mean))}


def summarise(rows: list, prof, camp: Campaign) -> dict:
    held = [r for r in rows if r["role"] == "heldout"]
    fit = [r for r in rows if r["role"] == "fit"]
    judged = held or rows

    def stats(rs):
        if not rs:
            return {"rows": 0, "mape": None, "max_error": None}
        a = np.array([r["ape"] for r in rs])
        return {"rows": len(rs), "mape": float(a.mean()), "max_error": float(a.max())}

    pairs = []
    by_key: dict = {}
    for r in rows:
        by_key.setdefault(r["_key"], {})[r["structure"]] = r
    for key, d in by_key.items():
        if "cdac" in d and "dcca" in d:
            c, x = d["cdac"], d["dcca"]
            ms, ps = c["measured_s"] / x["measured_s"], c["predicted_s"] / x["predicted_s"]
            per_run = [a / b for a, b in zip(c.get("measured_runs_s", [c["measured_s"]]),
                                             x.get("measured_runs_s", [x["measured_s"]]))]
            pairs.append({"label": c["label"].replace(" cdac", ""), "role": "heldout" if (c["role"] == x["role"] == "heldout")
                          else "fit", "workload": workload_id(key),
                          "cdac_file": c["file"], "dcca_file": x["file"], "measured_speedup": ms,
                          "measured_speedup_runs": per_run, "predicted_speedup": ps, "error": abs(ps - ms) / ms})
    for r in rows:
        r.pop("_key", None)
    held_pairs = [p for p in pairs if p["role"] == "heldout"] if held else pairs
    s = stats(judged)
    out = {
        "mape": s["mape"], "max_error": s["max_error"], "judged_on": "heldout" if held else "all",
        "heldout": stats(held), "fit": stats(fit), "all": stats(rows),
        "speedup_max_error": max((p["error"] for p in held_pairs), default=None),
        "speedup_round_spread": round_spread(held_pairs),
        "pairs": pairs, "rows": rows, "a2a_cost": a2a_cost(rows), "a2a_goodput_floor": goodput_floor(rows),
        "a2a_overlap": overlap_fit(rows), "speedup_split": speedup_split({"rows": rows, "pairs": pairs}),
        "profile": {"name": prof.name, "status": prof.status, "path": prof.path},
    }
    targets = camp.manifest.get("targets") if camp.manifest else None
    if isinstance(targets, dict):
        out["targets"] = targets
        ok = (out["mape"] is not None and out["mape"] <= targets.get("mape", math.inf)
              and (out["speedup_max_error"] or 0.0) <= targets.get("speedup_error", math.inf))
        out["targets_met"] = bool(ok)
    return out
