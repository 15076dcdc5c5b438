"""In-situ fit, on the fit configurations' training steps, of what microbenchmarks cannot see.

1. The receiver wait (``network.receiver_wait_s``). Isolated microbenchmarks time a collective
   while every rank waits for it. Inside a training step on the testbed, R ranks share C < R cores:
   when a collective starts, some of its ranks are still descheduled behind computing ranks (a
   time slice, a few ms). The kernel keeps receiving into socket buffers meanwhile, so the wait
   overlaps the transfer instead of adding to it: a collective stage takes
   ``max(receiver_wait_s, transfer)`` (``moesim.network.fluid``). With it, small All-to-Alls on
   fast links cost the wait, big ones on slow links their bytes, as measured.
2. The two-way goodput penalty of shaped links (``calibration.links.nic.two_way_penalty`` b). gloo
   runs each rank pair's exchange over one TCP connection in both directions; where a shaped link
   carries such two-way traffic, each direction's ACKs queue behind the other's data in the tbf
   FIFOs and goodput falls to about ``1 / (1 + b)`` of the rate (``real_backend.patterns`` measures
   it: fan-in, fan-out and rings keep 0.92-1.0 of the rate, two-way exchanges and All-to-Alls
   0.6-0.8, and the pair exchange swings between 0.5 and 1.0 from run to run). Microbenchmarks of
   back-to-back collectives see less of it than a step does, hence the fit on steps.

3. The usable token-bucket burst. The testbed's tbf bucket holds ``TESTBED_TBF_BURST_S`` at the
   rate (``real_backend.testbed``) and refills while a link idles through the compute between
   collectives (``moesim.network.fluid``), but TCP paces at its bandwidth estimate and uses only
   part of a full bucket (``real_backend.patterns``: a lone 1 MiB flow after 50 ms idle gains 13 %
   at 400 Mbit/s, nothing at 150 Mbit/s, where the bucket would allow 31 % and 10 %), so the burst
   is chosen among fractions of the configured bucket.

All are fitted jointly, on the fit runs only (never on the held-out ones), by minimising the sum of
squared relative step errors over a grid refined around its best point; each run replays its
measured All-to-All traffic (:mod:`moesim.validate.traffic`) as validation does. The per-message
latency stays the microbenchmark's.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np

from moesim.calibrate.fit import residual_summary
from moesim.calibrate.netmodel import TESTBED_TBF_BURST_S, LinkParams, effective_topology
from moesim.calibrate.tables import read_table
from moesim.cost.profile import parse_profile
from moesim.errors import MoesimError

WAIT_GRID_S = tuple(np.arange(0.0, 15.01e-3, 2.5e-3))   # coarse grid, then refined
PENALTY_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.7)
BURST_FRACTIONS = (0.0, 0.5, 1.0)                        # of the testbed's configured bucket


class _Run:
    """One fit run, prepared once: config, measured step, topology, measured traffic."""

    def __init__(self, path, bucket_bytes: float):
        from moesim.config import load_config
        from moesim.validate.core import RunSpec, measured_times, topology_for
        from moesim.validate.traffic import measured_dispatch_copies
        self.table = read_table(path, expect="run")
        self.name = Path(path).name
        self.measured = measured_times(self.table)[0]
        self.cfg = load_config(self.table.meta["config"])
        self.topo, _ = topology_for(RunSpec(self.table.path), self.table)
        self.copies = None
        if self.cfg.is_moe and self.cfg.parallel.ep > 1:
            self.copies = measured_dispatch_copies(self.table, self.cfg.parallel.ep, self.cfg.a2a_dim,
                                                   self.cfg.model.dtype_bytes)
        self.bucket = bucket_bytes

    def step(self, profile_dict: dict, wait: float, penalty: float, burst_s: float = 0.0) -> float:
        from moesim.engine import SimOptions, simulate
        d = copy.deepcopy(profile_dict)
        d["network"]["receiver_wait_s"] = float(wait)
        links = {k: LinkParams.from_dict(v) for k, v in d.get("calibration", {}).get("links", {}).items()}
        if "nic" in links:
            links["nic"] = replace(links["nic"], two_way_penalty=float(penalty), burst_s=float(burst_s))
        prof = parse_profile(d, Path("<in-situ>"))
        prof = replace(prof, network=replace(prof.network, link_efficiency={}))
        topo = effective_topology(self.topo, links) if links else self.topo
        return simulate(self.cfg, topo, prof, SimOptions(bucket_bytes=self.bucket, a2a_copies=self.copies)).step_time_s


def _loss(runs: list[_Run], prof: dict, wait: float, penalty: float, cache: dict, burst_s: float) -> float:
    key = (round(wait, 9), round(penalty, 6), round(burst_s, 9))
    if key not in cache:
        pred = np.array([r.step(prof, wait, penalty, burst_s) for r in runs])
        meas = np.array([r.measured for r in runs])
        cache[key] = (float(np.sum(((pred - meas) / meas) ** 2)), pred)
    return cache[key][0]


def fit_insitu(cal, run_paths: list, bucket_bytes: float | None = None, burst_s: float | None = None,
               burst_fractions=BURST_FRACTIONS, wait_grid=WAIT_GRID_S, penalty_grid=PENALTY_GRID):
    """Fit ``receiver_wait_s``, the shaped-link two-way penalty and the usable token-bucket burst
    of ``cal.profile`` on the step times of ``run_paths`` (multi-rank testbed runs: the fit
    configurations). ``burst_s``: the configured bucket (s at the rate; default the testbed's);
    the burst is chosen among ``burst_fractions`` of it. Returns ``cal`` with the profile updated
    and the fit recorded under ``calibration.insitu``."""
    from moesim.validate.core import REAL_BACKEND_BUCKET_BYTES
    bucket = bucket_bytes or REAL_BACKEND_BUCKET_BYTES
    prof = cal.profile
    if "network" not in prof:
        raise MoesimError("the in-situ fit needs a network section (fit the network microbenchmarks first)")
    if not run_paths:
        raise MoesimError("the in-situ fit needs at least one fit run")
    runs = [_Run(p, bucket) for p in run_paths]
    shaped = any(float(r.topo.graph.graph.get("tc_rate_bits") or 0) > 0 for r in runs)
    has_nic = shaped and "nic" in prof.get("calibration", {}).get("links", {})
    penalties = tuple(penalty_grid) if has_nic else (0.0,)
    configured = (TESTBED_TBF_BURST_S if burst_s is None else float(burst_s)) if has_nic else 0.0
    bursts = sorted({f * configured for f in burst_fractions}) if has_nic else [0.0]
    cache: dict = {}
    results = []
    for burst in bursts:
        best = min(itertools.product(wait_grid, penalties), key=lambda wp: _loss(runs, prof, *wp, cache, burst))
        # refine: halve the steps around the best point a few times
        dw, db = 0.75 * float(np.diff(wait_grid).min(initial=2.5e-3)) / 2, (0.05 if len(penalties) > 1 else 0.0)
        for _ in range(4):
            cands = [(max(0.0, best[0] + i * dw), max(0.0, best[1] + j * db)) for i in (-1, 0, 1) for j in (-1, 0, 1)]
            best = min(cands, key=lambda wp: _loss(runs, prof, *wp, cache, burst))
            dw, db = dw / 2, db / 2
        results.append((_loss(runs, prof, *best, cache, burst), best, burst))
    _, (wait, penalty), burst = min(results, key=lambda x: x[0])
    pred = cache[(round(wait, 9), round(penalty, 6), round(burst, 9))][1]
    meas = np.array([r.measured for r in runs])
    prof["network"]["receiver_wait_s"] = float(wait)
    if has_nic:
        nic = prof["calibration"]["links"]["nic"]
        for key, v in (("two_way_penalty", penalty), ("burst_s", burst)):
            if v > 0:
                nic[key] = float(v)
            else:
                nic.pop(key, None)
    cal_sec = prof.setdefault("calibration", {})
    cal_sec["insitu"] = {
        "receiver_wait_s": float(wait), "nic_two_way_penalty": float(penalty),
        "nic_burst_s": float(burst), "nic_burst_configured_s": float(configured),
        "nic_burst_why": "the tc bucket lets a refilled link send its burst at line rate, but TCP paces at its "
                         "bandwidth estimate and uses only part of it: chosen among fractions of the configured bucket",
        "latency_per_message_s": float(prof["network"]["latency_per_message_s"]),
        "fitted_on": [r.name for r in runs], "evaluations": len(cache),
        "why": "in a step, R ranks share C < R cores: a collective waits for descheduled receivers, "
               "overlapped with its transfer; shaped links lose goodput under two-way multi-peer "
               "traffic (see moesim.calibrate.insitu)",
        "residuals": residual_summary(pred, meas),
    }
    cal.residuals["insitu_fit_steps"] = residual_summary(pred, meas)
    cal_sec.setdefault("residuals", {})["insitu_fit_steps"] = residual_summary(pred, meas)
    return cal
