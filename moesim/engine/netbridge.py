"""Connect the SimPy clock to the fluid network model: start collectives, advance the network as
its events fall due, and fire a SimPy event when a collective completes.

Staggered release (only when the engine simulates ranks one by one and the topology's
``graph.graph["release_spread"]`` maps a link class to ``s > 0``): on shaped links the TCP flows of an
All-to-All do not progress evenly, so its members return over the last ``s`` of its duration
(``real_backend.patterns`` measures s as ``release_spread``) while the last one still returns when the
bytes are through. The bridge releases the member in release position ``j`` of ``n`` when
``now >= T - s (T - start) (n - 1 - j) / (n - 1)``, with ``T`` the fluid model's projected end at the
current rates (re-evaluated whenever rates change), and the last member when the collective ends.
Positions rotate with the collective's id so that no rank is always first. It applies to
All-to-Alls whose group spans more than one host; ``s`` is the largest spread of the topology's
classes.

Pairwise start (:meth:`NetworkBridge.arrive_pairwise`, direct All-to-Alls in per-rank mode): gloo
sends each rank pair's data over that pair's own connection, so a pair's exchange can run as soon as
both of its ranks have reached the All-to-All, while other ranks are still computing. Each rank pair
then runs as its own two-way stage (its receiver wait included), and a rank is released when every
peer of its group has arrived and every exchange it takes part in has landed."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import simpy

from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives as C
from moesim.network.stages import FlowStage


class NetworkBridge:
    """Owns one :class:`FluidNetwork` and a SimPy process that drives it."""

    def __init__(self, env: simpy.Environment, topology, network_profile, algorithm: str = "direct"):
        self.env = env
        self.topology = topology
        self.algorithm = algorithm
        params = NetworkParams(latency_per_message_s=network_profile.latency_per_message_s,
                               collective_overhead_s=network_profile.collective_overhead_s,
                               receiver_wait_s=network_profile.receiver_wait_s)
        self.net = FluidNetwork(topology, params)
        self._events: dict = {}
        self._remaining: dict = {}
        self._cache: dict = {}
        self._wake = env.event()
        spreads = dict(topology.graph.graph.get("release_spread") or {})
        self.release_spread = max((float(v) for v in spreads.values()), default=0.0)
        self._stagger: dict = {}   # (key, group) -> [start, member events in release order, next position, staggered]
        self._pairwise: dict = {}  # key -> per-collective pairwise state (arrive_pairwise)
        env.process(self._drive())

    # ---- collectives ------------------------------------------------------------------------------------
    def _collectives(self, spec) -> list:
        """One network collective per group of a CollectiveSpec (cached by content)."""
        key = (spec.op, spec.channel, spec.groups, spec.nbytes,
               None if spec.matrix is None else spec.matrix.tobytes())
        hit = self._cache.get(key)
        if hit is None:
            if spec.op == "all_to_all":
                hit = [C.all_to_all(g, spec.matrix, self.topology, algorithm=self.algorithm) for g in spec.groups]
            else:
                hit = [C.build(spec.op, g, spec.nbytes, self.topology) for g in spec.groups]
            self._cache[key] = hit
        return hit

    def start(self, spec, key, members: dict | None = None) -> simpy.Event:
        """Start every group of ``spec`` now; the returned event fires when the last group's last
        flow lands (an empty collective still pays its launch overhead). ``members``: rank -> event,
        fired when that member is released (staggered, see the module docstring, else at the end of
        its group)."""
        ev = self.env.event()
        parts = self._collectives(spec)
        self._events[key] = ev
        self._remaining[key] = len(parts)
        self._completed(self.net.advance(self.env.now))
        topo = self.topology
        for i, coll in enumerate(parts):
            self.net.start(coll, (key, i), self.env.now)
            if members is not None:
                ranks = [int(r) for r in spec.groups[i]]
                n = len(ranks)
                order = [members[ranks[(j + int(spec.cid)) % n]] for j in range(n)]
                staggered = (self.release_spread > 0 and spec.op == "all_to_all" and n > 1
                             and len({topo.host_of(r) for r in ranks}) > 1)
                self._stagger[(key, i)] = [self.env.now, order, 0, staggered]
        if not self._wake.triggered:
            self._wake.succeed()
        return ev

    # ---- pairwise start ----------------------------------------------------------------------------------
    def arrive_pairwise(self, spec, key, rank: int, members: dict, on_done) -> None:
        """``rank`` reached the All-to-All ``spec`` (direct algorithm): start its exchange with every peer
        of its group that is already there. ``members``: rank -> event fired when that rank is released;
        ``on_done()`` is called once every rank has arrived and every exchange has landed. Once a group
        is complete, its ranks are released staggered as in :meth:`start` (over the last spread of the
        time from the last arrival to the projected end of the group's exchanges) or when their own
        exchanges have landed, whichever comes first."""
        st = self._pairwise.get(key)
        if st is None:
            st = self._pairwise[key] = _PairwiseA2A(spec, members, on_done)
        gi = st.group_of[rank]
        group = [int(r) for r in spec.groups[gi]]
        pos = {r: i for i, r in enumerate(group)}
        m = spec.matrix
        self._completed(self.net.advance(self.env.now))
        for peer in group:
            if peer == rank or peer not in st.arrived:
                continue
            a, b = pos[rank], pos[peer]
            fwd = float(m[a, b]) if m is not None else spec.nbytes / len(group)
            back = float(m[b, a]) if m is not None else spec.nbytes / len(group)
            if fwd <= 0 and back <= 0:
                continue
            coll = C.Collective("all_to_all", "direct", np.array([rank, peer]),
                                [FlowStage([rank, peer], [peer, rank], [fwd, back], label="all_to_all:pair")],
                                (fwd + back) / 2)
            pair_key = ("pair", key, rank, peer)
            self.net.start(coll, pair_key, self.env.now)
            st.pairs[pair_key] = gi
        st.arrived.add(rank)
        n = len(group)
        if (all(r in st.arrived for r in group) and self.release_spread > 0 and n > 1
                and len({self.topology.host_of(r) for r in group}) > 1):
            st.stagger[gi] = [self.env.now, [group[(j + int(spec.cid)) % n] for j in range(n)], 0]
        self._release_pairwise(key, group)
        if not self._wake.triggered:
            self._wake.succeed()

    def _release_pairwise(self, key, ranks) -> None:
        """Release the ranks among ``ranks`` whose group is complete and whose exchanges have landed;
        end the collective when everything has."""
        st = self._pairwise[key]
        busy = {r for _, _, a, b in st.pairs for r in (a, b)}
        for r in ranks:
            if r not in st.released and r not in busy and st.group_complete(r):
                st.release(r)
        if st.arrived == set(st.group_of) and not st.pairs:
            for r in set(st.group_of) - st.released:
                st.release(r)
            del self._pairwise[key]
            st.on_done()

    def _pair_done(self, pair_key) -> None:
        _, key, a, b = pair_key
        del self._pairwise[key].pairs[pair_key]
        self._release_pairwise(key, (a, b))

    def _pairwise_release_due(self) -> float:
        """Staggered release of complete pairwise groups; returns the next release time (inf: none)."""
        now, nxt = self.env.now, math.inf
        for st in list(self._pairwise.values()):
            for gi, stag in st.stagger.items():
                start, order, j = stag
                while j < len(order) - 1:              # the last leaves when its exchanges have landed
                    if order[j] in st.released:
                        j += 1
                        continue
                    end = max((self.net.projected_end(k) for k, g in st.pairs.items() if g == gi), default=math.inf)
                    t = self._staggered(start, end, j, len(order))
                    if t > now + 1e-12 * max(1.0, now):
                        nxt = min(nxt, t)
                        break
                    st.release(order[j])
                    j += 1
                stag[2] = j
        return nxt

    # ---- driving the fluid model ----------------------------------------------------------------------
    def _drive(self):
        env = self.env
        while True:
            t_rel = min(self._release_due(), self._pairwise_release_due())
            t = self.net.next_event_time()
            self._wake = env.event()
            if math.isinf(t) and math.isinf(t_rel):
                yield self._wake
                continue
            delay = max(0.0, min(t, t_rel) - env.now)
            timer = env.timeout(delay)
            fired = yield timer | self._wake
            if timer in fired and t <= t_rel:
                done = self.net.advance(max(t, env.now))
            else:
                done = self.net.advance(env.now)
            self._completed(done)

    def _completed(self, done: list) -> None:
        """Act on the collectives (and pair exchanges) the network reports done."""
        for item in done:
            if item[0] == "pair":
                self._pair_done(item)
                continue
            key, group = item
            st = self._stagger.pop((key, group), None)
            if st is not None:
                for member in st[1][st[2]:]:
                    member.succeed()
            self._remaining[key] -= 1
            if self._remaining[key] == 0:
                del self._remaining[key]
                self._events.pop(key).succeed()

    # ---- staggered release ----------------------------------------------------------------------------
    def _release_time(self, part, st) -> float:
        start, order, j, staggered = st
        n = len(order)
        if not staggered or j >= n - 1:
            return math.inf              # the last member leaves with the collective's end
        return self._staggered(start, self.net.projected_end(part), j, n)

    def _staggered(self, start: float, end: float, j: int, n: int) -> float:
        """When release position ``j`` of ``n`` leaves a collective from ``start`` projected to end at
        ``end`` (inf while the end is unknown)."""
        if math.isinf(end):
            return math.inf
        return end - self.release_spread * (end - start) * (n - 1 - j) / (n - 1)

    def _release_due(self) -> float:
        """Release every member whose time has come; returns the next release time (inf: none)."""
        now, nxt = self.env.now, math.inf
        for part, st in self._stagger.items():
            while True:
                t = self._release_time(part, st)
                if t > now + 1e-12 * max(1.0, now):
                    nxt = min(nxt, t)
                    break
                st[1][st[2]].succeed()
                st[2] += 1
        return nxt

    # ---- results --------------------------------------------------------------------------------------------
    def link_traffic(self) -> pd.DataFrame:
        """Bytes carried per directed link: columns src, dst, link_class, capacity, bytes."""
        return self.net.link_traffic()


class _PairwiseA2A:
    """State of one pairwise All-to-All: who arrived and who was released, the pair exchanges in
    flight (key -> group index) and the staggered release of complete groups."""

    def __init__(self, spec, members: dict, on_done):
        self.spec, self.members, self.on_done = spec, members, on_done
        self.group_of = {int(r): i for i, g in enumerate(spec.groups) for r in g}
        self.arrived: set = set()
        self.released: set = set()
        self.pairs: dict = {}
        self.stagger: dict = {}       # group index -> [start, ranks in release order, next position]

    def group_complete(self, rank: int) -> bool:
        return all(int(p) in self.arrived for p in self.spec.groups[self.group_of[rank]])

    def release(self, rank: int) -> None:
        self.released.add(rank)
        self.members[rank].succeed()
