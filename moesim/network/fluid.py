"""An incremental, event-driven fluid network for the SimPy engine.

Collectives start at absolute times (s) and run their stages in order, the first one
``NetworkParams.collective_overhead_s`` after the start. While a stage sends, each flow has its max-min
fair rate among all flows then sending, over every collective in flight. A flow's last byte arrives its
path latency plus ``NetworkParams.latency_per_message_s`` after it was sent; a stage ends when its last
byte has arrived, and no earlier than ``NetworkParams.receiver_wait_s`` after it started (once per
stage, a pipelined ring included): a wait that overlaps the transfer instead of adding to it. On links whose bandwidth
is the CPU's copy rate (``graph.graph["cpu_bound"]`` maps their class to 1: the testbed's ``stack``
and ``loopback``) the copies need the same cores as the wait, so there the floor is the wait plus
the stage's time alone on its busiest such link.

Rates are re-solved only when the set of sending flows changes: when a stage starts, and when flows
finish (an All-to-All-v with n distinct flow sizes has up to n such events; a uniform All-to-All has
one per route class). Solutions are memoised by the set of sending cells, so an All-to-All that recurs
in every layer is solved once; a memo hit costs a dictionary lookup.

Two-way penalty (optional, off unless the topology's ``graph.graph["two_way_penalty"]`` maps a link
class to ``b > 0``): a link of that class that carries a flow whose reverse flow (same rank pair,
opposite direction) is in the same stage carries ``capacity / (1 + b + c (k - 1))``, where ``k`` is
the number of other penalised links those two-way flows cross (the peer hosts' links: 1 between
two hosts, 3 when a host exchanges with three) and ``c`` is ``graph.graph["peer_penalty"]`` of the
class (default 0). gloo and NCCL-over-sockets
keep one TCP connection per rank pair; when it carries data both ways through token-bucket FIFOs,
each direction's ACKs queue behind the other's data and goodput falls (``real_backend.patterns``
measures it: one-way fan-in, fan-out and rings keep 0.92-1.0 of the rate, two-way exchanges
0.6-0.8, less the more peer hosts: each direction's flows cross a second token bucket shared with
other hosts' flows). An All-to-All is two-way; a ring of three or more ranks is not.

Two-way accounting (optional, ``graph.graph["two_way_accounting"]``): ``"stage"`` (default) counts
a flow as two-way for as long as its stage runs when the stage holds its reverse flow; ``"active"``
only while the reverse flow still sends (explicit-flow stages, e.g. the rank pairs of a pairwise
All-to-All; a uniform stage's reverse flows end together). The loss comes from each direction's
ACKs queueing behind the other direction's data; once the reverse flow has ended, its link no longer
holds data for them to queue behind, and the flow runs one-way. A rank that reaches a pairwise
All-to-All last sends to every peer over its one link while each peer, done with the others, sends
it one share over its own, so the peers' flows end first and the rest of its bytes move one-way.

Peer accounting (optional, ``graph.graph["peer_accounting"]``): ``"all"`` (default) counts every
peer link in ``k``; ``"shared"`` scales ``c (k - 1)`` by the fraction of the peer links that also carry
two-way flows not crossing the link (other hosts' flows: the peer's token bucket is shared). Every
peer link of a uniform All-to-All among three or more hosts is shared, so it, and the trains' fit of
b and c, are unchanged; a pairwise All-to-All's last arriver, whose peers are done with each other,
exchanges over peer links that carry only its own flows and pays b alone.

Onset of the two-way loss (optional, off unless ``graph.graph["two_way_onset_s"]`` maps a penalised
class to ``H > 0`` s): such a link passes its full capacity for the first ``H`` seconds it carries
two-way flows without a break, and the penalised capacity after that; the clock restarts once no
stage sending over the link has two-way flows on it (a loss that builds up while the tbf FIFOs
fill). The onset re-solves the rates (one event per link and busy period). On the testbed's trains
of back-to-back All-to-Alls the token bucket already accounts for this, and every onset fits them
worse than none (``python -m moesim.calibrate.twoway``), so the committed profiles set none.

Burst (optional, off unless ``graph.graph["burst_bytes"]`` maps a link class to bytes ``B > 0``): a
token-bucket link gains tokens at its rate, up to ``B``, and passes what the bucket holds without
waiting for tokens. When a stage starts, each such link that no other stage is using holds what its
last stage left plus its rate times the idle time since, up to ``B``; a stage leaves ``its start
level + rate * its duration - its bytes on the link`` (token accounting: a split-size exchange
barely drains a bucket, a stage that kept the link at its rate empties it). Each flow's bytes
shrink by ``min`` over the burst links of its route of that amount divided by the stage's flows on
the link (the burst is shared evenly by the flows that start together; those bytes pass at line
rate, much faster than the token rate). So a stage right after one that filled the link finds the
bucket empty, and collectives separated by compute find it refilled.

Continuous bucket accounting (optional, ``graph.graph["burst_accounting"] = "continuous"``; the
default is the per-stage accounting above): each link's bucket starts full and fills at the link's
capacity less what its flows send, up to ``B`` (so not at all while they keep it at its rate; a
link that a two-way loss slows, or that only a stage waiting out its floor holds, refills), and
stage runs take what it holds when they start: shared evenly by the flows that start on it at one
instant, each flow the least share along its route (at most its bytes), the link keeping the rest.
Where stages do not overlap this is the per-stage accounting; where they do (the rank pairs of a
pairwise All-to-All start apart, while other pairs' small exchanges hold the link) a starting stage
still finds the tokens its link gained, where the per-stage accounting gives it none.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, NamedTuple

import numpy as np
import pandas as pd

from moesim.network.cells import CellBook, Cells
from moesim.network.maxmin import max_min_rates
from moesim.network.params import NetworkParams
from moesim.network.stages import Collective, FlowStage, Stage, UniformStage
from moesim.network.symmetry import digest, flow_orbit_keys, meet
from moesim.topology.model import Topology


class TwoWayLinks(NamedTuple):
    """The penalised links that two-way flows cross (link ids are directed-link indices)."""

    links: np.ndarray        # the links, sorted
    partners: np.ndarray     # per link: the other penalised links its two-way flows cross (peer links)
    pairs: np.ndarray        # 2 x n: (link, peer link) crossed by one flow, every ordered combination
    link_flows: np.ndarray   # per link: the two-way flows crossing it
    pair_flows: np.ndarray   # per pair: the two-way flows crossing both


@dataclass
class CollectiveTiming:
    """When a collective started and ended, and when each of its stage runs ended (absolute s)."""
    key: Hashable
    start_s: float
    end_s: float
    stage_end_s: list[float]

    @property
    def time_s(self) -> float:
        return self.end_s - self.start_s


class _CollRun:
    def __init__(self, key, coll: Collective, start: float, record: bool):
        self.key, self.coll, self.start = key, coll, start
        self.stage_idx, self.rep_idx = 0, 0
        self.stage_ends: list[float] = []
        self.record = record
        self.records: list[tuple[int, Cells, np.ndarray]] = []


class _StageRun:
    """One run of a stage: per cell the bytes left per flow, whether it still sends, its rate (bytes/s
    per flow), when it will finish sending and when its last byte arrives (absolute s)."""

    def __init__(self, crun: _CollRun, stage: Stage, start: float, labels: np.ndarray, p_sig: bytes,
                 floor_s: float = 0.0):
        self.crun, self.stage, self.start = crun, stage, start
        self.labels, self.p_sig = labels, p_sig
        self.cells: Cells | None = None
        self.rem = self.active = self.done = self.rate = self.t_finish = None
        self.sending = True
        self.max_arrival = start + floor_s  # a stage never ends before its receivers' wait
        self.end_time = math.inf        # set when the last cell has finished sending
        self.projected_end = math.inf   # stage end if no re-solve comes first
        self.links: np.ndarray | None = None  # links it sends over (token-bucket bookkeeping)
        self.bucket_start: np.ndarray | None = None  # per link: bytes its token bucket held at the start
        self.burst_free: np.ndarray | None = None  # continuous buckets: per cell, bytes per flow they passed at once

    def bytes_per_flow(self) -> np.ndarray:
        c = self.cells
        return np.full(len(c), self.stage.bytes_per_flow) if c.nbytes is None else c.nbytes


class FluidNetwork:
    """Fluid max-min network over ``topology`` (see the module docstring).

    >>> from moesim.topology.generators import emulated_testbed
    >>> from moesim.network import collectives
    >>> net = FluidNetwork(emulated_testbed(2, 1, link_bandwidth=1e9, stack_bandwidth=1e10),
    ...                    NetworkParams(0.0, 0.0))
    >>> net.start(collectives.p2p(0, 1, 1e9), "x", 0.0)
    >>> net.advance(net.next_event_time())            # the start
    []
    >>> t = net.next_event_time(); t, net.advance(t)  # 1 GB over a 1 GB/s path
    (1.0, ['x'])
    """

    def __init__(self, topology: Topology, params: NetworkParams | None = None, memo_bytes: float = 256e6):
        self.topo = topology
        self.params = params or NetworkParams()
        self.now = 0.0
        self._book: CellBook = topology._cache.get("cellbook") or topology._cache.setdefault("cellbook", CellBook(topology))
        self._runs: list[_StageRun] = []
        self._pending: list[tuple[float, int, _CollRun]] = []
        self._seq = itertools.count()
        self._colls: dict[Hashable, _CollRun] = {}
        self._dirty = False
        self._trigger = math.inf
        self._memo: OrderedDict = OrderedDict()
        self._memo_bytes, self._memo_limit = 0, float(memo_bytes)
        self._class_bytes: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._link_bytes = np.zeros(topology.num_links)
        self.timings: dict[Hashable, CollectiveTiming] = {}
        self._records: dict[Hashable, _CollRun] = {}
        self.stats = {"solves": 0, "memo_hits": 0, "events": 0, "stage_runs": 0}
        self._two_way = class_values(topology, "two_way_penalty")
        peer = class_values(topology, "peer_penalty")
        self._peer = peer if (peer is not None and self._two_way is not None) else None
        onset = class_values(topology, "two_way_onset_s")
        self._onset = onset if (onset is not None and self._two_way is not None) else None
        # per link: since when (absolute s) it has carried two-way flows without a break (nan: not now)
        self._two_way_since = np.full(topology.num_links, np.nan)
        self._onset_at = math.inf   # when the next link's two-way loss sets in (absolute s)
        self._burst = class_values(topology, "burst_bytes")
        # token buckets: per link the bytes held at ``_bucket_time`` (full at the start; continuous: now)
        self._bucket = None if self._burst is None else self._burst.astype(float).copy()
        self._bucket_time = None if self._burst is None else np.zeros(topology.num_links)
        accounting = topology.graph.graph.get("burst_accounting", "per_stage")
        if accounting not in ("per_stage", "continuous"):
            raise ValueError(f"graph attribute 'burst_accounting' must be 'per_stage' or 'continuous', "
                             f"got {accounting!r}")
        self._continuous = self._burst is not None and accounting == "continuous"
        # continuous: when the last runs took from the buckets, and which (they share again if more start then)
        self._burst_batch: tuple[float, list] = (-math.inf, [])
        self._cpu_bound = class_values(topology, "cpu_bound")
        two_way_accounting = topology.graph.graph.get("two_way_accounting", "stage")
        if two_way_accounting not in ("stage", "active"):
            raise ValueError(f"graph attribute 'two_way_accounting' must be 'stage' or 'active', "
                             f"got {two_way_accounting!r}")
        self._two_way_active = two_way_accounting == "active"
        peer_accounting = topology.graph.graph.get("peer_accounting", "all")
        if peer_accounting not in ("all", "shared"):
            raise ValueError(f"graph attribute 'peer_accounting' must be 'all' or 'shared', got {peer_accounting!r}")
        self._peer_shared = peer_accounting == "shared"

    # -- public API ------------------------------------------------------------------------------
    def start(self, collective: Collective, key: Hashable, now: float, *, record_flows: bool = False) -> None:
        """Start ``collective`` at absolute time ``now`` (s; not before the network's time, not after its
        next event). ``key`` names it in :meth:`advance`'s result; ``record_flows`` keeps per-flow times."""
        if key in self._colls:
            raise ValueError(f"a collective with key {key!r} is already in flight")
        now = float(now)
        if now < self.now - _tol(self.now):
            raise ValueError(f"cannot start at t={now!r}: the network is already at t={self.now!r}")
        if now > self.now:
            nxt = self.next_event_time()
            if now > nxt + _tol(now):
                raise ValueError(f"advance the network to t={nxt!r} before starting at t={now!r}")
            self._progress_to(now)
        crun = _CollRun(key, collective, max(now, self.now), record_flows)
        self._colls[key] = crun
        heapq.heappush(self._pending, (crun.start + self.params.collective_overhead_s, next(self._seq), crun))

    def next_event_time(self) -> float:
        """Absolute time (s) of the next internal event (a stage starting or ending, or a rate change);
        ``inf`` when idle."""
        if self._dirty:
            self._solve()
        t = min(self._pending[0][0] if self._pending else math.inf, self._trigger)
        for r in self._runs:
            t = min(t, r.projected_end if r.sending else r.end_time)
        return max(t, self.now)

    def advance(self, t: float) -> list:
        """Progress to absolute time ``t`` (s); returns the keys of collectives completed at or before ``t``."""
        t = float(t)
        if t < self.now - _tol(self.now):
            raise ValueError(f"cannot advance backwards from t={self.now!r} to t={t!r}")
        done: list = []
        while True:
            te = self.next_event_time()
            if te > t + _tol(t):
                break
            self._progress_to(te)
            self._events(te, done)
        self._progress_to(t)
        return done

    def run_until_idle(self) -> list:
        """Advance until nothing is in flight; returns the completed keys in completion order."""
        done: list = []
        while self._colls:
            done.extend(self.advance(self.next_event_time()))
        return done

    @property
    def in_flight(self) -> list:
        """Keys of the collectives started and not yet completed."""
        return list(self._colls)

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes carried so far per directed link (aligned with ``topology.links``)."""
        self._flush_bytes()
        out = self._link_bytes.copy()
        for r in self._runs:
            if r.cells is not None:
                out += self._expand(r, r.bytes_per_flow() - r.rem)
        return out

    @property
    def link_rates(self) -> np.ndarray:
        """Current bytes/s per directed link."""
        if self._dirty:
            self._solve()
        out = np.zeros(self.topo.num_links)
        for r in self._runs:
            if r.sending and r.cells is not None:
                out += self._expand(r, np.where(r.active, r.rate, 0.0))
        return out

    def link_traffic(self) -> pd.DataFrame:
        """Per directed link: src, dst, link_class, capacity (bytes/s), latency (s), cost, bytes carried."""
        df = self.topo.links.copy()
        df["bytes"] = self.link_bytes
        return df

    def bytes_by_class(self) -> dict[str, float]:
        """Bytes carried so far per link class (a byte crossing three links counts three times)."""
        sums = np.bincount(self.topo.link_class_id, weights=self.link_bytes, minlength=len(self.topo.link_classes))
        return {c: float(v) for c, v in zip(self.topo.link_classes, sums)}

    def projected_end(self, key: Hashable) -> float:
        """When collective ``key`` (in flight) will end if no rate changes again (absolute s): at the
        current rates, its last stage's slowest flow plus its arrival latency, and no earlier than the
        stage's floor. Rates only rise when flows finish, so this bounds the end from above until
        another collective starts. ``inf`` before its last stage runs (overhead, earlier stages), and
        while a link's two-way loss is due to set in before that end (rates then fall)."""
        crun = self._colls.get(key)
        if crun is None:
            raise KeyError(f"no collective {key!r} in flight")
        if self._dirty:
            self._solve()
        run = next((r for r in self._runs if r.crun is crun), None)
        stages = crun.coll.stages
        if run is None or crun.stage_idx < len(stages) - 1 or crun.rep_idx < stages[crun.stage_idx].repeat - 1:
            return math.inf
        if not run.sending:
            return run.end_time
        a = run.active
        k = run.stage.latency_steps
        last = float((run.t_finish[a] + k * run.cells.latency[a]).max()) + k * self.params.latency_per_message_s
        if self._onset_at < float(run.t_finish[a].max()) - _tol(self._onset_at):
            return math.inf
        return max(run.max_arrival, last)

    def flow_finish_times(self, key: Hashable) -> list[np.ndarray]:
        """For a finished collective started with ``record_flows=True``: per stage run, the absolute time
        (s) at which each flow's last byte arrived, aligned with that stage's ``src``/``dst`` arrays."""
        crun = self._records[key]
        out = []
        for stage_idx, cells, done in crun.records:
            stage = crun.coll.stages[stage_idx]
            if isinstance(stage, FlowStage):
                out.append(done[stage.cell_of_flow])
            else:
                keys = flow_orbit_keys(self._book.dom, stage.src, stage.dst, cells.labels)
                order = np.argsort(cells.orbits.key)
                out.append(done[order[np.searchsorted(cells.orbits.key, keys, sorter=order)]])
        return out

    # -- time ------------------------------------------------------------------------------------
    def _progress_to(self, t: float) -> None:
        dt = t - self.now
        if dt <= 0:
            return
        if self._dirty:
            self._solve()
        if self._continuous:
            self._refill_buckets(dt)
        for r in self._runs:
            if r.sending and r.cells is not None:
                a = r.active
                r.rem[a] = np.maximum(r.rem[a] - r.rate[a] * dt, 0.0)
        self.now = t

    def _events(self, t: float, done: list) -> None:
        self.stats["events"] += 1
        tol = _tol(t)
        alpha = self.params.latency_per_message_s
        if t >= self._trigger - tol:
            self._dirty = True
        changed = True
        while changed:
            changed = False
            while self._pending and self._pending[0][0] <= t + tol:
                _, _, crun = heapq.heappop(self._pending)
                self._begin(crun, t)
                if crun.key not in self._colls:
                    done.append(crun.key)
                changed = True
            for r in list(self._runs):
                if r.sending and r.cells is not None:
                    fin = r.active & (r.t_finish <= t + tol)
                    if fin.any():
                        r.active[fin] = False
                        r.rem[fin] = 0.0
                        r.done[fin] = np.minimum(r.t_finish[fin], t) + (r.cells.latency[fin] + alpha) * r.stage.latency_steps
                        r.max_arrival = max(r.max_arrival, float(r.done[fin].max()))
                        if not r.active.any():
                            r.sending = False
                            r.end_time = max(r.max_arrival, t)
                        changed = True
                if not r.sending and r.end_time <= t + tol:
                    self._finish_stage(r, t, done)
                    changed = True

    def _begin(self, crun: _CollRun, t: float) -> None:
        stages = crun.coll.stages
        while crun.stage_idx < len(stages):
            stage = stages[crun.stage_idx]
            if stage.num_flows > 0 and stage.repeat > 0:
                labels, p_sig = self._book.own_labels(stage)
                self._runs.append(_StageRun(crun, stage, t, labels, p_sig, self.params.receiver_wait_s))
                self.stats["stage_runs"] += 1
                self._dirty = True
                return
            crun.stage_idx += 1
        self._finish_collective(crun, t)

    def _finish_stage(self, r: _StageRun, t: float, done: list) -> None:
        self._runs.remove(r)
        if self._bucket is not None and not self._continuous and r.cells is not None:
            self._drain_buckets(r)
        self._account(r)
        crun = r.crun
        crun.stage_ends.append(r.end_time)
        if crun.record:
            crun.records.append((crun.stage_idx, r.cells, r.done.copy()))
        crun.rep_idx += 1
        if crun.rep_idx >= r.stage.repeat:
            crun.stage_idx += 1
            crun.rep_idx = 0
        if crun.stage_idx < len(crun.coll.stages):
            self._begin(crun, t)
            if crun.key not in self._colls:
                done.append(crun.key)
        else:
            self._finish_collective(crun, t)
            done.append(crun.key)

    def _finish_collective(self, crun: _CollRun, t: float) -> None:
        self.timings[crun.key] = CollectiveTiming(crun.key, crun.start, t, crun.stage_ends)
        if crun.record:
            self._records[crun.key] = crun
        self._colls.pop(crun.key, None)

    # -- link bytes --------------------------------------------------------------------------------
    def _class_totals(self, r: _StageRun, per_flow: np.ndarray) -> np.ndarray:
        c = r.cells
        n = len(self._book.orbits(r.labels, r.p_sig).size)
        return np.bincount(c.q_cols, weights=c.q_coef * per_flow[c.q_rows], minlength=n)

    def _expand(self, r: _StageRun, per_flow: np.ndarray) -> np.ndarray:
        return self._class_totals(r, per_flow)[self._book.orbits(r.labels, r.p_sig).of_link]

    def _account(self, r: _StageRun) -> None:
        """Add a finished run's bytes, per link orbit of its partition (expanded to links lazily)."""
        acc = self._class_bytes.get(r.p_sig)
        totals = self._class_totals(r, r.bytes_per_flow())
        if acc is None:
            self._class_bytes[r.p_sig] = (r.labels, totals)
            if len(self._class_bytes) > 32:
                self._flush_bytes()
        else:
            acc[1][:] += totals

    def _flush_bytes(self) -> None:
        for p_sig, (labels, totals) in self._class_bytes.items():
            self._link_bytes += totals[self._book.orbits(labels, p_sig).of_link]
        self._class_bytes.clear()

    # -- rates -------------------------------------------------------------------------------------
    def _solve(self) -> None:
        self._dirty = False
        runs = [r for r in self._runs if r.sending]
        self._trigger = math.inf
        self._onset_at = math.inf
        if not runs:
            self._two_way_since[:] = np.nan
            return
        labels, p_sig = runs[0].labels, runs[0].p_sig
        for r in runs[1:]:
            if r.p_sig != p_sig:
                labels = meet(labels, r.labels)
                p_sig = None
        if p_sig is None:
            p_sig = digest(labels.tobytes())
        new = [r for r in runs if r.cells is None]
        for r in runs:
            if r.cells is None or r.p_sig != p_sig:
                self._bind(r, labels, p_sig)
        if new and self._continuous:
            for r in self._take_bursts(new):    # may share again with runs that started at this instant
                self._receiver_floor(r)
        items = sorted((r.stage.signature, digest(np.packbits(r.active).tobytes()), i) for i, r in enumerate(runs))
        key = (p_sig,) + tuple((s, m) for s, m, _ in items)
        cold, onset_at = None, math.inf
        if self._onset is not None:
            cold, onset_at = self._cold_links(runs)
            self._onset_at = onset_at
            key += (digest(np.packbits(cold).tobytes()),)
        rates_by_item = self._memo.get(key)
        if rates_by_item is not None:
            self._memo.move_to_end(key)
            self.stats["memo_hits"] += 1
        else:
            self.stats["solves"] += 1
            rows, cols, coef, offsets = self._entries([runs[i] for _, _, i in items])
            lo = self._book.orbits(labels, p_sig)
            cap = lo.capacity if self._two_way is None else self._two_way_capacity([runs[i] for _, _, i in items], lo,
                                                                                   cold)
            rates = max_min_rates(rows, cols, coef, cap, offsets[-1])
            rates_by_item = [rates[offsets[j]:offsets[j + 1]] for j in range(len(items))]
            self._memoise(key, rates_by_item)
        for (_, _, i), rate in zip(items, rates_by_item):
            r = runs[i]
            r.rate = rate
            r.t_finish = np.full(len(rate), math.inf)
            a = r.active
            r.t_finish[a] = self.now + r.rem[a] / rate[a]
        self._set_trigger(runs, onset_at)

    def _cold_links(self, runs: list[_StageRun]) -> tuple[np.ndarray, float]:
        """Onset bookkeeping at a solve: per link whether it carries two-way flows and is still within
        its onset (full capacity), and when the next such link turns penalised (absolute s; inf: none)."""
        links = np.unique(np.concatenate([self._run_two_way_links(r).links for r in runs]))
        carrying = np.zeros(self.topo.num_links, dtype=bool)
        carrying[links] = True
        since = self._two_way_since
        since[~carrying] = np.nan
        since[carrying & np.isnan(since)] = self.now
        turns = since + self._onset
        cold = carrying & (turns > self.now + _tol(self.now))
        return cold, float(turns[cold].min(initial=math.inf))

    def _two_way_capacity(self, runs: list[_StageRun], lo, cold: np.ndarray | None = None) -> np.ndarray:
        """Per link orbit: the capacity after the two-way penalty of the links that carry two-way flows
        (``cold``: per link, still within its onset, so not penalised yet). A link's peer links are
        counted over every stage sending now (an All-to-All whose rank pairs start apart runs as
        several stages at once)."""
        n = self.topo.num_links
        found = [self._run_two_way_links(r) for r in runs]
        links = np.unique(np.concatenate([f.links for f in found]))
        pairs = np.concatenate([f.pairs for f in found], axis=1)
        pair_flows = np.concatenate([f.pair_flows for f in found])
        if pairs.shape[1]:
            pairs, inverse = np.unique(pairs, axis=1, return_inverse=True)
            if self._peer_shared:
                pair_flows = np.bincount(inverse.ravel(), weights=pair_flows, minlength=pairs.shape[1])
        partners = np.bincount(pairs[0], minlength=n)[links] if len(links) else links
        peers = np.maximum(partners - 1, 0).astype(float)    # k - 1
        if self._peer_shared and len(links):
            # a peer link j counts only if two-way flows that do not cross this link l cross it too
            link_flows = np.zeros(n)
            for f in found:
                np.add.at(link_flows, f.links, f.link_flows)
            shared = link_flows[pairs[1]] > pair_flows + 0.5
            peers *= np.bincount(pairs[0][shared], minlength=n)[links] / np.maximum(partners, 1)
        if cold is not None and len(links):
            keep = ~cold[links]
            links, peers = links[keep], peers[keep]
        g = np.ones(n)
        extra = 0.0 if self._peer is None else self._peer[links] * peers
        np.minimum.at(g, links, 1.0 / (1.0 + self._two_way[links] + extra))
        cap = lo.capacity.copy()
        np.minimum.at(cap, lo.of_link, self.topo.link_capacity * g)
        return cap

    def _run_two_way_links(self, r: _StageRun) -> TwoWayLinks:
        """:func:`stage_two_way_links` of a run's stage; with ``"active"`` two-way accounting, of its
        flows that still send (explicit-flow stages)."""
        st = r.stage
        if (not self._two_way_active or not isinstance(st, FlowStage) or r.active is None
                or bool(r.active.all())):
            return stage_two_way_links(self._book, self._two_way, st)
        return pair_two_way_links(self._book, self._two_way, st.cell_src[r.active], st.cell_dst[r.active],
                                  (st.signature, digest(np.packbits(r.active).tobytes())))

    def _entries(self, runs: list[_StageRun]):
        rows, cols, coef, offsets = [], [], [], [0]
        for r in runs:
            c = r.cells
            keep = r.active[c.q_rows]
            rows.append(c.q_rows[keep] + offsets[-1])
            cols.append(c.q_cols[keep])
            coef.append(c.q_coef[keep])
            offsets.append(offsets[-1] + len(c))
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(coef), offsets

    def _set_trigger(self, runs: list[_StageRun], onset_at: float = math.inf) -> None:
        """Rates must be re-solved when the first cell finishes sending, or at ``onset_at`` (absolute s),
        when a link's two-way loss sets in, if that is sooner; a run whose cells all finish by then has
        its end projected now."""
        trigger = min(min(float(r.t_finish[r.active].min()) for r in runs), onset_at)
        self._trigger = trigger
        alpha = self.params.latency_per_message_s
        for r in runs:
            a = r.active
            if float(r.t_finish[a].max()) <= trigger + _tol(trigger):
                k = r.stage.latency_steps
                r.projected_end = max(r.max_arrival, float((r.t_finish[a] + k * r.cells.latency[a]).max()) + k * alpha)
            else:
                r.projected_end = math.inf

    def _bind(self, r: _StageRun, labels: np.ndarray, p_sig: bytes) -> None:
        """(Re)build a run's cells under ``labels`` (which refine its own), inheriting the state."""
        cells = self._book.cells(r.stage, labels, p_sig)
        if r.cells is None:
            r.rem = (np.full(len(cells), r.stage.bytes_per_flow) if cells.nbytes is None else cells.nbytes.copy())
            if self._burst is not None and not self._continuous:
                r.bucket_start = self._bucket_levels(r)
                r.rem = np.maximum(r.rem - self._burst_share(cells, labels, p_sig, r.bucket_start), 1e-9 * r.rem)
            r.active = np.ones(len(cells), dtype=bool)
            r.done = np.full(len(cells), np.nan)
            r.cells, r.labels, r.p_sig = cells, labels, p_sig
            if not self._continuous:    # continuous: once the run has taken its burst (_solve)
                self._receiver_floor(r)
            return
        if cells.orbits is not None and cells is not r.cells:
            idx = self._book.parent_index(r.cells, cells)
            r.rem, r.active, r.done = r.rem[idx], r.active[idx], r.done[idx]
            if r.burst_free is not None:
                r.burst_free = r.burst_free[idx]
        r.cells, r.labels, r.p_sig = cells, labels, p_sig

    def _receiver_floor(self, r: _StageRun) -> None:
        """A new run on CPU-bound links ends no earlier than the receiver wait plus its bytes' copy time."""
        if self.params.receiver_wait_s > 0 and self._cpu_bound is not None:
            r.max_arrival = max(r.max_arrival, r.start + self.params.receiver_wait_s
                                + self._cpu_time(r.cells, r.labels, r.p_sig, r.rem))

    def _cpu_time(self, cells: Cells, labels: np.ndarray, p_sig: bytes, nbytes: np.ndarray) -> float:
        """Seconds the stage's bytes take, alone, on its busiest CPU-bound link (kernel copies)."""
        lo = self._book.orbits(labels, p_sig)
        per_link = np.bincount(cells.q_cols, weights=nbytes[cells.q_rows] * cells.q_coef, minlength=len(lo.size))
        cap = np.zeros(len(lo.size))
        np.maximum.at(cap, lo.of_link, self.topo.link_capacity)
        cpu = np.zeros(len(lo.size), dtype=bool)
        cpu[lo.of_link[self._cpu_bound > 0]] = True
        t = np.where(cpu & (cap > 0), per_link / np.where(cap > 0, cap, 1.0), 0.0)
        return float(t.max(initial=0.0))

    def _run_links(self, r: _StageRun) -> np.ndarray:
        """Links (ids) a bound stage run sends over (computed once per run: relabelling keeps them)."""
        if r.links is None:
            lo = self._book.orbits(r.labels, r.p_sig)
            r.links = np.flatnonzero(np.isin(lo.of_link, np.unique(r.cells.q_cols)))
        return r.links

    def _bucket_levels(self, starting: _StageRun) -> np.ndarray:
        """Per link: the bytes its token bucket holds now (0 on links another stage is using)."""
        level = np.minimum(self._burst, self._bucket + self.topo.link_capacity
                           * np.maximum(self.now - self._bucket_time, 0.0))
        level[self._links_in_use(starting)] = 0.0
        return level

    def _links_in_use(self, exclude: _StageRun) -> np.ndarray:
        """Per link: whether a bound stage run other than ``exclude`` sends over it."""
        used = np.zeros(self.topo.num_links, dtype=bool)
        for r in self._runs:
            if r is not exclude and r.cells is not None:
                used[self._run_links(r)] = True
        return used

    def _drain_buckets(self, r: _StageRun) -> None:
        """Token accounting when ``r`` ends: each of its links held ``bucket_start`` when it began and
        gained its rate in tokens while it ran, and its bytes spent them, so a link left idle keeps
        ``min(B, start + rate * duration - bytes)``: a small stage (a split-size exchange) leaves the
        bucket nearly full, a stage that kept the link at its rate leaves it empty. Links another
        stage still uses are left empty."""
        links = self._run_links(r)
        sent = self._expand(r, r.bytes_per_flow())[links]
        level = np.clip(r.bucket_start[links] + self.topo.link_capacity[links] * max(r.end_time - r.start, 0.0) - sent,
                        0.0, self._burst[links])
        self._bucket[links] = np.where(self._links_in_use(r)[links], 0.0, level)
        self._bucket_time[links] = r.end_time

    def _burst_share(self, cells: Cells, labels: np.ndarray, p_sig: bytes, level: np.ndarray) -> np.ndarray:
        """Per cell: the burst bytes each of its flows gets (see the module docstring)."""
        lo = self._book.orbits(labels, p_sig)
        burst = np.full(len(lo.size), np.inf)
        np.minimum.at(burst, lo.of_link, level)
        bucketed = np.zeros(len(lo.size), dtype=bool)
        bucketed[lo.of_link[self._burst > 0]] = True
        flows = np.bincount(cells.q_cols, weights=cells.q_coef, minlength=len(lo.size))
        c = cells.q_cols
        share = np.where(bucketed[c] & (flows[c] > 0), burst[c] / np.maximum(flows[c], 1e-300), np.inf)
        free = np.full(len(cells), np.inf)
        np.minimum.at(free, cells.q_rows, share)
        return np.where(np.isfinite(free), free, 0.0)

    def _refill_buckets(self, dt: float) -> None:
        """Continuous token accounting over the next ``dt`` s at the current rates: each link gains its
        capacity less what its flows send, up to its bucket (links without a bucket stay at 0)."""
        sent = np.zeros(self.topo.num_links)
        for r in self._runs:
            if r.sending and r.cells is not None:
                sent += self._expand(r, np.where(r.active, r.rate, 0.0))
        gain = np.maximum(self.topo.link_capacity - sent, 0.0) * dt
        self._bucket = np.minimum(self._burst, self._bucket + gain)

    def _take_bursts(self, runs: list[_StageRun]) -> list[_StageRun]:
        """Continuous accounting: the stage runs starting now take what the buckets hold, per link
        shared evenly by the flows starting on it, each flow the least share along its route (at most
        its bytes); the links keep the rest. Runs that took their share at this same instant (bound in
        an earlier solve at the same time: nothing has been sent since) give it back and share again.
        Returns the runs that took (the given ones, and those)."""
        if self._burst_batch[0] == self.now:
            earlier = [r for r in self._burst_batch[1] if r in self._runs and r.burst_free is not None]
            for r in earlier:
                r.rem = r.rem + r.burst_free
                self._bucket = self._bucket + self._expand(r, r.burst_free)
            runs = earlier + runs
        self._burst_batch = (self.now, runs)
        flows = np.zeros(self.topo.num_links)
        for r in runs:
            flows += self._expand(r, np.ones(len(r.cells)))
        has = (self._burst > 0) & (flows > 0)
        share = np.where(has, self._bucket / np.where(has, flows, 1.0), np.inf)
        taken = np.zeros(self.topo.num_links)
        for r in runs:
            lo = self._book.orbits(r.labels, r.p_sig)
            per_orbit = np.full(len(lo.size), np.inf)
            np.minimum.at(per_orbit, lo.of_link, share)
            c = r.cells
            free = np.full(len(c), np.inf)
            np.minimum.at(free, c.q_rows, per_orbit[c.q_cols])
            free = np.minimum(np.where(np.isfinite(free), free, 0.0), (1.0 - 1e-9) * r.rem)
            r.rem = r.rem - free
            r.burst_free = free
            taken += self._expand(r, free)
        self._bucket = np.maximum(self._bucket - taken, 0.0)
        return runs

    def _memoise(self, key, rates_by_item: list[np.ndarray]) -> None:
        size = sum(x.nbytes for x in rates_by_item) + 200
        self._memo[key] = rates_by_item
        self._memo_bytes += size
        while self._memo_bytes > self._memo_limit and len(self._memo) > 1:
            _, old = self._memo.popitem(last=False)
            self._memo_bytes -= sum(x.nbytes for x in old) + 200


