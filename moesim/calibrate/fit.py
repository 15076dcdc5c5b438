"""Fit the cost model's parameters from microbenchmark medians.

Compute (one rank alone on the machine, then shared): the cost model prices a GEMM as
``op_overhead + 2mnk / (peak * eff_max * g(m) g(n) g(k))`` with ``g(x) = x / (x + half_size)`` and a
memory-bound op as ``op_overhead + bytes / memory_bandwidth``. :func:`fit_compute` fits ``eff_max``,
``half_size``, ``memory_bandwidth`` and ``op_overhead`` jointly on single-process rows (relative
least squares; ``half_size`` by a zooming grid, the others exactly by non-negative least squares;
``efficiency_max <= 1`` against a datasheet peak). GPU rows timed with ops in a queue are priced
``max(op_overhead, work)`` instead (the host issues ahead of the device), all four by a zooming grid.

Contention: R ranks on C cores. The ranks of an SPMD step compute at the same time, so each gets a
share ``f`` of a core (``C/R`` when R > C). :func:`fit_contention` measures ``f`` as the median
ratio single/shared time of GEMMs long enough (>= ``min_seconds`` alone) for the scheduler to
time-slice them fairly; shorter ones finish inside one slice and would hide the sharing. The
profile for a rank of the shared machine has ``peak * f``, ``memory_bandwidth * f`` and
``op_overhead / f``.

Network: :func:`fit_network` fits the ``nic`` links' ``efficiency`` (of the tc rate), the
``max_bandwidth`` of the ``stack`` and ``loopback`` links (the kernel's TCP copies on the ranks'
cores: to and from the veth, and between ranks of one host), the ``nic`` link latency, the
per-message latency and the per-collective overhead, so that the simulator's own collective model
(:mod:`moesim.calibrate.netmodel`) reproduces the measured All-to-All and all-reduce times. The
``nic`` efficiency comes from all rows with the rest (``joint``), or from the one-way rows alone
(``one-way``, the default: shaped rows of at least 4 MiB that the two-way penalty does not touch, i.e. rings of
three or more ranks), with the rest held at the joint fit, so that the two-way loss of the
All-to-Alls is left to the penalty ``b`` instead of lowering every flow's rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moesim.calibrate.linfit import nnls_relative, refine_grid
from moesim.calibrate.netmodel import CLASSES, LinkParams, collective_features
from moesim.cost.model import with_overhead
from moesim.errors import MoesimError


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas)) if len(meas) else float("nan")


def _maxape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.max(np.abs(pred - meas) / meas)) if len(meas) else float("nan")


def residual_summary(pred, meas) -> dict:
    pred, meas = np.asarray(pred, dtype=float), np.asarray(meas, dtype=float)
    return {"rows": int(len(meas)), "mape": _mape(pred, meas), "max_error": _maxape(pred, meas)}


# ---------------------------------------------------------------------------------------------
# compute
# ---------------------------------------------------------------------------------------------
@dataclass
class ComputeFit:
    peak_flops: float              # FLOP/s of one core (the reference the efficiency is relative to)
    efficiency_max: float
    half_size: float
    memory_bandwidth: float | None  # bytes/s (None: no memory rows)
    op_overhead_s: float
    residuals: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None
    #: the overhead overlaps the work (an op costs the larger of the two) instead of adding to it
    overlapped: bool = False

    def _with_overhead(self, work: np.ndarray) -> np.ndarray:
        return with_overhead(work, self.op_overhead_s, self.overlapped)

    def gemm_seconds(self, m, n, k) -> np.ndarray:
        m, n, k = (np.asarray(x, dtype=float) for x in (m, n, k))
        g = lambda x: x / (x + self.half_size)  # noqa: E731
        return self._with_overhead(2 * m * n * k / (self.peak_flops * self.efficiency_max * g(m) * g(n) * g(k)))

    def memory_seconds(self, nbytes) -> np.ndarray:
        return self._with_overhead(np.asarray(nbytes, dtype=float) / self.memory_bandwidth)


def fit_compute(gemm: pd.DataFrame, memory: pd.DataFrame, peak_flops: float,
                half_range: tuple[float, float] = (1e-2, 1e5), bounded: bool = False,
                overlapped: bool = False) -> ComputeFit:
    """``gemm``: columns m, n, k, seconds (medians, one process); ``memory``: size_bytes, seconds.

    ``bounded``: ``peak_flops`` is a true ceiling (a datasheet peak), so efficiency_max is fitted
    subject to <= 1; otherwise (an estimated CPU peak) it is free and the profile caps it.
    ``overlapped``: the rows time ops in a queue (a GPU stream fed asynchronously), so an op costs
    ``max(op_overhead, work)`` instead of ``op_overhead + work`` (see :func:`_fit_overlapped`)."""
    if gemm is None or not len(gemm):
        raise MoesimError("no GEMM measurements to fit the compute efficiency (run real_backend.microbench "
                          "with --kinds gemm)")
    if not peak_flops > 0:
        raise MoesimError("the reference peak FLOP/s must be positive")
    m, n, k = (gemm[c].to_numpy(dtype=float) for c in ("m", "n", "k"))
    tg = gemm["seconds"].to_numpy(dtype=float)
    mb = memory["size_bytes"].to_numpy(dtype=float) if memory is not None and len(memory) else np.zeros(0)
    tm = memory["seconds"].to_numpy(dtype=float) if memory is not None and len(memory) else np.zeros(0)
    meas = np.concatenate([tg, tm])
    flop = 2 * m * n * k
    if overlapped:
        return _finish_compute(_fit_overlapped(m, n, k, tg, mb, tm, peak_flops, half_range, bounded),
                               m, n, k, tg, mb, tm, bounded)

    def design(half: np.ndarray) -> np.ndarray:
        """(cand, rows, 3): columns overhead, 1/eff_max, 1/memory_bandwidth; rows scaled by 1/meas."""
        h = half[:, None]
        ggg = (m / (m + h)) * (n / (n + h)) * (k / (k + h))
        cols_g = np.stack([np.ones_like(ggg), flop / (peak_flops * ggg), np.zeros_like(ggg)], axis=-1)
        cols_m = np.broadcast_to(np.stack([np.ones_like(mb), np.zeros_like(mb), mb], axis=-1), (len(half), len(mb), 3))
        X = np.concatenate([cols_g, cols_m], axis=1)
        return X / meas[None, :, None]

    def solve(half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients and SSE per candidate with efficiency_max <= 1 (1/eff >= 1): where the free
        optimum breaks that bound, the constrained optimum of this convex problem lies on it."""
        X = design(half)
        ones = np.ones((len(half), len(meas)))
        coef, sse = nnls_relative(X, ones)
        over = (coef[:, 1] < 1.0) if bounded else np.zeros(len(half), dtype=bool)
        if over.any():
            c2, s2 = nnls_relative(X[over][:, :, [0, 2]], ones[over] - X[over][:, :, 1])
            coef[over] = np.stack([c2[:, 0], np.ones(len(c2)), c2[:, 1]], axis=1)
            sse[over] = s2
        return coef, sse

    (half,), _ = refine_grid(lambda cands: solve(cands[:, 0])[1], np.array([half_range[0]]),
                             np.array([half_range[1]]), points=41, rounds=8, log=np.array([True]))
    coef, _ = solve(np.array([half]))
    overhead, inv_eff, inv_bw = coef[0]
    if inv_eff <= 0:
        raise MoesimError("the GEMM fit degenerated (no time is explained by FLOPs); check the GEMM table")
    eff = 1.0 / inv_eff
    bw = (1.0 / inv_bw) if (len(mb) and inv_bw > 0) else None
    return _finish_compute(ComputeFit(peak_flops, eff, half, bw, overhead), m, n, k, tg, mb, tm, bounded)


