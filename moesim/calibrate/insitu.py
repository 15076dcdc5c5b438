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
   0.6-0.8, and the pair exchange swings between 0.5 and 1.0 from run to run). The loss grows with
   the number k of peer hosts a host exchanges with (the probe's All-to-All keeps 0.68-0.89 of the
   rate between 2 hosts, 0.62-0.68 among 4): every flow then crosses a second token bucket, the
   peer's, shared with other hosts' flows, so a link carries ``1 / (1 + b + c (k - 1))`` (peer term
   c, ``calibration.links.nic.peer_penalty``; fitted only when the fit runs hold both 2-host and
   bigger shaped testbeds). Microbenchmarks of back-to-back collectives see less of it than a step
   does, hence the fit on steps.

3. The usable token-bucket burst. The testbed's tbf bucket holds ``TESTBED_TBF_BURST_S`` at the
   rate (``real_backend.testbed``) and refills while a link idles through the compute between
   collectives (``moesim.network.fluid``), but TCP paces at its bandwidth estimate and uses only
   part of a full bucket (``real_backend.patterns``: a lone 1 MiB flow after 50 ms idle gains 13 %
   at 400 Mbit/s, nothing at 150 Mbit/s, where the bucket would allow 31 % and 10 %), so the burst
   is chosen among fractions of the configured bucket.

4. Shared cores (with ``patterns``, what the committed campaigns use): the R ranks share the
   machine's cores (effective cores K, alone factor g), and All-to-Alls over shaped links release their
   ranks over the measured spread, so ranks that leave a long All-to-All apart compute with more of a
   core (``real_backend.schedprobe`` measured CDAC 0.65 against DCCA 0.47 at 4x1 150 Mbit/s top-8);
   see :mod:`moesim.engine.cpupool`.
5. The scheduler and pairwise start (shared cores): gloo exchanges each rank pair's data over the
   pair's own connection, so a pair starts as soon as both ranks are there (``pairwise_a2a``); and the
   kernel runs ranks in time slices, so ranks reach an All-to-All apart. The slice is not fitted on
   step times (which hardly depend on it: the cores do the same work either way) but chosen by the
   rank skew the fit runs measured (:mod:`moesim.calibrate.skew`), among ``SLICE_GRID_S``: the fit runs
   at ``SLICE_START_S``, the slice whose simulated skew comes closest to the measured one is taken,
   and the fit is repeated at it. What the slice changes is how much of a short All-to-All's bytes
   move while its last rank is still computing.
6. The CPU an All-to-All call costs each member rank (``a2a_cpu_s``, shared cores): on step times it
   is the same as more waiting in each call or a slower core, so besides being fitted with the rest
   (``a2a_cpu_grid``) it can be set by an observable of its own, the unshaped fit runs' last-arriver
   time per call (:mod:`moesim.calibrate.skew`), and held while the rest is refitted on step and
   last-arriver times together (``a2a_cpu_last_arriver_grid``).

All are fitted jointly, on the fit runs only (never on the held-out ones), by minimising the sum of
squared relative step errors over a grid refined around its best point; repeated runs of one
configuration count once, with the median of their step times, and each configuration replays its
measured All-to-All traffic (:mod:`moesim.validate.traffic`, mean over its runs) as validation does. The per-message
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
from moesim.cost.profile import parse_profile
from moesim.errors import MoesimError
from moesim.phases import COMM_PHASES

WAIT_GRID_S = tuple(np.arange(0.0, 15.01e-3, 2.5e-3))   # coarse grid, then refined
PENALTY_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.7)
PEER_GRID = (0.0, 0.1, 0.2, 0.35)                      # per extra peer host
BURST_FRACTIONS = (0.0, 0.5, 1.0)                        # of the testbed's configured bucket
# shared-core mode (see fit_insitu): the pool's effective cores K and the alone factor g join the fit
POOL_CORES_GRID = (1.0, 1.5, 2.0, 2.5)
ALONE_GRID = (0.6, 0.75, 0.9)
POOL_WAIT_GRID_S = (0.0, 5e-3, 10e-3, 15e-3)
POOL_PENALTY_GRID = (0.0, 0.15, 0.3, 0.45)
POOL_PEER_GRID = (0.0, 0.2)
#: candidate alone factors when the fit runs' compute phases set it (pool_held="compute-phases")
ALONE_FROM_PHASES_GRID = tuple(np.round(np.arange(0.3, 1.0001, 0.025), 3))
#: with both observables (compute phases and last arriver), at most this many times the alone factor is
#: set again after the All-to-All CPU moved (each one's simulated match depends on the other)
MAX_ALTERNATIONS = 4
# the pool's scheduler (shared-core mode): time slices chosen by the measured rank skew
# (moesim.calibrate.skew), starting from SLICE_START_S; 0 = processor sharing, 4 ms = this kernel's tick
SLICE_GRID_S = (0.0, 0.004, 0.01, 0.02, 0.03, 0.05)
SLICE_START_S = 0.03
# CPU an All-to-All call costs each member rank on the shared cores once its data has landed (alone s;
# --a2a-cpu fit): fitted with the pool's K and g over this grid, then refined by the coordinate search
A2A_CPU_GRID_S = (0.0, 0.002, 0.004)
# --a2a-cpu last-arriver: the candidates (alone s) among which the All-to-All CPU is chosen by the unshaped
# fit runs' measured last-arriver time per call (moesim.calibrate.skew); then held while the rest is refitted
A2A_CPU_LAST_ARRIVER_GRID_S = tuple(np.round(np.arange(0.0, 8.01e-3, 0.5e-3), 6))
# exponent γ of a rate-dependent two-way loss, (rate / lowest fit rate) ** -γ on b and c: scanned at the
# grid's best point (0: one loss at every rate; negative: a loss that grows with the rate)
TWO_WAY_RATE_EXPONENT_GRID = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)
#: the least rate exponent the coordinate search may reach (unless fit_insitu's rate_exponent_min says)
RATE_EXPONENT_LOWER = -2.0


