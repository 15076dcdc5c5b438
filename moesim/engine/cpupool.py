"""A processor-sharing pool of cores that several ranks' compute shares (the on-one-machine testbed:
R ranks on C < R cores).

Each job is a run of compute ops of one rank, given as its *alone* work (seconds it takes with a
whole core to itself). While n jobs are in the pool, each progresses at ``min(1, capacity / n)``
seconds of alone work per second (egalitarian processor sharing, what the kernel's fair scheduler
approximates over its time slices). ``capacity`` is in units of one rank alone: the pool's
effective cores. A lone rank therefore computes at its alone speed, and R ranks that compute
together each get ``capacity / R`` of it: the core share the contended microbenchmark measures.

Time slices (``quantum_s > 0``): the jobs queue in arrival order and the first ``slots`` (the
machine's cores) run, each at ``min(1, capacity / running)``; a job whose slice is over goes to the
back of the queue when others wait, and a new job joins at the back. The cores do the same work as
under processor sharing, but jobs that start together end apart (by up to a slice, or a whole run of
ops when the slice is longer than the run): on the testbed, ranks reach the next collective apart.

Compute first (``compute_first``, with time slices): a job is either a rank's *compute* or the
*exchange* work of a rank still inside an All-to-All (gloo's threads receiving and copying). A rank
that returns from a collective has slept through it, so the kernel's fair scheduler runs its main
thread ahead of threads that have been running: a new compute job goes ahead of every exchange job in
the queue (taking a core from one that is on it), for its first slice; when that slice is over it
queues at the back like any other. The exchange work of the ranks still in a call then waits for a
slice of the ranks already released, which is how a call releases its ranks apart.
"""
from __future__ import annotations

import math

import simpy

from moesim.errors import MoesimError


