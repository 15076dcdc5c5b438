"""Connect the SimPy clock to the fluid network model: start collectives, advance the network as
its events fall due, and fire a SimPy event when a collective completes."""
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

    def start(self, spec, key) -> simpy.Event:
        """Start every group of ``spec`` now; the returned event fires when the last group's last
        flow lands (an empty collective still pays its launch overhead)."""
        ev = self.env.event()
        parts = self._collectives(spec)
        self._events[key] = ev
        self._remaining[key] = len(parts)
        self.net.advance(self.env.now)
        for i, coll in enumerate(parts):
            self.net.start(coll, (key, i), self.env.now)
        if not self._wake.triggered:
            self._wake.succeed()
        return ev

    # ---- driving the fluid model ----------------------------------------------------------------------
    def _drive(self):
        env = self.env
        while True:
            t = self.net.next_event_time()
            self._wake = env.event()
            if math.isinf(t):
                yield self._wake
                continue
            delay = max(0.0, t - env.now)
            timer = env.timeout(delay)
            fired = yield timer | self._wake
            if timer in fired:
                done = self.net.advance(max(t, env.now))
            else:
                done = self.net.advance(env.now)
            for key, _group in done:
                self._remaining[key] -= 1
                if self._remaining[key] == 0:
                    del self._remaining[key]
                    self._events.pop(key).succeed()

    # ---- results --------------------------------------------------------------------------------------------
    def link_traffic(self) -> pd.DataFrame:
        """Bytes carried per directed link: columns src, dst, link_class, capacity, bytes."""
        return self.net.link_traffic()