def predicted_compute(result) -> float:
    """The compute phases' seconds in a simulated step (every phase but the communication ones,
    whose waits they exclude), averaged over the ranks as a run's phase table gives them
    (:attr:`moesim.engine.SimResult.mean_breakdown_s`; ``_Run.measured_compute`` is that mean too)."""
    return float(sum(v for p, v in result.mean_breakdown_s.items() if p not in COMM_PHASES))


def predicted_a2a(result) -> float:
    """The All-to-All phase group's seconds in a simulated step (waits included), averaged over the
    ranks as a run's phase table gives them (:attr:`moesim.engine.SimResult.mean_breakdown_s`)."""
    from moesim.validate.a2acost import A2A_PHASES
    bd = result.mean_breakdown_s
    return float(sum(bd.get(p, 0.0) for p in A2A_PHASES))


class _Run:
    """One fit configuration (one run, or repeated runs of it), prepared once: config, measured step
    (median over the runs), topology, measured traffic (mean over the runs)."""

    def __init__(self, runs: list, bucket_bytes: float, step_release_spread: float | None = None,
                 compute_first: bool = False, a2a_cpu_overlap: bool = False):
        from moesim.validate.a2acost import A2A_PHASES
        from moesim.validate.core import mean_copies, measured_config, topology_for
        first = runs[0]
        self.files = [r.spec.path.name for r in runs]
        self.measured, phases = measured_config(runs)[:2]
        #: the All-to-All phase group's seconds per step (dispatch + combine, forward and backward)
        self.measured_a2a = float(sum(phases.get(p, 0.0) for p in A2A_PHASES))
        #: the compute phases' seconds per step (every phase but the communication ones)
        self.measured_compute = float(sum(v for p, v in phases.items() if p not in COMM_PHASES))
        self.cfg = first.cfg
        self.hosts = int(first.tb["hosts"])
        self.topo, _ = topology_for(first.spec, first.table)
        self.copies = mean_copies(runs)
        self.bucket = bucket_bytes
        self.tables = [r.table for r in runs]
        #: every All-to-All across hosts releases its members over this fraction (None: shaped links only)
        self.step_release_spread = None if step_release_spread is None else float(step_release_spread)
        #: a released rank's compute goes ahead of the All-to-All CPU of ranks still in a call (a slice)
        self.compute_first = bool(compute_first)
        #: a rank's All-to-All CPU runs beside the call's transfer from its arrival (else after its data)
        self.a2a_cpu_overlap = bool(a2a_cpu_overlap)
        #: the tc rate (bytes/s) at which b and c hold when the two-way loss depends on the rate (0: it does not)
        self.two_way_reference_rate = 0.0

    def measured_skew(self) -> float:
        """Median rank skew of the runs (s; :mod:`moesim.calibrate.skew`)."""
        from moesim.calibrate.skew import measured_skew
        return float(np.median([measured_skew(t.df) for t in self.tables]))

    def measured_last_arriver(self) -> float:
        """Median last-arriver time per All-to-All call of the runs (s; :mod:`moesim.calibrate.skew`)."""
        from moesim.calibrate.skew import measured_last_arriver
        return float(np.median([measured_last_arriver(t.df) for t in self.tables]))

    @property
    def shaped(self) -> bool:
        """Whether the run's host links were shaped by tc."""
        return float(self.topo.graph.graph.get("tc_rate_bits") or 0) > 0

    def simulate_pool(self, profile_dict: dict, point: tuple, time_slice_s: float, pairwise_a2a: bool):
        """The simulated step on shared cores at ``point`` = (K, g, wait s, b, c, burst s, All-to-All CPU
        s[, rate exponent γ of the two-way loss]), a point of :func:`_fit_pool`."""
        k, g, wait, b, c, burst, cpu = point[:7]
        gamma = float(point[7]) if len(point) > 7 else 0.0
        return self.simulate(profile_dict, wait, b, burst, c, rate_exponent=gamma,
                             cpu_pool=True, pool_cores=k, alone_factor=g,
                             time_slice_s=time_slice_s, pairwise_a2a=pairwise_a2a, a2a_cpu_s=cpu,
                             release_spread=self.step_release_spread, compute_first=self.compute_first,
                             a2a_cpu_overlap=self.a2a_cpu_overlap)

    def step(self, profile_dict: dict, wait: float, penalty: float, burst_s: float = 0.0, peer: float = 0.0,
             **options) -> float:
        """Predicted step (s) with these in-situ parameters; ``options``: more :class:`SimOptions`."""
        return self.simulate(profile_dict, wait, penalty, burst_s, peer, **options).step_time_s

    def simulate(self, profile_dict: dict, wait: float, penalty: float, burst_s: float = 0.0, peer: float = 0.0,
                 rate_exponent: float = 0.0, **options):
        """The simulated step (:class:`moesim.engine.SimResult`) with these in-situ parameters
        (``rate_exponent``: b and c scale by ``(rate / two_way_reference_rate) ** -rate_exponent``)."""
        from moesim.engine import SimOptions, simulate
        d = copy.deepcopy(profile_dict)
        d["network"]["receiver_wait_s"] = float(wait)
        links = {k: LinkParams.from_dict(v) for k, v in d.get("calibration", {}).get("links", {}).items()}
        if "nic" in links:
            links["nic"] = replace(links["nic"], two_way_penalty=float(penalty), peer_penalty=float(peer),
                                   burst_s=float(burst_s), two_way_rate_exponent=float(rate_exponent),
                                   two_way_reference_rate=self.two_way_reference_rate if rate_exponent else 0.0)
        prof = parse_profile(d, Path("<in-situ>"))
        prof = replace(prof, network=replace(prof.network, link_efficiency={}))
        topo = effective_topology(self.topo, links) if links else self.topo
        return simulate(self.cfg, topo, prof, SimOptions(bucket_bytes=self.bucket, a2a_copies=self.copies,
                                                         **options))


