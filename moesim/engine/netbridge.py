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
classes."""
from __future__ import annotations

import math

import pandas as pd
import simpy

from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives as C


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
        self.net.advance(self.env.now)
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

    # ---- driving the fluid model ----------------------------------------------------------------------
    def _drive(self):
        env = self.env
        while True:
            t_rel = self._release_due()
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
            for key, group in done:
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
        end = self.net.projected_end(part)
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