def _fit_overlapped(m, n, k, tg, mb, tm, peak_flops: float, half_range: tuple[float, float],
                    bounded: bool) -> ComputeFit:
    """``max(op_overhead, work)`` for every row: relative least squares over (op_overhead,
    half_size, efficiency_max, memory_bandwidth) by a zooming grid in log space (the max has kinks,
    so no exact linear step; 28 rows and 11^4 points a round are cheap)."""
    flop = 2 * m * n * k
    lo_t, hi_t = float(min(tg.min(), tm.min() if len(tm) else np.inf)), float(max(tg.max(), tm.max() if len(tm) else 0))
    bw_lo = (mb / tm).min() / 10 if len(mb) else 1.0
    bw_hi = (mb / tm).max() * 10 if len(mb) else 1.0
    lo = np.array([lo_t / 100, half_range[0], 1e-4, bw_lo])
    hi = np.array([hi_t, half_range[1], 1.0 if bounded else 10.0, bw_hi])

    def objective(c: np.ndarray) -> np.ndarray:
        o, h, eff, bw = (c[:, i:i + 1] for i in range(4))
        ggg = (m / (m + h)) * (n / (n + h)) * (k / (k + h))
        rg = (np.maximum(o, flop / (peak_flops * eff * ggg)) - tg) / tg
        rm = (np.maximum(o, mb / bw) - tm) / tm if len(mb) else np.zeros((len(c), 0))
        return (rg ** 2).sum(axis=1) + (rm ** 2).sum(axis=1)

    (o, h, eff, bw), _ = refine_grid(objective, lo, hi, points=11, rounds=14, log=np.ones(4, dtype=bool))
    return ComputeFit(peak_flops, float(eff), float(h), float(bw) if len(mb) else None, float(o), overlapped=True)