def _key(point, burst_s: float) -> tuple:
    return (round(point[0], 9), round(point[1], 6), round(point[2], 6), round(burst_s, 9))


def _loss(runs: list[_Run], prof: dict, point: tuple, cache: dict, burst_s: float) -> float:
    """Sum of squared relative step errors at ``point`` = (wait s, two-way b, peer c)."""
    key = _key(point, burst_s)
    if key not in cache:
        wait, penalty, peer = point
        pred = np.array([r.step(prof, wait, penalty, burst_s, peer, cpu_pool=False) for r in runs])
        meas = np.array([r.measured for r in runs])
        cache[key] = (float(np.sum(((pred - meas) / meas) ** 2)), pred)
    return cache[key][0]


def _fit_pool(runs: list[_Run], prof: dict, grids: tuple, penalties_on: bool, peers_on: bool, bursts: list,
              refine: int, time_slice_s: float = 0.0, pairwise_a2a: bool = False,
              two_way: tuple[float, float] | None = None,
              a2a_cpu_grid: tuple = (0.0,),
              last_arriver: dict | None = None, a2a_phase: bool = False,
              rate_exponent_grid: tuple = (0.0,),
              rate_exponent_min: float = RATE_EXPONENT_LOWER) -> tuple[tuple, np.ndarray, int]:
    """Shared-core mode: grid over (K, g, wait, b, c, All-to-All CPU) at no burst (at the one burst
    when ``bursts`` offers only one: a burst fixed by measurement), then a coordinate search that
    halves its steps ``refine`` times (the burst among ``bursts``; the All-to-All CPU only when
    ``a2a_cpu_grid`` offers more than one value). ``two_way`` = (b, c) measured elsewhere: held, not
    searched. ``last_arriver`` = {index into ``runs``: measured last-arriver time per call (s)}: each
    adds its squared relative error to the loss, beside the step errors. ``a2a_phase``: each run's
    All-to-All phase group (dispatch + combine) adds its squared relative error too, so the fit
    must split the step between exchange and compute as measured. ``rate_exponent_grid`` (more than
    one value: the two-way loss depends on the rate): the exponent γ is scanned over it at the grid's
    best point and then searched with the rest, never below ``rate_exponent_min``; b and c hold at the
    runs' ``two_way_reference_rate``.
    Returns the best (K, g, wait, b, c, burst, a2a_cpu_s, γ), its predicted steps and the number of
    evaluations."""
    from moesim.calibrate.skew import simulated_last_arriver
    cores_grid, alone_grid, wait_grid, penalty_grid, peer_grid = grids
    if two_way is not None:
        penalty_grid, peer_grid = (float(two_way[0]),), (float(two_way[1]),)
        penalties_on = peers_on = False
    else:
        penalty_grid, peer_grid = (penalty_grid if penalties_on else (0.0,)), (peer_grid if peers_on else (0.0,))
    meas = np.array([r.measured for r in runs])
    last_arriver = last_arriver or {}
    cache: dict = {}

    def loss(x) -> float:
        key = tuple(round(v, 9) for v in x)
        if key not in cache:
            results = [r.simulate_pool(prof, x, time_slice_s, pairwise_a2a) for r in runs]
            pred = np.array([res.step_time_s for res in results])
            extra = sum((simulated_last_arriver(results[i]) / m - 1.0) ** 2 for i, m in last_arriver.items())
            if a2a_phase:
                extra += sum((predicted_a2a(res) / r.measured_a2a - 1.0) ** 2
                             for r, res in zip(runs, results) if r.measured_a2a > 0)
            cache[key] = (float(np.sum((pred / meas - 1.0) ** 2) + extra), pred)
        return cache[key][0]

    a2a_cpu_grid = tuple(float(v) for v in a2a_cpu_grid)
    rate_exponent_grid = tuple(float(v) for v in rate_exponent_grid)
    grid = itertools.product(cores_grid, alone_grid, wait_grid, penalty_grid, peer_grid,
                             (bursts[0],) if len(bursts) == 1 else (0.0,), a2a_cpu_grid,
                             (0.0 if 0.0 in rate_exponent_grid else rate_exponent_grid[0],))
    best = min(grid, key=loss)
    if len(rate_exponent_grid) > 1:   # the rate exponent scanned at the grid's best point
        best = min((best[:7] + (gamma,) for gamma in rate_exponent_grid), key=loss)
    cpu_step = 0.5 * float(np.diff(sorted(a2a_cpu_grid)).min()) if len(a2a_cpu_grid) > 1 else 0.0
    gamma_step = 0.5 * float(np.diff(sorted(rate_exponent_grid)).min()) if len(rate_exponent_grid) > 1 else 0.0
    # coordinates searched: K, g, wait, b, c, (burst: by its list below), All-to-All CPU, rate exponent
    # a one-value grid of cores or alone factor holds it (measured elsewhere: fit_insitu's pool_held)
    steps = [0.25 if len(cores_grid) > 1 else 0.0, 0.075 if len(alone_grid) > 1 else 0.0, 2.5e-3,
             0.075 if penalties_on else 0.0, 0.1 if peers_on else 0.0, 0.0, cpu_step, gamma_step]
    lower = (0.25, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, float(rate_exponent_min))
    upper = (64.0, 1.0, 1.0, 5.0, 5.0, 1.0, 0.5, 4.0)
    for _ in range(refine):
        for i, h in enumerate(steps):
            for sign in ((-1, 1) if h > 0 else ()):
                cand = list(best)
                cand[i] = min(upper[i], max(lower[i], best[i] + sign * h))
                if loss(tuple(cand)) < loss(best):
                    best = tuple(cand)
        for burst in bursts:
            cand = best[:5] + (burst,) + best[6:]
            if loss(cand) < loss(best):
                best = cand
        steps = [h / 2 for h in steps]
    return best, cache[tuple(round(v, 9) for v in best)][1], len(cache)


