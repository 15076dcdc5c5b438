"""In-situ fit of the per-message latency from the fit configurations' training steps.

Why: isolated microbenchmarks time a collective while every rank waits for it, so a message's
receiver is on a core the moment its data arrive. Inside a training step on the testbed, R ranks
share C < R cores and the receiver of a message is often descheduled behind a computing rank: each
message then waits for the scheduler (a time slice, ~1-3 ms) before it is consumed. gloo's
collectives are chains of such messages (its All-to-All is N-1 pairwise rounds, its ring
all-reduce 2(N-1) steps), so the wait adds up per message, not per byte. It is not visible in a
microbenchmark, so it is fitted on whole steps of the fit configurations (never on the held-out
ones): the simulator's step time is linear in ``latency_per_message_s`` (every stage of a
collective pays it once), so two simulations per run give the line and the fit is exact
least squares on relative error.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np

from moesim.calibrate.fit import residual_summary
from moesim.calibrate.netmodel import LinkParams, effective_topology
from moesim.calibrate.tables import read_table
from moesim.cost.profile import parse_profile
from moesim.errors import MoesimError


def _simulate_step(profile_dict: dict, table, latency: float, bucket_bytes: float) -> float:
    from moesim.config import load_config
    from moesim.engine import SimOptions, simulate
    from moesim.validate.core import RunSpec, topology_for
    d = copy.deepcopy(profile_dict)
    d["network"]["latency_per_message_s"] = latency
    prof = parse_profile(d, Path("<in-situ>"))
    links = {k: LinkParams.from_dict(v) for k, v in d.get("calibration", {}).get("links", {}).items()}
    prof = replace(prof, network=replace(prof.network, link_efficiency={}))
    cfg = load_config(table.meta["config"])
    topo, _ = topology_for(RunSpec(table.path), table)
    if links:
        topo = effective_topology(topo, links)
    return simulate(cfg, topo, prof, SimOptions(bucket_bytes=bucket_bytes)).step_time_s


def fit_insitu(cal, run_paths: list, bucket_bytes: float | None = None):
    """Refit ``latency_per_message_s`` of ``cal.profile`` on the step times of ``run_paths``
    (multi-rank testbed runs: the fit configurations). Returns ``cal`` with the profile updated and
    the microbenchmark value kept under ``calibration.insitu``."""
    from moesim.validate.core import REAL_BACKEND_BUCKET_BYTES, measured_times
    bucket = bucket_bytes or REAL_BACKEND_BUCKET_BYTES
    prof = cal.profile
    if "network" not in prof:
        raise MoesimError("the in-situ latency fit needs a network section (fit the network microbenchmarks first)")
    base = float(prof["network"]["latency_per_message_s"])
    probe = 1e-3
    a, b, meas, names = [], [], [], []
    for p in run_paths:
        t = read_table(p, expect="run")
        m = measured_times(t)[0]
        t0 = _simulate_step(prof, t, 0.0, bucket)
        t1 = _simulate_step(prof, t, probe, bucket)
        a.append(t0)
        b.append((t1 - t0) / probe)
        meas.append(m)
        names.append(Path(p).name)
    a, b, meas = np.array(a), np.array(b), np.array(meas)
    # minimise sum(((a + b*lat) - m) / m)^2 over lat >= 0
    w = 1.0 / meas
    lat = float(np.sum(w * w * b * (meas - a)) / np.sum(w * w * b * b)) if np.any(b > 0) else base
    lat = max(0.0, lat)
    pred = a + b * lat
    prof["network"]["latency_per_message_s"] = lat
    cal_sec = prof.setdefault("calibration", {})
    cal_sec["insitu"] = {
        "latency_per_message_s": lat, "microbenchmark_latency_per_message_s": base,
        "fitted_on": names, "messages_on_critical_path": [float(x) for x in b],
        "why": "in a step, R ranks share C < R cores: a message waits for its receiver to be scheduled; "
               "fitted on the fit configurations' step times (see moesim.calibrate.insitu)",
        "residuals": residual_summary(pred, meas),
    }
    cal.residuals["insitu_fit_steps"] = residual_summary(pred, meas)
    cal_sec.setdefault("residuals", {})["insitu_fit_steps"] = residual_summary(pred, meas)
    return cal