def _finish_compute(fit: ComputeFit, m, n, k, tg, mb, tm, bounded: bool) -> ComputeFit:
    """The fit's notes, residuals and table of measured against fitted seconds."""
    eff = fit.efficiency_max
    if bounded and eff >= 1.0 - 1e-12:
        # the bound holds: the fitted curve reaches the datasheet peak in its limit
        fit.residuals["note"] = ("efficiency_max at its bound 1: the fitted curve reaches the given peak for "
                                 "large GEMMs; if they truly beat it, raise --peak-flops")
    elif eff > 1.0:
        # an estimated peak below what was measured: the profile caps at 1, say so
        fit.residuals["note"] = (f"measured GEMMs beat the reference peak by {eff:.2f}x; raise --peak-flops")
    pg = fit.gemm_seconds(m, n, k)
    fit.residuals["gemm"] = residual_summary(pg, tg)
    rows = [pd.DataFrame({"kind": "gemm", "shape": [f"{int(a)}x{int(b)}x{int(c)}" for a, b, c in zip(m, n, k)],
                          "measured_s": tg, "fitted_s": pg})]
    if len(mb) and fit.memory_bandwidth:
        pm = fit.memory_seconds(mb)
        fit.residuals["memory"] = residual_summary(pm, tm)
        rows.append(pd.DataFrame({"kind": "memory", "shape": [f"{int(b)}B" for b in mb], "measured_s": tm, "fitted_s": pm}))
    fit.table = pd.concat(rows, ignore_index=True)
    return fit


@dataclass
class ContentionFit:
    factor: float            # share of a core each rank gets (measured)
    nominal: float           # cores / ranks (capped at 1)
    ranks: int
    cores: int
    rows_used: int
    detail: list = field(default_factory=list)