def _slice_from_skew(runs: list[_Run], prof: dict, fit_at, slice_grid, pairwise_a2a: bool):
    """Fit at ``SLICE_START_S``, pick the slice of ``slice_grid`` whose simulated rank skew with those
    parameters is closest to the measured one (:mod:`moesim.calibrate.skew`), and refit there if it
    differs. Returns (slice s, (best, predictions, evaluations), the record for the profile)."""
    from moesim.calibrate.skew import pick_closest, simulated_skew
    start = SLICE_START_S if SLICE_START_S in slice_grid else float(max(slice_grid))
    best, pred, evaluations = fit_at(start)
    measured = np.array([r.measured_skew() for r in runs])
    sims: dict = {}

    def skews_at(q: float) -> list[float]:
        sims[q] = [simulated_skew(r.simulate_pool(prof, best, q, pairwise_a2a)) for r in runs]
        return sims[q]
    chosen, rms = pick_closest(slice_grid, measured, skews_at)
    if chosen != start:
        best, pred, more = fit_at(chosen)
        evaluations += more
    record = {"measured_s": {r.files[0]: float(m) for r, m in zip(runs, measured)},
              "simulated_s": {r.files[0]: float(v) for r, v in zip(runs, sims[chosen])},
              "rms_by_time_slice_s": {f"{q:g}": v for q, v in rms.items()},
              "meaning": "mean minus min over ranks of a rank's time per All-to-All call, median over a run's "
                         "steps and phases (moesim.calibrate.skew); the time slice is the candidate whose "
                         "simulated skew, with the parameters fitted at the starting slice, comes closest to "
                         "the measured one on the fit runs; the fit is then repeated at it"}
    return chosen, (best, pred, evaluations), record


def _a2a_cpu_from_last_arriver(runs: list[_Run], prof: dict, best: tuple, time_slice_s: float, pairwise_a2a: bool,
                               grid) -> tuple[float, dict, dict]:
    """The All-to-All CPU (alone s) among ``grid`` whose simulated last-arriver time per call, with the
    parameters ``best`` fitted without it, comes closest to the one the unshaped fit runs measured
    (:mod:`moesim.calibrate.skew`; on unshaped links a call's last arriver waits for no peer and moves
    little, so what it spends there is the call's own cost). Returns (the CPU, {run index: measured s},
    the record for the profile)."""
    from moesim.calibrate.skew import pick_closest
    idx = [i for i, r in enumerate(runs) if not r.shaped]
    if not idx:
        raise MoesimError("the All-to-All CPU from the last arriver needs unshaped fit runs (a testbed without "
                          "tc rate); every fit run is shaped")
    measured = {i: runs[i].measured_last_arriver() for i in idx}
    sims: dict = {}

    def at(cpu: float) -> list[float]:
        point = best[:6] + (cpu,) + best[7:]
        sims[cpu] = list(_simulated_last_arrivers(runs, prof, point, time_slice_s, pairwise_a2a, idx).values())
        return sims[cpu]
    chosen, rms = pick_closest(grid, np.array([measured[i] for i in idx]), at)
    record = {"measured_s": {runs[i].files[0]: float(measured[i]) for i in idx},
              "simulated_before_refit_s": {runs[i].files[0]: float(v) for i, v in zip(idx, sims[chosen])},
              "rms_by_a2a_cpu_s": {f"{q:g}": v for q, v in rms.items()},
              "meaning": "the least time per All-to-All call over the ranks (the rank that reached the call "
                         "last), median over a run's steps and phases, on the unshaped fit runs "
                         "(moesim.calibrate.skew); a2a_cpu_s is the candidate whose simulated last-arriver "
                         "time, with the parameters fitted without it, comes closest to the measured one; it "
                         "is then held while the rest is refitted on the step times and these last-arriver "
                         "times together"}
    return chosen, measured, record


def _simulated_last_arrivers(runs: list[_Run], prof: dict, best: tuple, time_slice_s: float, pairwise_a2a: bool,
                            which) -> dict:
    """{file: simulated last-arriver time per call (s)} of the runs indexed by ``which`` at ``best``."""
    from moesim.calibrate.skew import simulated_last_arriver
    return {runs[i].files[0]: simulated_last_arriver(runs[i].simulate_pool(prof, best, time_slice_s, pairwise_a2a))
            for i in which}