def class_values(topo: Topology, attr: str) -> np.ndarray | None:
    """Per directed link the value of ``graph.graph[attr][its class]`` (None when none is positive)."""
    inc = topo.graph.graph.get(attr) or {}
    b = np.zeros(topo.num_links)
    for cls, v in inc.items():
        if cls in topo.link_classes and v:
            b[topo.link_class_id == topo.link_classes.index(cls)] = float(v)
    return b if (b > 0).any() else None


def stage_two_way_links(book: CellBook, penalty: np.ndarray, stage: Stage) -> TwoWayLinks:
    """The links with a two-way penalty that carry a flow of ``stage`` whose reverse flow is in the
    stage too: for each the number of other such links its two-way flows cross (the peer hosts'
    links), those (link, other link) pairs, and the two-way flows on each link and pair."""
    if isinstance(stage, UniformStage):   # every ordered pair of its ranks: each flow's reverse is there
        r = stage.ranks
        return pair_two_way_links(book, penalty, np.repeat(r, len(r)), np.tile(r, len(r)), stage.signature)
    return pair_two_way_links(book, penalty, stage.cell_src, stage.cell_dst, stage.signature)


def pair_two_way_links(book: CellBook, penalty: np.ndarray, src: np.ndarray, dst: np.ndarray,
                       key: Hashable) -> TwoWayLinks:
    """:func:`stage_two_way_links` of the flows ``src`` -> ``dst`` (rank arrays): those whose reverse
    flow is among them; cached on ``book`` under ``key``."""
    cache = book.__dict__.setdefault("_two_way", {})
    hit = cache.get(key)
    if hit is not None:
        return hit
    s, d = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    n = int(max(s.max(initial=0), d.max(initial=0))) + 1
    keep = np.isin(d * n + s, s * n + d) & (s != d)
    cache[key] = out = _two_way_links_of(book, penalty, s[keep], d[keep])
    return out