def fit_contention(gemm_all: pd.DataFrame, cores: int, ranks: int, min_seconds: float = 5e-3) -> ContentionFit:
    """Share of a core per rank when ``ranks`` processes compute on ``cores`` cores.

    ``gemm_all``: GEMM medians with a ``world_size`` column (1 = alone; ``ranks`` = shared)."""
    nominal = min(1.0, cores / ranks) if ranks > 0 else 1.0
    alone = gemm_all[gemm_all["world_size"] == 1].set_index(["m", "n", "k"])["seconds"]
    shared = gemm_all[gemm_all["world_size"] == ranks].set_index(["m", "n", "k"])["seconds"]
    common = alone.index.intersection(shared.index)
    ratios, detail = [], []
    for key in common:
        if alone[key] >= min_seconds:
            ratios.append(alone[key] / shared[key])
            detail.append({"shape": "x".join(str(int(v)) for v in key), "alone_s": float(alone[key]),
                           "shared_s": float(shared[key]), "share": float(alone[key] / shared[key])})
    if ratios:
        factor = float(np.median(ratios))
    else:
        factor = nominal
    return ContentionFit(min(1.0, factor), nominal, ranks, cores, len(ratios), detail)


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------
@dataclass
class NetworkFit:
    links: dict                   # class -> LinkParams
    latency_per_message_s: float
    collective_overhead_s: float
    residuals: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None
    efficiency_from: dict = field(default_factory=lambda: {"rows": "joint"})   # how the nic efficiency was fitted


def _rows_features(coll: pd.DataFrame, nic_two_way: float = 0.0, burst_s: float = 0.0,
                   cache: dict | None = None) -> list:
    """Per row the simulator's features; the two-way penalty and burst act on shaped (tc tbf) rows only."""
    cache = {} if cache is None else cache
    feats = []
    for r in coll.itertuples(index=False):
        rate = float(r.rate_bits or 0.0) / 8.0
        b, burst = (float(nic_two_way), burst_s * rate) if rate > 0 else (0.0, 0.0)
        key = (r.kind, r.group, int(r.hosts), int(r.ranks_per_host), float(r.size_bytes), b, burst)
        if key not in cache:
            cache[key] = collective_features(*key[:5], nic_two_way=b, nic_burst=burst)
        feats.append(cache[key])
    return feats


TWO_WAY_GRID = tuple(np.round(np.arange(0.0, 0.41, 0.05), 3))
BURST_GRID_S = (0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01)
NIC_EFFICIENCY_FROM = ("joint", "one-way")
NIC_EFFICIENCY_DEFAULT = "one-way"         # adopted by its pre-registered rule (calibration/README.md)
# the rate, not the per-message terms, sets a ring's time from here on: at 1 MiB those terms, fitted
# mostly on All-to-Alls, are 5-15 % of a 4-rank ring's time and over-price it (the committed campaigns)
ONE_WAY_MIN_BYTES = 4 << 20
_TWO_WAY_PROBE = 0.5     # a penalty that changes every two-way row's features (any b > 0 would do)


def one_way_rows(coll: pd.DataFrame, cache: dict | None = None) -> np.ndarray:
    """Shaped rows that cross a ``nic`` link and whose simulated time the two-way penalty does not
    change: no rank pair sends both ways over it (rings of three or more ranks; not All-to-Alls, not
    two-rank rings). Unshaped rows are never one-way here: the penalty acts on shaped links only."""
    cache = {} if cache is None else cache
    plain = _rows_features(coll, 0.0, 0.0, cache)
    probed = _rows_features(coll, _TWO_WAY_PROBE, 0.0, cache)
    shaped = coll["rate_bits"].to_numpy(dtype=float) > 0
    same = np.array([bool(np.any(a.unit_time.get("nic", 0.0) > 0))
                     and np.allclose(a.unit_time["nic"], b.unit_time["nic"], rtol=1e-9, atol=0.0)
                     for a, b in zip(plain, probed)], dtype=bool)
    return shaped & same