def fit_insitu(cal, run_paths: list, bucket_bytes: float | None = None, burst_s: float | None = None,
               burst_fractions=BURST_FRACTIONS, wait_grid=WAIT_GRID_S, penalty_grid=PENALTY_GRID,
               peer_grid=PEER_GRID, patterns: list | None = None, pool_grids: tuple | None = None,
               refine: int = 3, time_slice_s: float | None = 0.0, pairwise_a2a: bool = False,
               slice_grid=SLICE_GRID_S, two_way: tuple[float, float] | None = None,
               a2a_cpu_grid: tuple = (0.0,), a2a_cpu_last_arriver_grid: tuple | None = None,
               step_release_spread: float | None = None, compute_first: bool = False, a2a_phase: bool = False,
               rate_exponent_grid: tuple = (0.0,), pool_held: str | None = None, a2a_cpu_overlap: bool = False,
               rate_exponent_min: float | None = None):
    """Fit ``receiver_wait_s``, the shaped-link two-way penalty b, its peer-host term c and the
    usable token-bucket burst of ``cal.profile`` on the step times of ``run_paths`` (multi-rank
    testbed runs: the fit configurations). c is fitted only when the shaped fit runs include both
    two-host testbeds (k = 1 peer host) and bigger ones (k > 1), which tell b and c apart; else it
    stays 0. ``two_way`` = (b, c) measured elsewhere (:mod:`moesim.calibrate.twoway`): held, not
    fitted. ``burst_s``: the configured bucket (s at the rate; default the testbed's); the burst is
    chosen among ``burst_fractions`` of it (one fraction: the burst is that, e.g. ``(1.0,)``, the whole
    bucket, as ``real_backend.patterns``' rate sweep measures for All-to-Alls). Returns ``cal`` with the profile updated and the fit
    recorded under ``calibration.insitu``.

    ``patterns`` (``real_backend.patterns`` tables with release times) switch on the shared-core
    mode (:class:`moesim.engine.SimOptions`): the fit runs' ranks share one machine's cores, the
    engine shares them among the ranks that compute, and All-to-Alls over shaped links release their
    members over the measured spread (the median of the tables, :mod:`moesim.calibrate.release`;
    measured, not fitted). The pool's effective cores K and the alone factor g are fitted with the
    rest, over ``pool_grids`` = (K, g, wait s, b, c) grids and ``refine`` rounds of coordinate search;
    they are written to ``calibration.cpu_pool``, the spread to the ``nic`` links. ``a2a_cpu_grid``:
    candidate CPU seconds an All-to-All call costs each member rank in the pool once its data has
    landed (:class:`moesim.engine.SimOptions` ``a2a_cpu_s``), fitted with the rest when it has more
    than one value (default ``(0.0,)``: none). ``a2a_cpu_last_arriver_grid``: instead, the All-to-All
    CPU is the candidate whose simulated last-arriver time per call (with the parameters fitted without
    it) comes closest to the one the unshaped fit runs measured, and the rest is refitted with it held,
    on step times and those last-arriver times together (:func:`_a2a_cpu_from_last_arriver`).
    ``step_release_spread`` (shared cores; measured in steps, :mod:`moesim.calibrate.arrivals`): every
    All-to-All whose group spans hosts, shaped or not, releases its members over this fraction of its
    time, instead of only those over shaped links over the patterns' spread; held, not fitted.
    ``compute_first`` (shared cores, time slices, with All-to-All CPU): a released rank's compute goes
    ahead of the All-to-All CPU of the ranks still in a call for its first slice
    (:class:`moesim.engine.cpupool.CorePool`). ``a2a_phase`` (shared cores): the fit runs' All-to-All
    phase group times join their step times in the loss (:func:`_fit_pool`). ``rate_exponent_grid``
    (shared cores, more than one value): the two-way loss depends on the rate, b and c holding at the
    lowest shaped rate of the fit runs and scaling by ``(rate / that rate) ** -γ``, with γ scanned over
    the grid and refined with the rest (the fit runs need two shaped rates to tell it). ``pool_held``
    = ``"measured"`` (shared cores): the pool is not fitted but held at what was measured, the effective
    cores K at the machine's cores (the fit runs' ``shared_cpu_cores``) and the alone factor g at the
    contention microbenchmarks' core share (``calibration.contention.core_share``: an op's alone work
    is then its single-process time, which the priced seconds divide by that share); the rest is
    fitted as before. ``pool_held="compute-phases"``: K held at the machine's cores as well, and g
    set by an observable of its own, the fit runs' compute phases (every phase but the communication
    ones): the fit runs first with g fitted, g is then the candidate of ``ALONE_FROM_PHASES_GRID``
    whose simulated compute phases come closest to the measured ones
    (:func:`_alone_from_compute_phases`), and the rest is refitted on the step times with it held. With
    ``a2a_cpu_last_arriver_grid`` as well, g and the All-to-All CPU are set in turn from the first fit's
    point, g by the compute phases and the CPU by the last arriver, until g no longer moves (at most
    ``MAX_ALTERNATIONS`` times again), and the rest is refitted once with both held. ``a2a_cpu_overlap``
    (shared cores, with All-to-All CPU): a rank's All-to-All CPU runs beside the call's transfer from
    its arrival, and the call returns when both are done (:class:`moesim.engine.SimOptions`).
    ``rate_exponent_min`` (with a rate exponent grid): γ is never below it, the grid's values below it
    dropped (e.g. 0: a loss that does not grow with the rate, as the rate sweeps measure)."""
    from moesim.validate.core import REAL_BACKEND_BUCKET_BYTES, RunSpec, group_repeats, load_run
    bucket = bucket_bytes or REAL_BACKEND_BUCKET_BYTES
    prof = cal.profile
    if "network" not in prof:
        raise MoesimError("the in-situ fit needs a network section (fit the network microbenchmarks first)")
    if not run_paths:
        raise MoesimError("the in-situ fit needs at least one fit run")
    if a2a_cpu_last_arriver_grid is not None and (len(a2a_cpu_grid) > 1 or float(a2a_cpu_grid[0]) > 0):
        raise MoesimError("the All-to-All CPU is either fitted on step times (a2a_cpu_grid) or set by the last "
                          "arriver (a2a_cpu_last_arriver_grid), not both")
    if a2a_cpu_last_arriver_grid is not None and not patterns:
        raise MoesimError("the All-to-All CPU runs on shared cores: setting it by the last arriver needs the "
                          "shared-core fit (patterns)")
    if step_release_spread is not None and not (0.0 <= float(step_release_spread) < 1.0):
        raise MoesimError(f"step_release_spread must lie in [0, 1) (a fraction of an All-to-All's time), "
                          f"got {step_release_spread!r}")
    if step_release_spread is not None and not patterns:
        raise MoesimError("the step release spread acts on shared cores: it needs the shared-core fit (patterns)")
    if a2a_cpu_overlap and not patterns:
        raise MoesimError("the All-to-All CPU beside the transfer acts on shared cores: it needs the shared-core fit "
                          "(patterns)")
    if a2a_cpu_overlap and a2a_cpu_last_arriver_grid is None and max(float(v) for v in a2a_cpu_grid) <= 0:
        raise MoesimError("the All-to-All CPU beside the transfer needs an All-to-All CPU (a2a_cpu_grid or "
                          "a2a_cpu_last_arriver_grid); there is none")
    if compute_first and not patterns:
        raise MoesimError("compute first acts on shared cores: it needs the shared-core fit (patterns)")
    if pool_held not in (None, "measured", "compute-phases"):
        raise MoesimError(f"pool_held must be 'measured', 'compute-phases' or None, got {pool_held!r}")
    if pool_held is not None and not patterns:
        raise MoesimError("holding the pool at measured values needs the shared-core fit (patterns)")
    if a2a_phase and not patterns:
        raise MoesimError("fitting the All-to-All phase times is part of the shared-core fit (patterns)")
    rate_exponent_grid = tuple(float(v) for v in rate_exponent_grid)
    rate_dependent = len(rate_exponent_grid) > 1 or rate_exponent_grid[0] != 0.0
    if rate_exponent_min is not None:
        if not rate_dependent:
            raise MoesimError("a least rate exponent bounds a two-way loss that depends on the rate: it needs a rate "
                              "exponent grid")
        kept = tuple(v for v in rate_exponent_grid if v >= float(rate_exponent_min))
        if len(kept) < 2:
            raise MoesimError(f"rate_exponent_min {rate_exponent_min!r} leaves {len(kept)} value(s) of the rate "
                              f"exponent grid {list(rate_exponent_grid)}; two or more are needed")
        rate_exponent_grid = kept
    gamma_floor = {} if rate_exponent_min is None else {"rate_exponent_min": float(rate_exponent_min)}
    if rate_dependent and not patterns:
        raise MoesimError("a two-way loss that depends on the rate is fitted on shared cores: it needs the "
                          "shared-core fit (patterns)")
    if rate_dependent and two_way is not None:
        raise MoesimError("the two-way loss is either held as measured elsewhere (two_way) or fitted with a rate "
                          "exponent, not both")
    runs = [_Run(g, bucket, step_release_spread, compute_first, a2a_cpu_overlap)
            for g in group_repeats([load_run(RunSpec(Path(p), role="fit")) for p in run_paths])]
    shaped_hosts = {r.hosts for r in runs if r.shaped}
    has_nic = bool(shaped_hosts) and "nic" in prof.get("calibration", {}).get("links", {})
    shaped_rates = sorted({float(r.topo.graph.graph["tc_rate_bits"]) / 8.0 for r in runs if r.shaped})
    if rate_dependent and len(shaped_rates) < 2:
        raise MoesimError(f"a two-way loss that depends on the rate needs fit runs at two or more tc rates; "
                          f"they have {len(shaped_rates)}")
    reference_rate = shaped_rates[0] if rate_dependent else 0.0
    for r in runs:
        r.two_way_reference_rate = reference_rate
    penalties = tuple(penalty_grid) if has_nic else (0.0,)
    peers = tuple(peer_grid) if (has_nic and 2 in shaped_hosts and max(shaped_hosts) > 2) else (0.0,)
    if two_way is not None and has_nic:   # measured elsewhere (moesim.calibrate.twoway): held
        penalties, peers = (float(two_way[0]),), (float(two_way[1]),)
    configured = (TESTBED_TBF_BURST_S if burst_s is None else float(burst_s)) if has_nic else 0.0
    bursts = sorted({f * configured for f in burst_fractions}) if has_nic else [0.0]
    if patterns:
        from moesim.calibrate.release import release_spread
        unshared = [r.files[0] for r in runs if not r.topo.graph.graph.get("shared_cpu_cores")]
        if unshared:
            raise MoesimError(f"the shared-core fit needs runs whose ranks share one machine's cores; "
                              f"{unshared[0]} records none (a real_backend.testbed run records cpu_count)")
        spread = release_spread(patterns)
        if has_nic:
            prof["calibration"]["links"]["nic"]["release_spread"] = spread.spread
        grids = pool_grids or (POOL_CORES_GRID, ALONE_GRID, POOL_WAIT_GRID_S, POOL_PENALTY_GRID, POOL_PEER_GRID)
        held = None
        if pool_held:   # the cores held at the machine's; the alone factor at the core share, or set below
            at_share = pool_held == "measured"
            grids = ((_machine_cores(runs),), (_core_share(prof),) if at_share else grids[1]) + tuple(grids[2:])
            held = {"pool_cores": "the machine's cores (the fit runs' shared_cpu_cores)",
                    "alone_factor": "calibration.contention.core_share (an op's alone work = its single-process "
                                    "time)" if at_share else
                                    "set by the fit runs' compute phases (alone_from_compute_phases)"}

        def fit_at(q: float):
            return _fit_pool(runs, prof, grids, len(penalties) > 1, len(peers) > 1, bursts, refine, q, pairwise_a2a,
                             two_way if has_nic else None, a2a_cpu_grid, a2a_phase=a2a_phase,
                             rate_exponent_grid=rate_exponent_grid, **gamma_floor)
        skew = None
        if time_slice_s is None:   # the scheduler's slice from the measured rank skew, then refit at it
            time_slice_s, (best, pred, evaluations), skew = _slice_from_skew(runs, prof, fit_at, slice_grid,
                                                                            pairwise_a2a)
        else:
            best, pred, evaluations = fit_at(float(time_slice_s))
        from_phases, last, alternations = None, None, 0
        if pool_held == "compute-phases":   # the alone factor from the compute phases
            alone, from_phases = _alone_from_compute_phases(runs, prof, best, float(time_slice_s), pairwise_a2a,
                                                            ALONE_FROM_PHASES_GRID)
            best = best[:1] + (alone,) + best[2:]
        if a2a_cpu_last_arriver_grid is not None:   # the All-to-All CPU from the last arriver
            while True:   # with both observables, in turn until g holds (each shifts the other's match)
                cpu, measured_last, last = _a2a_cpu_from_last_arriver(runs, prof, best, float(time_slice_s),
                                                                      pairwise_a2a, a2a_cpu_last_arriver_grid)
                best = best[:6] + (cpu,) + best[7:]
                if from_phases is None or alternations >= MAX_ALTERNATIONS:
                    break
                alternations += 1
                alone, from_phases = _alone_from_compute_phases(runs, prof, best, float(time_slice_s),
                                                                pairwise_a2a, ALONE_FROM_PHASES_GRID)
                if alone == best[1]:
                    break
                best = best[:1] + (alone,) + best[2:]
            a2a_cpu_grid = (best[6],)
        if from_phases is not None:
            grids = (grids[0], (best[1],)) + tuple(grids[2:])
            from_phases["alternations"] = alternations
        if from_phases is not None or last is not None:   # the rest refitted with them held
            best, pred, more = _fit_pool(runs, prof, grids, len(penalties) > 1, len(peers) > 1, bursts, refine,
                                         float(time_slice_s), pairwise_a2a, two_way if has_nic else None,
                                         a2a_cpu_grid, last_arriver=measured_last if last else None,
                                         a2a_phase=a2a_phase, rate_exponent_grid=rate_exponent_grid, **gamma_floor)
            evaluations += more
        if last is not None:
            last["simulated_s"] = _simulated_last_arrivers(runs, prof, best, float(time_slice_s), pairwise_a2a,
                                                           measured_last)
        if from_phases is not None:   # the compute phases at the final parameters
            from_phases["simulated_s"] = {r.files[0]: predicted_compute(r.simulate_pool(prof, best, float(time_slice_s),
                                                                                        pairwise_a2a))
                                          for r in runs}
        k_cores, alone, wait, penalty, peer, burst, a2a_cpu, gamma = best
        pool = {"pool_cores": float(k_cores), "alone_factor": float(alone), "time_slice_s": float(time_slice_s),
                "pairwise_a2a": bool(pairwise_a2a),
                **({"a2a_cpu_s": float(a2a_cpu), "a2a_cpu_grid_s": list(a2a_cpu_last_arriver_grid or a2a_cpu_grid)}
                   if len(a2a_cpu_grid) > 1 or a2a_cpu_grid[0] > 0 or last else {}),
                **({"a2a_last_arriver": last} if last else {}),
                **({"held": held} if held else {}),
                **({"alone_from_compute_phases": from_phases} if from_phases else {}),
                **({"rank_skew": skew} if skew else {}),
                "release_spread": spread.spread,
                **({"step_release_spread": float(step_release_spread)} if step_release_spread is not None else {}),
                **({"compute_first": True} if compute_first else {}),
                **({"a2a_cpu_overlap": True} if a2a_cpu_overlap else {}),
                **({"fit_a2a_phase": _a2a_phase_record(runs, prof, best, float(time_slice_s), pairwise_a2a)}
                   if a2a_phase else {}),
                "release_measured": spread.to_dict()["per_file"], "release_repetitions": spread.rows,
                "meaning": "the fit runs' ranks share one machine's cores: the engine runs the ranks that compute "
                           "on the machine's cores in time slices of time_slice_s (0: processor sharing) at "
                           "pool_cores effective cores (a rank on a core runs at its alone speed, an op's alone "
                           "work is alone_factor x its priced seconds); with pairwise_a2a each rank pair of an "
                           "All-to-All exchanges as soon as both ranks are there, else the members of an "
                           "All-to-All over shaped links are released over the last release_spread of its time "
                           "(measured by real_backend.patterns; step_release_spread, when set: every All-to-All "
                           "across hosts, over that fraction, measured in steps by moesim.calibrate.arrivals); "
                           "a2a_cpu_s (when fitted): the alone CPU work each "
                           "member rank of an All-to-All then runs on the shared cores once its data has landed "
                           "(with a2a_cpu_overlap: from its arrival, beside the transfer, the call returning when "
                           "both are done; with compute_first: a released rank's compute goes ahead of it for one "
                           "slice); see moesim.engine.cpupool, moesim.engine.netbridge"}
        two_way_rate = ({"exponent": float(gamma), "reference_rate": reference_rate,
                         "grid": list(rate_exponent_grid),
                         **({} if rate_exponent_min is None else {"min": float(rate_exponent_min)})}
                        if rate_dependent and has_nic else None)
        return _write_fit(cal, prof, runs, pred, wait, penalty, peer, burst, configured, has_nic, evaluations, pool,
                          two_way_rate)
    if has_nic:   # the fixed share: no staggered release either
        prof["calibration"]["links"]["nic"].pop("release_spread", None)
    cache: dict = {}
    results = []
    for burst in bursts:
        best = min(itertools.product(wait_grid, penalties, peers), key=lambda x: _loss(runs, prof, x, cache, burst))
        # refine: halve the steps around the best point a few times
        steps = [0.75 * float(np.diff(wait_grid).min(initial=2.5e-3)) / 2, 0.05 if len(penalties) > 1 else 0.0,
                 0.05 if len(peers) > 1 else 0.0]
        for _ in range(4):
            moves = itertools.product(*[(-1, 0, 1) if h > 0 else (0,) for h in steps])
            cands = [tuple(max(0.0, b + m * h) for b, m, h in zip(best, mv, steps)) for mv in moves]
            best = min(cands, key=lambda x: _loss(runs, prof, x, cache, burst))
            steps = [h / 2 for h in steps]
        results.append((_loss(runs, prof, best, cache, burst), best, burst))
    _, (wait, penalty, peer), burst = min(results, key=lambda x: x[0])
    pred = cache[_key((wait, penalty, peer), burst)][1]
    return _write_fit(cal, prof, runs, pred, wait, penalty, peer, burst, configured, has_nic, len(cache), None)