class CorePool:
    """Processor sharing over ``capacity`` effective cores (> 0), driven by a SimPy environment."""

    def __init__(self, env: simpy.Environment, capacity: float, quantum_s: float = 0.0, slots: int | None = None,
                 compute_first: bool = False):
        if not (capacity > 0 and math.isfinite(capacity)):
            raise MoesimError(f"a CPU pool needs a positive, finite capacity (effective cores), got {capacity!r}")
        if not (quantum_s >= 0 and math.isfinite(quantum_s)):
            raise MoesimError(f"a CPU pool's time slice must be finite and >= 0 s, got {quantum_s!r}")
        self.env = env
        self.capacity = float(capacity)
        self.quantum = float(quantum_s)
        self.slots = max(1, int(slots if slots else math.ceil(self.capacity - 1e-9)))
        self.compute_first = bool(compute_first) and self.quantum > 0
        self._jobs: dict[int, list] = {}     # id -> [remaining alone seconds, event]
        self._exchange: set[int] = set()     # ids of exchange jobs (compute first)
        self._queue: list[int] = []          # time slices: jobs in run order, the first `slots` on a core
        self._slice_end: dict[int, float] = {}
        self._ids = 0
        self._last = 0.0
        self._wake = env.event()
        env.process(self._drive())

    @property
    def active(self) -> int:
        """Jobs in the pool now."""
        return len(self._jobs)

    def rate(self, n: int | None = None) -> float:
        """Alone seconds per second each of ``n`` jobs (default: those in the pool) progresses; with time
        slices, each job on a core."""
        n = self.active if n is None else n
        if self.quantum > 0:
            n = min(n, self.slots)
        return min(1.0, self.capacity / n) if n > 0 else 0.0

    def run(self, alone_s: float, exchange: bool = False) -> simpy.Event:
        """Add a job of ``alone_s`` seconds of alone work; the event fires when it is done. ``exchange``:
        the job is a rank's work inside an All-to-All (matters only with ``compute_first``)."""
        if not (alone_s >= 0 and math.isfinite(alone_s)):
            raise MoesimError(f"a compute job needs finite, non-negative work, got {alone_s!r} s")
        ev = self.env.event()
        if alone_s == 0:
            ev.succeed()
            return ev
        self._progress()
        self._ids += 1
        self._jobs[self._ids] = [float(alone_s), ev]
        if exchange:
            self._exchange.add(self._ids)
        first = (next((i for i, k in enumerate(self._queue) if k in self._exchange), None)
                 if self.compute_first and not exchange else None)
        if first is not None:
            q, n = self._queue, self.slots
            q.insert(first, self._ids)
            if len(q) > n and q[n] not in self._exchange and q[n] in self._slice_end:
                # a compute job on a core was pushed off: the exchange job on a core goes instead
                i = max(i for i in range(n) if q[i] in self._exchange)
                q[i], q[n] = q[n], q[i]
            for k in q[n:]:                          # off a core: a fresh slice when it is back on one
                self._slice_end.pop(k, None)
        else:
            self._queue.append(self._ids)
        if not self._wake.triggered:
            self._wake.succeed()
        return ev

    # ------------------------------------------------------------------------------------------------
    def _running(self) -> list[int]:
        return self._queue[:self.slots] if self.quantum > 0 else self._queue

    def _progress(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0 and self._jobs:
            r = self.rate()
            for k in self._running():
                self._jobs[k][0] -= r * dt
        self._last = now

    def _rotate(self) -> None:
        """Time slices: a job on a core whose slice is over goes to the back of the queue when others wait."""
        if self.quantum <= 0:
            return
        now = self.env.now
        tol = 1e-12 * max(1.0, now)
        for k in self._queue[:self.slots]:
            self._slice_end.setdefault(k, now + self.quantum)
        if len(self._queue) > self.slots:
            over = [k for k in self._queue[:self.slots] if self._slice_end[k] <= now + tol]
            for k in over:
                self._queue.remove(k)
                self._queue.append(k)
                del self._slice_end[k]
            for k in self._queue[:self.slots]:
                self._slice_end.setdefault(k, now + self.quantum)

    def _drive(self):
        env = self.env
        while True:
            self._progress()
            done = [k for k, (rem, _) in self._jobs.items() if rem <= 1e-12 * max(1.0, env.now)]
            for k in done:
                self._jobs.pop(k)[1].succeed()
                self._queue.remove(k)
                self._slice_end.pop(k, None)
                self._exchange.discard(k)
            self._rotate()
            self._wake = env.event()
            if not self._jobs:
                yield self._wake
                continue
            r = self.rate()
            running = self._running()
            delay = max(0.0, min(self._jobs[k][0] for k in running) / r)
            if self.quantum > 0 and len(self._queue) > self.slots:
                delay = min(delay, max(0.0, min(self._slice_end[k] for k in running) - env.now))
            yield env.timeout(delay) | self._wake


def pool_of(topology, device) -> tuple[float, float] | None:
    """The CPU pool of a topology whose ranks all share one machine's cores (graph attribute
    ``shared_cpu_cores``, set for the on-one-machine testbed), as (capacity in effective cores, alone
    factor): a priced op's alone work is its priced seconds times the alone factor.

    A profile whose in-situ fit calibrated the pool (``device.pool_cores``, ``device.alone_factor``)
    gives both. Else a measured profile of the shared machine implies them: its ops are priced at
    the core share f that ``ranks_per_machine`` R ranks computing together get, so capacity = f R and
    the factor is f (the pool then reproduces the profile exactly when all R compute at once).
    Otherwise the ops are priced alone: capacity = the cores, factor 1. None when the topology has no
    pool."""
    cores = topology.graph.graph.get("shared_cpu_cores")
    if not cores:
        return None
    try:
        cores = float(cores)
    except (TypeError, ValueError):
        raise MoesimError(f"topology graph attribute 'shared_cpu_cores' must be a number of cores, got {cores!r}") from None
    if not (cores > 0 and math.isfinite(cores)):
        raise MoesimError(f"topology graph attribute 'shared_cpu_cores' must be positive, got {cores!r}")
    if device.pool_cores:
        return float(device.pool_cores), float(device.alone_factor or 1.0)
    if device.ranks_per_machine and device.core_share < 1.0:
        return device.core_share * device.ranks_per_machine, device.core_share
    return cores, 1.0