def fit_network(coll: pd.DataFrame, min_bandwidth: float = 1e5, max_bandwidth: float = 1e11,
                tbf_effects: bool = False, two_way_grid=TWO_WAY_GRID, burst_grid=BURST_GRID_S,
                select_min_bytes: float = 1 << 20, nic_efficiency: str = NIC_EFFICIENCY_DEFAULT,
                one_way_min_bytes: float = ONE_WAY_MIN_BYTES) -> NetworkFit:
    """``coll``: collective medians (``tables.collective_medians``) from one or more testbeds.

    ``nic_efficiency``: ``joint`` fits the shaped links' efficiency with everything else on all rows;
    ``one-way`` (default) then re-fits it alone on the one-way rows (:func:`one_way_rows`) of at least
    ``one_way_min_bytes``, the other parameters held (it fails when shaped rows are measured but no
    such row; without shaped rows there is no efficiency to fit).

    With ``tbf_effects`` (off by default), two optional ``nic`` mechanisms of the fluid network (:mod:`moesim.network.fluid`) are chosen on
    grids: the two-way penalty ``b`` (only when shaped All-to-Alls over more than 2 hosts were measured,
    so that rings of three or more, which are one-way, and All-to-Alls, which are two-way, both appear) and the token-bucket burst ``burst_s``
    (seconds at the tc rate; only with shaped rows). For each candidate pair the other parameters are
    fitted as below; the pair with the smallest relative squared error on the bandwidth-bound rows
    (at least ``select_min_bytes``; smaller rows are dominated by per-message costs whose repetition
    noise is larger than the millisecond effects chosen here) wins."""
    if coll is None or not len(coll):
        raise MoesimError("no All-to-All / all-reduce measurements to fit the network (run "
                          "real_backend.microbench on the testbed)")
    coll = coll.reset_index(drop=True)
    shaped = coll["rate_bits"].to_numpy(dtype=float) > 0
    a2a_hosts = coll.loc[shaped & (coll["kind"] == "all_to_all").to_numpy(), "hosts"].unique()
    b_grid = tuple(two_way_grid) if tbf_effects and len(a2a_hosts) and max(a2a_hosts) > 2 else (0.0,)
    s_grid = tuple(burst_grid) if tbf_effects and shaped.any() else (0.0,)
    if nic_efficiency not in NIC_EFFICIENCY_FROM:
        raise MoesimError(f"nic efficiency: expected one of {', '.join(NIC_EFFICIENCY_FROM)}, got {nic_efficiency!r}")
    big = (coll["size_bytes"] >= select_min_bytes).to_numpy()
    rows = big if big.any() else np.ones(len(coll), bool)
    best, cache = None, {}
    eff_rows = None
    if nic_efficiency == "one-way" and shaped.any():
        eff_rows = one_way_rows(coll, cache) & (coll["size_bytes"] >= one_way_min_bytes).to_numpy()
        if not eff_rows.any():
            raise MoesimError(f"nic efficiency 'one-way' needs shaped one-way collectives of at least "
                              f"{one_way_min_bytes:.0f} bytes (all-reduce rings of three or more ranks over tc-shaped "
                              f"links); these tables have none: measure them, or fit the efficiency 'joint'")
    for b in b_grid:
        for burst in s_grid:
            feats = _rows_features(coll, b, burst, cache)
            fit = _fit_network_at(coll, feats, b, burst, min_bandwidth, max_bandwidth, eff_rows)
            t = fit.table
            err = float((((t["fitted_s"] - t["seconds"]) / t["seconds"]).to_numpy()[rows] ** 2).sum())
            if best is None or err < best[0] - 1e-12:
                best = (err, fit)
    return best[1]