def _machine_cores(runs: list[_Run]) -> float:
    """The cores of the machine every fit run shared (their ``shared_cpu_cores``)."""
    cores = {float(r.topo.graph.graph.get("shared_cpu_cores") or 0) for r in runs}
    if len(cores) != 1 or not min(cores) > 0:
        raise MoesimError(f"a pool held at the machine's cores needs fit runs on one machine that record its cores "
                          f"(shared_cpu_cores); they record {sorted(cores)}")
    return cores.pop()


def _core_share(prof: dict) -> float:
    """The contention microbenchmarks' core share of the profile (``calibration.contention.core_share``)."""
    share = (prof.get("calibration", {}).get("contention") or {}).get("core_share")
    if not isinstance(share, (int, float)) or not 0.0 < float(share) <= 1.0:
        raise MoesimError("a pool held at the measured core share needs the profile's calibration.contention."
                          f"core_share in (0, 1] (GEMM microbenchmarks at 1 and at all ranks), got {share!r}")
    return float(share)


def _alone_from_compute_phases(runs: list[_Run], prof: dict, best: tuple, time_slice_s: float, pairwise_a2a: bool,
                               grid) -> tuple[float, dict]:
    """The alone factor g among ``grid`` whose simulated compute phases per step (every phase but the
    communication ones, :func:`predicted_compute`), with the other parameters of ``best``, come closest
    in root mean square relative error to the ones every fit run measured. Returns (g, the record for the
    profile)."""
    from moesim.calibrate.skew import pick_closest
    measured = np.array([r.measured_compute for r in runs])
    if not (measured > 0).all():
        bad = next(r.files[0] for r, m in zip(runs, measured) if not m > 0)
        raise MoesimError(f"{bad}: no compute phase times to set the alone factor by (a run table with phase rows "
                          f"is needed)")
    sims: dict = {}

    def at(g: float) -> np.ndarray:
        point = (best[0], g) + tuple(best[2:])
        sims[g] = [predicted_compute(r.simulate_pool(prof, point, time_slice_s, pairwise_a2a)) for r in runs]
        return np.asarray(sims[g]) / measured           # relative: every run weighs alike
    chosen, rms = pick_closest(grid, np.ones(len(runs)), at)
    record = {"measured_s": {r.files[0]: float(m) for r, m in zip(runs, measured)},
              "simulated_before_refit_s": {r.files[0]: float(v) for r, v in zip(runs, sims[chosen])},
              "rms_relative_by_alone_factor": {f"{q:g}": v for q, v in rms.items()},
              "meaning": "the compute phases per step (every phase but dispatch, combine, the gradient all-reduce "
                         "and tensor-parallel communication; mean over ranks, median over steps), on every fit run; "
                         "the alone factor is the candidate whose simulated compute phases, with the parameters "
                         "fitted first (cores held at the machine's), come closest in root mean square relative "
                         "error; it is then held while the rest is refitted on the step times"}
    return chosen, record