def _two_way_links_of(book: CellBook, penalty: np.ndarray, s: np.ndarray,
                      d: np.ndarray) -> TwoWayLinks:
    """:class:`TwoWayLinks` of the two-way flows ``s`` -> ``d`` (see :func:`stage_two_way_links`)."""
    empty = np.zeros(0, dtype=np.int64)
    out = TwoWayLinks(empty, empty, np.zeros((2, 0), dtype=np.int64), empty, empty)
    if len(s):
        routes = book.router.routes(s, d)
        links = np.asarray(routes.links, dtype=np.int64)
        flow = routes.pair_of_entry
        pen = penalty[links] > 0
        links, flow = links[pen], flow[pen]
        if len(links):
            order = np.argsort(flow, kind="stable")
            links, flow = links[order], flow[order]
            # (link, other penalised link on the same flow's route), every ordered combination
            a, b = [], []
            for j in range(1, int(np.bincount(flow).max(initial=1))):
                same = flow[j:] == flow[:-j]
                a += [links[:-j][same], links[j:][same]]
                b += [links[j:][same], links[:-j][same]]
            uniq, link_flows = np.unique(links, return_counts=True)
            both, pair_flows = np.zeros((2, 0), dtype=np.int64), empty
            if a:
                both, pair_flows = np.unique(np.stack([np.concatenate(a), np.concatenate(b)]), axis=1,
                                             return_counts=True)
                keep = both[0] != both[1]
                both, pair_flows = both[:, keep], pair_flows[keep]
            counts = np.bincount(both[0], minlength=int(uniq.max()) + 1)[uniq]
            out = TwoWayLinks(uniq, counts.astype(np.int64), both.astype(np.int64), link_flows.astype(np.int64),
                              pair_flows.astype(np.int64))
    return out


def _tol(t: float) -> float:
    return 1e-11 * abs(t) + 1e-18
