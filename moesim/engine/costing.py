"""Price every compute op of a program for every rank, and fold ranks with identical timings into
classes (symmetric ranks are simulated once)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import CostModel
from moesim.workload.ops import Compute, Program


def _per_rank(value, world: int, extra_dims: int = 0) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return np.full((world,) + (1,) * extra_dims, float(arr))
    return arr if arr.ndim == 1 + extra_dims else arr.reshape((world,) + (1,) * extra_dims)


def op_seconds(op: Compute, model: CostModel, ranks: np.ndarray, dtype: str) -> np.ndarray:
    """Seconds of ``op`` on each rank in ``ranks`` with one cost model."""
    world_vals = None
    if op.kind == "gemm":
        m = np.asarray(op.m, dtype=float)
        if m.ndim == 0:
            t = model.gemm_time(m, op.n, op.k, dtype, op.count)
            return np.full(ranks.size, float(t))
        m = m[ranks]
        t = model.gemm_time(m, op.n, op.k, dtype, op.count)
        world_vals = t.sum(axis=-1) if t.ndim == 2 else t
        return world_vals
    nbytes = np.asarray(op.nbytes, dtype=float)
    if nbytes.ndim == 0:
        return np.full(ranks.size, float(model.memory_time(nbytes)))
    return model.memory_time(nbytes[ranks])


@dataclass
class RankClasses:
    """``durations[c, i]``: seconds of the i-th compute op for class c; ``class_of[rank]``;
    ``members[c]``: ranks of class c; ``compute_index``: position of each compute op in items."""

    durations: np.ndarray
    class_of: np.ndarray
    members: list
    compute_index: np.ndarray

    @property
    def count(self) -> int:
        return len(self.members)


def price_program(program: Program, models: dict, device_of_rank: np.ndarray) -> RankClasses:
    """Durations of all compute ops for all ranks. ``models`` maps a device-profile name to its
    CostModel; ``device_of_rank`` gives each rank's profile name."""
    world = program.world
    compute_index = np.array([i for i, it in enumerate(program.items) if isinstance(it, Compute)], dtype=int)
    table = np.zeros((compute_index.size, world))
    for dev in np.unique(device_of_rank):
        ranks = np.flatnonzero(device_of_rank == dev)
        model = models[dev]
        for row, idx in enumerate(compute_index):
            table[row, ranks] = op_seconds(program.items[idx], model, ranks, program.dtype)
    # classes: ranks with identical duration columns (and identical device)
    dev_codes = np.unique(device_of_rank, return_inverse=True)[1].astype(float)
    key = np.vstack([table, dev_codes[None, :]])
    _, first, class_of = np.unique(key.T, axis=0, return_index=True, return_inverse=True)
    class_of = class_of.ravel()
    order = np.argsort(first)             # number classes by their lowest rank
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    class_of = remap[class_of]
    members = [np.flatnonzero(class_of == c) for c in range(order.size)]
    durations = np.stack([table[:, m[0]] for m in members]) if members else np.zeros((0, compute_index.size))
    return RankClasses(durations=durations, class_of=class_of, members=members, compute_index=compute_index)


def per_rank(classes: RankClasses) -> RankClasses:
    """The same prices with one class per rank (ranks that share cores no longer stay in step)."""
    world = classes.class_of.size
    return RankClasses(durations=classes.durations[classes.class_of], class_of=np.arange(world),
                       members=[np.array([r]) for r in range(world)], compute_index=classes.compute_index)