def _a2a_phase_record(runs: list[_Run], prof: dict, best: tuple, time_slice_s: float, pairwise_a2a: bool) -> dict:
    """Measured and fitted All-to-All phase group per fit run (s per step), for the profile's record."""
    pred = [predicted_a2a(r.simulate_pool(prof, best, time_slice_s, pairwise_a2a)) for r in runs]
    return {"measured_s": {r.files[0]: r.measured_a2a for r in runs},
            "fitted_s": {r.files[0]: float(p) for r, p in zip(runs, pred)},
            "meaning": "the All-to-All phase group (dispatch + combine, forward and backward, per step) of each "
                       "fit run joined its step time in the loss of the shared-core fit"}


def _write_fit(cal, prof: dict, runs: list[_Run], pred: np.ndarray, wait: float, penalty: float, peer: float,
               burst: float, configured: float, has_nic: bool, evaluations: int, pool: dict | None,
               two_way_rate: dict | None = None):
    """Write the fitted parameters into ``cal.profile`` and record the fit (``two_way_rate``: the rate
    exponent γ and reference rate of a rate-dependent two-way loss, bytes/s)."""
    meas = np.array([r.measured for r in runs])
    prof["network"]["receiver_wait_s"] = float(wait)
    if has_nic:
        nic = prof["calibration"]["links"]["nic"]
        for key, v in (("two_way_penalty", penalty), ("peer_penalty", peer), ("burst_s", burst)):
            if v > 0:
                nic[key] = float(v)
            else:
                nic.pop(key, None)
        if two_way_rate is not None and two_way_rate["exponent"] != 0.0 and (penalty > 0 or peer > 0):
            nic["two_way_rate_exponent"] = two_way_rate["exponent"]
            nic["two_way_reference_rate"] = two_way_rate["reference_rate"]
        else:
            nic.pop("two_way_rate_exponent", None)
            nic.pop("two_way_reference_rate", None)
    cal_sec = prof.setdefault("calibration", {})
    cal_sec["insitu"] = {
        "receiver_wait_s": float(wait), "nic_two_way_penalty": float(penalty), "nic_peer_penalty": float(peer),
        "nic_burst_s": float(burst), "nic_burst_configured_s": float(configured),
        "nic_burst_why": "the tc bucket lets a refilled link send its burst at line rate, but TCP paces at its "
                         "bandwidth estimate and uses only part of it: chosen among fractions of the configured bucket",
        "latency_per_message_s": float(prof["network"]["latency_per_message_s"]),
        "fitted_on": [f for r in runs for f in r.files], "configurations": len(runs), "evaluations": evaluations,
        "why": "in a step, R ranks share C < R cores: a collective waits for descheduled receivers, "
               "overlapped with its transfer; shaped links lose goodput under two-way multi-peer "
               "traffic (see moesim.calibrate.insitu)",
        "residuals": residual_summary(pred, meas),
    }
    if two_way_rate is not None:
        cal_sec["insitu"]["nic_two_way_rate"] = {
            **two_way_rate, "meaning": "b and c hold at reference_rate (bytes/s, the lowest shaped rate of the fit "
                                       "runs) and scale by (rate / reference_rate) ** -exponent; the exponent was "
                                       "scanned over grid and refined with the rest"}
    if pool is not None:
        cal_sec["insitu"]["cpu_pool"] = {"pool_cores": pool["pool_cores"], "alone_factor": pool["alone_factor"],
                                         **({"a2a_cpu_s": pool["a2a_cpu_s"]} if "a2a_cpu_s" in pool else {})}
        cal_sec["cpu_pool"] = pool
    else:
        cal_sec.pop("cpu_pool", None)
    cal.residuals["insitu_fit_steps"] = residual_summary(pred, meas)
    cal_sec.setdefault("residuals", {})["insitu_fit_steps"] = residual_summary(pred, meas)
    return cal