def _fit_network_at(coll: pd.DataFrame, feats: list, nic_two_way: float, burst_s: float, min_bandwidth: float,
                    max_bandwidth: float, efficiency_rows: np.ndarray | None = None) -> NetworkFit:
    """All parameters on all rows; then, with ``efficiency_rows``, the ``nic`` efficiency alone again
    on those rows (the others held)."""
    meas = coll["seconds"].to_numpy(dtype=float)
    rate = coll["rate_bits"].to_numpy(dtype=float) / 8.0          # bytes/s, 0 = unshaped
    shaped = rate > 0
    S = max(len(f.messages) for f in feats)
    n = len(feats)
    msgs = np.zeros((n, S))
    unit = {c: np.zeros((n, S)) for c in CLASSES}
    hops = np.zeros((n, S))
    for i, f in enumerate(feats):
        s = len(f.messages)
        msgs[i, :s] = f.messages
        hops[i, :s] = f.nic_hops
        for c in CLASSES:
            unit[c][i, :s] = f.unit_time.get(c, np.zeros(s))
    uses = {c: bool((unit[c] > 0).any()) for c in CLASSES}
    have_shaped = bool(shaped.any())
    # linear unknowns: overhead, per-message latency, nic link latency
    X = np.stack([np.ones(n), msgs.sum(axis=1), hops.sum(axis=1)], axis=1)
    if not (hops > 0).any():
        X[:, 2] = 0.0
    Xw = X / meas[:, None]

    def transfer(c: np.ndarray) -> np.ndarray:
        """(cand, rows) transfer seconds for candidates (efficiency, stack max, loopback max). An
        unshaped veth is not a limit of its own: its copies are the ranks' (their ``stack`` links)."""
        e, bst, blo = c[:, 0:1], c[:, 1:2], c[:, 2:3]
        bw_nic = np.where(shaped[None, :], e * rate[None, :], np.inf)     # (cand, rows)
        per = np.maximum(unit["nic"][None] / bw_nic[..., None], unit["stack"][None] / bst[..., None])
        per = np.maximum(per, unit["loopback"][None] / blo[..., None])
        return per.sum(axis=2)

    def objective(c: np.ndarray) -> np.ndarray:
        y = 1.0 - transfer(c) / meas[None, :]
        _, sse = nnls_relative(Xw, y)
        return sse

    # a class no measured collective crosses stays pinned at max_bandwidth
    lo = np.array([0.2 if have_shaped else 1.0] + [min_bandwidth if uses[c] else max_bandwidth
                                                   for c in ("stack", "loopback")])
    hi = np.array([1.0, max_bandwidth, max_bandwidth])
    best, _ = refine_grid(objective, lo, hi, points=25, rounds=7, log=np.array([False, True, True]))
    best = best[None, :]
    coef, _ = nnls_relative(Xw, 1.0 - transfer(best) / meas[None, :])
    joint_efficiency = float(best[0, 0])
    if efficiency_rows is not None:
        sel = np.asarray(efficiency_rows, bool) & shaped
        fixed = (X @ coef[0])[sel]

        def one_way_objective(c: np.ndarray) -> np.ndarray:
            cand = np.concatenate([c, np.broadcast_to(best[:, 1:], (len(c), 2))], axis=1)
            return (((transfer(cand)[:, sel] + fixed) / meas[sel] - 1.0) ** 2).sum(axis=1)
        e_one, _ = refine_grid(one_way_objective, lo[:1], hi[:1], points=25, rounds=7)
        best[0, 0] = float(e_one[0])
    overhead, lat_msg, lat_nic = (float(x) for x in coef[0])
    e, bst, blo = (float(x) for x in best[0])
    links = {"nic": LinkParams(efficiency=e if have_shaped else None, latency_s=lat_nic,
                               two_way_penalty=float(nic_two_way), burst_s=float(burst_s) if have_shaped else 0.0),
             "stack": LinkParams(efficiency=None, max_bandwidth=bst if uses["stack"] else math.inf, latency_s=0.0),
             "loopback": LinkParams(efficiency=None, max_bandwidth=blo if uses["loopback"] else math.inf, latency_s=0.0)}
    pred = transfer(best)[0] + X @ coef[0]
    fit = NetworkFit(links, lat_msg, overhead)
    if efficiency_rows is not None:
        fit.efficiency_from = {"rows": "one-way", "rows_used": int(sel.sum()), "joint_efficiency": joint_efficiency}
    table = coll.assign(fitted_s=pred, ape=np.abs(pred - meas) / meas)
    fit.table = table
    fit.residuals["network"] = residual_summary(pred, meas)
    for (kind, group), d in table.groupby(["kind", "group"]):
        fit.residuals[f"{kind}:{group}"] = residual_summary(d["fitted_s"], d["seconds"])
    big = table["size_bytes"] >= 1 << 20
    if big.any():
        fit.residuals["network_ge_1MiB"] = residual_summary(table.loc[big, "fitted_s"], table.loc[big, "seconds"])
    if efficiency_rows is not None:
        fit.residuals["network_one_way_rows"] = residual_summary(pred[sel], meas[sel])
    return fit


