"""Turn work into seconds: GEMMs by a shape-dependent efficiency, memory-bound ops by bytes over
bandwidth, both as a roofline with a per-op overhead. Vectorised over numpy arrays of shapes."""
from __future__ import annotations

import numpy as np

from moesim.cost.profile import Profile


def with_overhead(work, overhead_s: float, overlaps: bool) -> np.ndarray:
    """Seconds of one op doing ``work`` seconds of device work with a per-op overhead: added to the
    work, or overlapping it (the larger of the two: a GPU stream the host feeds ahead)."""
    work = np.asarray(work, dtype=float)
    return np.maximum(work, overhead_s) if overlaps else work + overhead_s


class CostModel:
    """Seconds for compute ops on one device profile.

    GEMM (M x K) @ (K x N): ``t = overhead + max(2MNK / (peak * eff), bytes / (bw * mem_eff))`` with
    ``eff = efficiency_max * g(M) g(N) g(K)``, ``g(x) = x / (x + half_size)``: small dimensions leave
    the tensor cores idle; large ones saturate at ``efficiency_max``. Where the profile's overhead
    overlaps the work (``op_overhead_overlaps``: a GPU stream the host feeds asynchronously, so an op
    costs the larger of its issue time and its kernel time), ``t = max(overhead, ...)`` instead."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.device = profile.device

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for a dtype (fp16 and bf16 stand in for each other when one is missing)."""
        peaks = self.device.peak_flops
        if dtype in peaks:
            return peaks[dtype]
        alt = {"bf16": "fp16", "fp16": "bf16"}.get(dtype)
        if alt in peaks:
            return peaks[alt]
        return max(peaks.values())

    def gemm_efficiency(self, m, n, k) -> np.ndarray:
        """Fraction of peak a GEMM of shape (m, n, k) reaches (arrays broadcast)."""
        half = self.device.gemm_half_size
        m, n, k = (np.asarray(x, dtype=float) for x in (m, n, k))
        g = lambda x: x / (x + half) if half > 0 else np.ones_like(x)  # noqa: E731
        return self.device.gemm_efficiency_max * g(m) * g(n) * g(k)

    def gemm_time(self, m, n, k, dtype: str, count=1) -> np.ndarray:
        """Seconds for ``count`` GEMMs of shape (m, n, k) run back to back; 0 where m*n*k == 0."""
        m, n, k, count = (np.asarray(x, dtype=float) for x in (m, n, k, count))
        elem = 4.0 if dtype == "fp32" else 2.0
        flops = 2.0 * m * n * k
        nbytes = elem * (m * k + k * n + m * n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_compute = np.where(flops > 0, flops / (self.peak(dtype) * self.gemm_efficiency(m, n, k)), 0.0)
        t_memory = nbytes / (self.device.memory_bandwidth * self.device.memory_efficiency)
        t = self._with_overhead(np.maximum(t_compute, t_memory))
        return np.where(flops > 0, t * count, 0.0)

    def memory_time(self, nbytes, count=1) -> np.ndarray:
        """Seconds for memory-bound work moving ``nbytes`` bytes (element-wise ops, optimizer, KV reads)."""
        nbytes, count = np.asarray(nbytes, dtype=float), np.asarray(count, dtype=float)
        t = self._with_overhead(nbytes / (self.device.memory_bandwidth * self.device.memory_efficiency))
        return np.where(nbytes > 0, t * count, 0.0)

    def _with_overhead(self, work: np.ndarray) -> np.ndarray:
        return with_overhead(work, self.device.op_overhead_s, self.device.op_overhead_overlaps)
