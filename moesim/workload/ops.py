"""The operation graph of one step, in SPMD form: one list of items that every rank runs, where
compute sizes may differ per rank (arrays indexed by rank) and collectives name their groups.

Items: :class:`Compute` (occupies the rank's compute stream), :class:`Launch` (starts a collective
asynchronously on its channel) and :class:`Wait` (the compute stream waits for a collective).
Units: FLOP, bytes; GEMM shapes are (M, N, K) for an (M x K) @ (K x N) product."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from moesim.phases import COMM_PHASES, PHASES  # noqa: F401  (re-exported)

Size = Union[float, np.ndarray]


@dataclass(frozen=True, eq=False)
class Compute:
    """A kernel (or a fused group of kernels). ``kind='gemm'`` uses (m, n, k, count); m may be an
    array over ranks ``(world,)`` or ``(world, x)`` (summed over x: grouped expert GEMMs).
    ``kind='memory'`` moves ``nbytes`` (scalar or per-rank array)."""

    name: str
    phase: str
    layer: int
    direction: str  # fwd | bwd | opt
    kind: str       # gemm | memory
    m: Size = 0.0
    n: float = 0.0
    k: float = 0.0
    count: float = 1.0
    nbytes: Size = 0.0

    def flops(self) -> Size:
        """FLOP of this op (per rank; array when m varies by rank)."""
        if self.kind != "gemm":
            return 0.0
        f = 2.0 * np.asarray(self.m, dtype=float) * self.n * self.k * self.count
        return f.sum(axis=-1) if f.ndim == 2 else f

    def bytes_moved(self, elem_bytes: float) -> Size:
        """Bytes read and written (per rank): a GEMM's operands and result, or ``nbytes``."""
        if self.kind != "gemm":
            return self.nbytes
        m = np.asarray(self.m, dtype=float)
        b = elem_bytes * (m * self.k + self.k * self.n + m * self.n) * self.count
        return b.sum(axis=-1) if b.ndim == 2 else b


@dataclass(frozen=True, eq=False)
class CollectiveSpec:
    """One collective of the program, run by every group in ``groups`` (tuples of global ranks).
    ``op``: all_to_all (``matrix[i, j]`` bytes from the i-th to the j-th member, same for every
    group), all_reduce / all_gather / reduce_scatter (``nbytes`` per rank buffer).
    ``channel`` is the stream it queues on: ep, tp or dp. ``control``: it carries control data (the
    split sizes a dispatch exchanges first), not tokens."""

    cid: int
    name: str
    phase: str
    layer: int
    direction: str
    op: str
    channel: str
    groups: tuple
    nbytes: float = 0.0
    matrix: np.ndarray | None = None
    control: bool = False

    def bytes_leaving_ranks(self) -> float:
        """Bytes that cross from one rank to another, summed over all groups (All-to-All only)."""
        if self.matrix is None:
            return 0.0
        off = self.matrix.sum() - np.trace(self.matrix)
        return float(off) * len(self.groups)


@dataclass(frozen=True)
class Launch:
    cid: int


@dataclass(frozen=True)
class Wait:
    cid: int
    phase: str


@dataclass
class Program:
    """One step for every rank. ``items`` are run in order by each rank's compute stream."""

    world: int
    items: list = field(default_factory=list)
    collectives: dict = field(default_factory=dict)
    tokens_per_step: int = 0
    dtype: str = "bf16"
    info: dict = field(default_factory=dict)

    def add(self, item) -> None:
        self.items.append(item)

    def collective(self, **kw) -> int:
        """Register a collective and return its id."""
        cid = len(self.collectives)
        self.collectives[cid] = CollectiveSpec(cid=cid, **kw)
        return cid

    def a2a_bytes(self) -> float:
        """Token bytes of the step's All-to-Alls that leave a rank, summed over ranks (the split-size
        exchanges, control data, excluded)."""
        return sum(c.bytes_leaving_ranks() for c in self.collectives.values()
                   if c.op == "all_to_all" and not c.control)
