"""Cells: the unit the solver works on. A stage's flows are grouped into cells of flows that are
guaranteed to share one rate (symmetry orbits for uniform All-to-Alls, identical flows for explicit
lists); each cell carries a representative route mapped onto link orbits (see ``symmetry``)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from moesim.network.routing import router_for
from moesim.network.stages import FlowStage, Stage, UniformStage
from moesim.network.symmetry import (LinkOrbits, UniformOrbits, digest, domains_for, link_orbits, meet, orbit_key,
                                     participation_labels, touched_labels, uniform_orbits)
from moesim.topology.model import Topology


class Cells:
    """Cells of one stage under one symmetry partition ``labels`` (shared by every run of that stage
    structure): per cell the number of flows ``count``, a representative rank pair, the route latency
    (s), the solver entries (row = cell, col = link orbit, coef = load per unit rate on each link of the
    orbit), and for explicit stages the bytes per flow."""

    def __init__(self, count, src, dst, latency, q_rows, q_cols, q_coef, nbytes, orbits: UniformOrbits | None,
                 labels: np.ndarray):
        self.count, self.src, self.dst, self.latency = count, src, dst, latency
        self.q_rows, self.q_cols, self.q_coef = q_rows, q_cols, q_coef
        self.nbytes, self.orbits, self.labels = nbytes, orbits, labels

    def __len__(self) -> int:
        return len(self.count)


class CellBook:
    """Builds and caches cells, symmetry labels and link orbits for one topology."""

    def __init__(self, topo: Topology):
        self.topo = topo
        self.router = router_for(topo)
        self.dom = domains_for(topo)
        self._labels: OrderedDict = OrderedDict()
        self._orbits: OrderedDict = OrderedDict()
        self._cells: OrderedDict = OrderedDict()

    def own_labels(self, stage: Stage) -> tuple[np.ndarray, bytes]:
        """The coarsest partition a stage allows on its own: twin classes split by participation."""
        hit = self._labels.get(stage.signature)
        if hit is None:
            part = (participation_labels(self.dom, stage.ranks) if isinstance(stage, UniformStage)
                    else touched_labels(self.dom, stage.ranks))
            labels = meet(self.dom.twin, part)
            hit = (labels, digest(labels.tobytes()))
            _put(self._labels, stage.signature, hit, 4096)
        return hit

    def orbits(self, labels: np.ndarray, p_sig: bytes) -> LinkOrbits:
        o = self._orbits.get(p_sig)
        if o is None:
            o = link_orbits(self.dom, labels)
            _put(self._orbits, p_sig, o, 64)
        return o

    def cells(self, stage: Stage, labels: np.ndarray, p_sig: bytes) -> Cells:
        key = (stage.signature, p_sig)
        c = self._cells.get(key)
        if c is not None:
            self._cells.move_to_end(key)
            return c
        if isinstance(stage, UniformStage):
            orb = uniform_orbits(self.dom, stage.ranks, labels)
            count, src, dst, nbytes = orb.count, orb.src, orb.dst, None
        elif isinstance(stage, FlowStage):
            orb = None
            count, src, dst, nbytes = stage.cell_count, stage.cell_src, stage.cell_dst, stage.cell_bytes
        else:  # pragma: no cover
            raise TypeError(f"unknown stage type {type(stage).__name__}")
        routes = self.router.routes(src, dst)
        lo = self.orbits(labels, p_sig)
        rows = routes.pair_of_entry
        cols = lo.of_link[routes.links]
        coef = count[rows] * routes.fracs / lo.size[cols]
        c = Cells(count, src, dst, routes.latency, rows, cols, coef, nbytes, orb, labels)
        _put(self._cells, key, c, 1024)
        return c

    def parent_index(self, old: Cells, new: Cells) -> np.ndarray:
        """For cells of a uniform stage rebuilt under finer labels: the old cell holding each new cell."""
        first = np.full(int(new.labels.max()) + 1, -1, dtype=np.int64)
        first[new.labels] = np.arange(len(new.labels))
        old_of = old.labels[first]
        o, n = old.orbits, new.orbits
        ca, cb = old_of[n.cls_src], old_of[n.cls_dst]
        kind = np.where(n.kind > 0, n.kind, np.where(ca == cb, 2, 0))
        key = orbit_key(ca, n.loc_src, cb, n.loc_dst, kind, int(old.labels.max()) + 1, self.dom.max_local)
        order = np.argsort(o.key)
        idx = order[np.minimum(np.searchsorted(o.key, key, sorter=order), len(order) - 1)]
        if not np.array_equal(o.key[idx], key):  # pragma: no cover - labels only ever refine
            raise RuntimeError("symmetry refinement lost track of a flow orbit")
        return idx


def _put(cache: OrderedDict, key, value, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)
