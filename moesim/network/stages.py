"""Collectives as ordered stages; a stage is a batch of flows (src rank, dst rank, bytes) that start
together and end when the last byte of the last flow has arrived."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from moesim.network.symmetry import digest


class Stage:
    """Base class. ``repeat``: the stage runs that many times back to back, each run waiting for the
    previous one's last byte. ``latency_steps``: how many message latencies (path latency plus the
    per-message latency) each flow pays in sequence: a pipelined ring streams all its steps' bytes as
    one run and pays one latency per step (the alpha-beta model's ``steps * alpha``)."""

    repeat: int = 1
    latency_steps: int = 1
    label: str = ""

    @property
    def src(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dst(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def nbytes(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def ranks(self) -> np.ndarray:
        """Ranks that send or receive in this stage."""
        return np.unique(np.concatenate([self.src, self.dst]))


class UniformStage(Stage):
    """Every rank of ``ranks`` sends ``bytes_per_flow`` bytes to every other rank (a uniform
    All-to-All); the flow arrays are built only on demand."""

    def __init__(self, ranks, bytes_per_flow: float, repeat: int = 1, label: str = ""):
        r = np.unique(np.asarray(ranks, dtype=np.int64))
        if not (np.isfinite(bytes_per_flow) and bytes_per_flow > 0):
            raise ValueError(f"bytes per flow must be positive and finite, got {bytes_per_flow!r}")
        self.ranks_ = r
        self.bytes_per_flow = float(bytes_per_flow)
        self.repeat = int(repeat)
        self.label = label
        self.signature = digest(b"uniform", r.tobytes())

    @property
    def ranks(self) -> np.ndarray:
        return self.ranks_

    @property
    def num_flows(self) -> int:
        n = len(self.ranks_)
        return n * (n - 1)

    @property
    def total_bytes(self) -> float:
        return self.num_flows * self.bytes_per_flow

    @cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ranks_)
        a = np.repeat(np.arange(n), n)
        b = np.tile(np.arange(n), n)
        keep = a != b
        return self.ranks_[a[keep]], self.ranks_[b[keep]]

    @property
    def src(self) -> np.ndarray:
        return self._pairs[0]

    @property
    def dst(self) -> np.ndarray:
        return self._pairs[1]

    @property
    def nbytes(self) -> np.ndarray:
        return np.full(self.num_flows, self.bytes_per_flow)

    def __repr__(self) -> str:
        return f"UniformStage({len(self.ranks_)} ranks, {self.bytes_per_flow:g} B per flow, repeat={self.repeat})"


class FlowStage(Stage):
    """An explicit list of flows. Self flows and zero-byte flows are dropped. Identical flows (same
    pair, same bytes) are bundled into one weighted cell."""

    def __init__(self, src, dst, nbytes, repeat: int = 1, label: str = "", latency_steps: int = 1):
        s = np.atleast_1d(np.asarray(src, dtype=np.int64))
        t = np.atleast_1d(np.asarray(dst, dtype=np.int64))
        b = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), s.shape)
        if s.shape != t.shape:
            raise ValueError("src and dst must have the same length")
        if np.any(~np.isfinite(b)) or np.any(b < 0):
            raise ValueError("flow sizes must be finite and non-negative")
        keep = (s != t) & (b > 0)
        self._src, self._dst, self._nbytes = s[keep], t[keep], np.array(b[keep])
        self.repeat = int(repeat)
        self.latency_steps = int(latency_steps)
        self.label = label
        bits = self._nbytes.view(np.int64)
        order = np.lexsort((bits, self._dst, self._src))
        s_, t_, b_ = self._src[order], self._dst[order], bits[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = (s_[1:] != s_[:-1]) | (t_[1:] != t_[:-1]) | (b_[1:] != b_[:-1])
        starts = np.nonzero(new)[0]
        self.cell_src, self.cell_dst = s_[starts], t_[starts]
        self.cell_bytes = b_[starts].view(np.float64)
        self.cell_count = np.diff(np.append(starts, len(order))).astype(np.float64)
        self.cell_of_flow = np.empty(len(order), dtype=np.int64)
        self.cell_of_flow[order] = np.cumsum(new) - 1
        self.signature = digest(b"flows", self.cell_src.tobytes(), self.cell_dst.tobytes(),
                                self.cell_bytes.tobytes(), self.cell_count.tobytes())

    @property
    def src(self) -> np.ndarray:
        return self._src

    @property
    def dst(self) -> np.ndarray:
        return self._dst

    @property
    def nbytes(self) -> np.ndarray:
        return self._nbytes

    @property
    def num_flows(self) -> int:
        return len(self._src)

    @property
    def total_bytes(self) -> float:
        return float(self._nbytes.sum())

    def __repr__(self) -> str:
        return f"FlowStage({self.num_flows} flows, {self.total_bytes:g} B, repeat={self.repeat})"


@dataclass
class Collective:
    """A collective operation: ``stages`` run in order (each ``repeat`` times), after a launch overhead."""
    op: str
    algorithm: str
    ranks: np.ndarray
    stages: list[Stage] = field(default_factory=list)
    bytes_per_rank: float | None = None

    @property
    def num_stage_runs(self) -> int:
        return sum(s.repeat for s in self.stages)

    @property
    def total_bytes(self) -> float:
        """Bytes put on the network, counting repeats."""
        return float(sum(s.total_bytes * s.repeat for s in self.stages))