# ---------------------------------------------------------------------------------------------
# framework: the real step's compute on one process
# ---------------------------------------------------------------------------------------------
@dataclass
class FrameworkFit:
    gemm_scale: float          # real GEMM-phase time / the microbench GEMM curve (>= 1: bias, GELU fusion, autograd)
    op_overhead_s: float       # per modelled op (framework dispatch, autograd, small kernels)
    memory_bandwidth: float    # bytes/s per modelled byte of memory-bound work
    residuals: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None


def phase_features(cfg, compute: ComputeFit, bucket_bytes: float) -> pd.DataFrame:
    """Per phase of one step of ``cfg`` on one rank (rank 0): GEMM seconds under the fitted curve
    (no overhead), modelled op launches, and memory-bound bytes, from the simulator's own workload."""
    from moesim.workload import build_program
    from moesim.workload.ops import Compute
    prog = build_program(cfg, bucket_bytes)
    g = lambda x: x / (x + compute.half_size)  # noqa: E731
    out: dict = {}
    for it in prog.items:
        if not isinstance(it, Compute):
            continue
        f = out.setdefault(it.phase, {"gemm_s": 0.0, "ops": 0.0, "bytes": 0.0})
        if it.kind == "gemm":
            m = np.asarray(it.m, dtype=float)
            m = m[0] if m.ndim >= 1 else m            # rank 0
            m = np.atleast_1d(m)
            live = m > 0
            t = 2 * m * it.n * it.k / (compute.peak_flops * compute.efficiency_max * g(m) * g(it.n) * g(it.k))
            f["gemm_s"] += float(np.where(live, t, 0.0).sum() * it.count)
            f["ops"] += float(live.sum() * it.count)
        else:
            nb = np.asarray(it.nbytes, dtype=float)
            nb = float(nb[0]) if nb.ndim >= 1 else float(nb)
            if nb > 0:
                f["bytes"] += nb * it.count
                f["ops"] += it.count
    return pd.DataFrame([{"phase": k, **v} for k, v in out.items()])


def fit_framework(runs: list, compute: ComputeFit, bucket_bytes: float) -> FrameworkFit:
    """``runs``: [(cfg, {phase: measured seconds})] of single-process steps. Fits, per modelled op
    and phase, ``measured = gemm_scale * gemm_s + op_overhead * ops + bytes / memory_bandwidth``
    (relative non-negative least squares over every phase of every run)."""
    rows = []
    for i, (cfg, phases) in enumerate(runs):
        feats = phase_features(cfg, compute, bucket_bytes)
        for r in feats.itertuples(index=False):
            m = phases.get(r.phase, 0.0)
            if m > 0 and (r.gemm_s > 0 or r.bytes > 0):
                rows.append({"run": i, "label": f"{cfg.moe.structure} k{cfg.moe.top_k} ep{cfg.parallel.ep}",
                             "phase": r.phase, "gemm_s": r.gemm_s, "ops": r.ops, "bytes": r.bytes, "measured_s": m})
    if not rows:
        raise MoesimError("no phase times in the single-process run tables to fit the framework overhead")
    d = pd.DataFrame(rows)
    meas = d["measured_s"].to_numpy()
    X = np.stack([d["gemm_s"], d["ops"], d["bytes"]], axis=1) / meas[:, None]
    coef, _ = nnls_relative(X, np.ones((1, len(d))))
    a, o, inv_bw = (float(x) for x in coef[0])
    pred = d["gemm_s"] * a + d["ops"] * o + d["bytes"] * inv_bw
    d["fitted_s"] = pred
    fit = FrameworkFit(a if a > 0 else 1.0, o, (1.0 / inv_bw) if inv_bw > 0 else compute.memory_bandwidth or 1e12, table=d)
    fit.residuals["framework_phases"] = residual_summary(pred, meas)
    step_p = d.groupby("run")["fitted_s"].sum()
    step_m = d.groupby("run")["measured_s"].sum()
    fit.residuals["framework_steps"] = residual_summary(step_p, step_m)
    return fit
