"""The SimPy engine: one process per class of symmetric ranks walks the step's operation graph;
collectives start when every rank has launched them and their channel is free, and finish when
the fluid network model says their flows are done. The network is advanced as events fire, so
concurrent collectives (All-to-Alls of several ep groups, gradient all-reduces overlapping the
backward pass) share links max-min fairly.

Where ranks share one machine's cores (:class:`SimOptions` ``cpu_pool``), every rank is its own
process, runs of compute ops share the cores (:mod:`moesim.engine.cpupool`), All-to-All members
over shaped links are released staggered (:mod:`moesim.engine.netbridge`), and a profile's
``a2a_cpu_s`` is CPU work each released member runs in the pool before its All-to-All returns (booked
to the All-to-All's wait span; with ``a2a_cpu_overlap`` it runs from the rank's arrival, beside the
transfer, and the call returns when both are done); with ``compute_first`` the compute of released
ranks goes ahead of it for a slice (:class:`moesim.engine.cpupool.CorePool`).

Simplifications (documented in README): a collective completes for all its members at once (when
its last flow lands; staggered All-to-Alls aside), every group of one SPMD collective starts
together (exact when the groups are alike, as they are for the layouts moesim builds), and a rank's
compute stream runs one op at a time (runs of ops between two collectives take a single SimPy
event).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import simpy

from moesim.config import Config
from moesim.cost import CostModel, Profile, find_profile
from moesim.engine.costing import RankClasses, per_rank, price_program
from moesim.engine.cpupool import CorePool, pool_of
from moesim.engine.netbridge import NetworkBridge
from moesim.engine.result import SimResult, Span
from moesim.errors import MoesimError
from moesim.topology.model import Topology
from moesim.workload import build_program
from moesim.workload.builder import DEFAULT_BUCKET_BYTES
from moesim.workload.ops import Compute, Launch, Program


@dataclass(frozen=True)
class SimOptions:
    """Engine options: ``a2a_algorithm`` direct | 2d; ``bucket_bytes`` gradient bucket size (bytes);
    ``a2a_copies`` measured routing (token copies per forward dispatch, ep x ep), or None to use the
    config's routing.

    Shared cores (only for topologies whose ranks share one machine's cores, graph attribute
    ``shared_cpu_cores``: the on-one-machine testbed): simulate every rank on its own, share the cores
    among the ranks that compute (:mod:`moesim.engine.cpupool`) and release the members of
    All-to-Alls across shaped links staggered (:mod:`moesim.engine.netbridge`; every All-to-All
    across hosts when the profile has a ``step_release_spread``). ``cpu_pool`` None (default): on
    when the profile calibrates a pool (``calibration.cpu_pool``); True: on, with ``pool_cores``
    (effective cores) and ``alone_factor`` (a priced op's alone work per priced second) defaulting to
    what the profile implies (:func:`moesim.engine.cpupool.pool_of`); False: off, every op costs the
    profile's fixed core share. ``release_spread`` overrides the topology's and the profile's
    ``step_release_spread`` (set, it applies to every All-to-All whose group spans hosts).
    ``time_slice_s`` (s; 0: processor sharing) and ``pairwise_a2a`` (each rank pair of a direct
    All-to-All starts once both ranks are there) override the profile's ``calibration.cpu_pool``
    (default: processor sharing, together), as ``a2a_cpu_s`` does (s of alone CPU work each member
    rank of an All-to-All runs in the pool once its data has landed, before it returns; default 0), and
    ``compute_first`` does (with time slices, a rank's compute goes ahead of that All-to-All work for its
    first slice; default off), and ``a2a_cpu_overlap`` does (that All-to-All CPU runs from the rank's
    arrival at the call, beside its transfer, and the rank returns when both its data has landed and
    the CPU is done: gloo's threads take the data as it comes, and the kernel moves it while they wait
    for a core; default off: after the data). ``continuous_bucket`` overrides how the profile's shaped
    links account their token buckets (True: continuously, False: per stage; :mod:`moesim.network.fluid`)."""

    a2a_algorithm: str = "direct"
    bucket_bytes: float = DEFAULT_BUCKET_BYTES
    a2a_copies: Optional[np.ndarray] = None
    cpu_pool: Optional[bool] = None
    pool_cores: Optional[float] = None
    alone_factor: Optional[float] = None
    release_spread: Optional[float] = None
    time_slice_s: Optional[float] = None
    pairwise_a2a: Optional[bool] = None
    a2a_cpu_s: Optional[float] = None
    compute_first: Optional[bool] = None
    continuous_bucket: Optional[bool] = None
    a2a_cpu_overlap: Optional[bool] = None


def _resolve_profiles(topology, profile) -> tuple[dict, np.ndarray, Profile]:
    """Cost models per device name and each rank's device name; ``profile`` (name, path or Profile)
    overrides the topology's per-GPU ``device`` attributes."""
    n = topology.num_gpus
    if profile is not None:
        prof = profile if isinstance(profile, Profile) else find_profile(profile)
        return {prof.name: CostModel(prof)}, np.array([prof.name] * n), prof
    names = [topology.device_of(r) for r in range(n)]
    missing = [r for r, d in enumerate(names) if not d]
    if missing:
        raise MoesimError(f"GPU rank {missing[0]} of the topology names no device profile; pass --profile NAME")
    models, first = {}, None
    for d in sorted(set(names)):
        prof = find_profile(d)
        models[d] = CostModel(prof)
        first = first or prof
    return models, np.array(names), models[names[0]].profile


class Simulation:
    """Simulate one step of ``cfg`` on ``topology``.

    ``profile``: device profile name/path/object for every GPU (default: each GPU's ``device``);
    network parameters (per-message latency, per-collective overhead) come from that profile."""

    def __init__(self, cfg: Config, topology, profile=None, options: SimOptions = SimOptions()):
        if cfg.world_size != topology.num_gpus:
            raise MoesimError(f"the config needs {cfg.world_size} GPUs (dp*tp = {cfg.parallel.dp_size}*"
                              f"{cfg.parallel.tp}) but the topology has {topology.num_gpus}")
        from moesim.calibrate.netmodel import apply_profile_network
        self.cfg, self.options = cfg, options
        self.models, self.device_of_rank, self.profile = _resolve_profiles(topology, profile)
        # calibrated link rates/latencies and link efficiencies of the profile, per link class
        self.topology = apply_profile_network(topology, self.profile)
        if options.continuous_bucket is not None and "burst_bytes" in self.topology.graph.graph:
            g = self.topology.graph.copy()
            g.graph["burst_accounting"] = "continuous" if options.continuous_bucket else "per_stage"
            self.topology = Topology(g, source=self.topology.source)
        self.program: Program = build_program(cfg, options.bucket_bytes, options.a2a_copies)
        self.classes: RankClasses = price_program(self.program, self.models, self.device_of_rank)
        self.time_slice_s, self.pairwise, self.a2a_cpu_s, self.compute_first = 0.0, False, 0.0, False
        self.a2a_cpu_overlap = False
        use_pool = options.cpu_pool if options.cpu_pool is not None else bool(self.profile.device.pool_cores)
        self.pool = pool_of(self.topology, self.profile.device) if use_pool else None
        if options.cpu_pool and self.pool is None:
            raise MoesimError("cpu_pool=True needs a topology whose ranks share one machine's cores "
                              "(graph attribute 'shared_cpu_cores')")
        if self.pool is not None:
            self.pool = (self.pool[0] if options.pool_cores is None else float(options.pool_cores),
                         self.pool[1] if options.alone_factor is None else float(options.alone_factor))
            if not 0.0 < self.pool[1] <= 1.0:
                raise MoesimError(f"alone_factor must lie in (0, 1], got {self.pool[1]!r}")
            self.classes = per_rank(self.classes)
            self.time_slice_s = float(self.profile.device.time_slice_s if options.time_slice_s is None
                                      else options.time_slice_s)
            self.pairwise = bool(self.profile.device.pairwise_a2a if options.pairwise_a2a is None
                                 else options.pairwise_a2a) and options.a2a_algorithm == "direct"
            self.a2a_cpu_s = float(self.profile.device.a2a_cpu_s if options.a2a_cpu_s is None else options.a2a_cpu_s)
            self.compute_first = bool(self.profile.device.compute_first if options.compute_first is None
                                      else options.compute_first)
            self.a2a_cpu_overlap = bool(self.profile.device.a2a_cpu_overlap if options.a2a_cpu_overlap is None
                                        else options.a2a_cpu_overlap)
            if not (0.0 <= self.a2a_cpu_s < 1.0):
                raise MoesimError(f"a2a_cpu_s must lie in [0, 1) s, got {self.a2a_cpu_s!r}")
            spread = options.release_spread
            if spread is None and self.profile.device.step_release_spread > 0:
                spread = self.profile.device.step_release_spread
            if spread is not None:
                if not 0.0 <= spread < 1.0:
                    raise MoesimError(f"release_spread must lie in [0, 1), got {spread!r}")
                g = self.topology.graph.copy()
                g.graph["release_spread"] = {"*": float(spread)}
                self.topology = Topology(g, source=self.topology.source)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        env = simpy.Environment()
        prog, classes = self.program, self.classes
        bridge = NetworkBridge(env, self.topology, self.profile.network, self.options.a2a_algorithm)
        n_classes = classes.count
        arrivals = {cid: 0 for cid in prog.collectives}
        done = {cid: env.event() for cid in prog.collectives}
        slots = int(round(float(self.topology.graph.graph.get("shared_cpu_cores") or 0))) or None
        pool = CorePool(env, self.pool[0], self.time_slice_s, slots, self.compute_first) if self.pool else None
        alone_factor = self.pool[1] if self.pool else 1.0
        # per-rank mode: each rank is released by its own event (staggered All-to-Alls)
        released: dict[int, dict] = {}

        def member_events(cid: int) -> dict:
            if cid not in released:
                released[cid] = {r: env.event() for r in range(prog.world)}
            return released[cid]
        started: dict[int, float] = {}
        finished: dict[int, float] = {}
        # channel order: a collective waits for the previous one on its channel
        previous: dict[int, int | None] = {}
        last_on_channel: dict[str, int] = {}
        for it in prog.items:
            if isinstance(it, Launch):
                ch = prog.collectives[it.cid].channel
                previous[it.cid] = last_on_channel.get(ch)
                last_on_channel[ch] = it.cid

        def start(cid: int):
            started[cid] = env.now
            ev = bridge.start(prog.collectives[cid], cid, member_events(cid) if pool else None)
            ev.callbacks.append(lambda _e, cid=cid: finish(cid))

        def finish(cid: int):
            finished[cid] = env.now
            done[cid].succeed()
            for member in released.get(cid, {}).values():   # ranks outside every group of it
                if not member.triggered:
                    member.succeed()

        pairwise = pool is not None and self.pairwise
        a2a_cpu = self.a2a_cpu_s if pool is not None else 0.0
        a2a_members: dict[int, frozenset] = {}
        overlap = a2a_cpu > 0 and self.a2a_cpu_overlap
        cpu_jobs: dict[tuple, simpy.Event] = {}   # overlap: (cid, class) -> its All-to-All CPU job

        def a2a_cpu_of(cid: int, rank: int) -> float:
            """Alone CPU seconds ``rank`` spends in All-to-All ``cid`` (after its data has landed, or beside
            the transfer with ``a2a_cpu_overlap``)."""
            spec = prog.collectives[cid]
            if a2a_cpu <= 0 or spec.op != "all_to_all":
                return 0.0
            if cid not in a2a_members:
                a2a_members[cid] = frozenset(int(r) for g in spec.groups for r in g)
            return a2a_cpu if rank in a2a_members[cid] else 0.0

        def when_channel_free(cid: int, go) -> None:
            """Run ``go()`` once the previous collective on ``cid``'s channel is done."""
            prev = previous.get(cid)
            if prev is None or done[prev].processed or prev in finished:
                go()
            else:
                done[prev].callbacks.append(lambda _e: go())

        def arrive_pair(cid: int, rank: int):
            def go():
                started.setdefault(cid, env.now)
                bridge.arrive_pairwise(prog.collectives[cid], cid, rank, member_events(cid), lambda: finish(cid))
            when_channel_free(cid, go)

        def arrive(cid: int, c: int):
            if pairwise and prog.collectives[cid].op == "all_to_all":
                arrive_pair(cid, int(classes.members[c][0]))
                return
            arrivals[cid] += 1
            if arrivals[cid] == n_classes:
                when_channel_free(cid, lambda: start(cid))

        spans: list[list[Span]] = [[] for _ in range(n_classes)]
        end_time = np.zeros(n_classes)
        items = prog.items

        def rank_class(c: int):
            out = spans[c]
            durations = classes.durations[c]
            row, i, n = 0, 0, len(items)
            while i < n:
                it = items[i]
                if isinstance(it, Compute):
                    t0 = t = env.now
                    first = len(out)
                    while i < n and isinstance(items[i], Compute):
                        op = items[i]
                        d = durations[row]
                        out.append(Span("compute", op.name, op.phase, op.layer, op.direction, t, t + d))
                        t += d
                        row += 1
                        i += 1
                    if t > t0 and pool is None:
                        yield env.timeout(t - t0)
                    elif t > t0:
                        # shared cores: the run's alone work, at the pool's rate; its ops' spans are
                        # stretched evenly over the time it took
                        yield pool.run((t - t0) * alone_factor)
                        scale = (env.now - t0) / (t - t0)
                        for k in range(first, len(out)):
                            sp = out[k]
                            out[k] = sp._replace(start=t0 + (sp.start - t0) * scale, end=t0 + (sp.end - t0) * scale)
                elif isinstance(it, Launch):
                    if overlap:   # the call's CPU runs beside its transfer, from the rank's arrival
                        work = a2a_cpu_of(it.cid, int(classes.members[c][0]))
                        if work > 0:
                            cpu_jobs[(it.cid, c)] = pool.run(work, exchange=True)
                    arrive(it.cid, c)
                    i += 1
                else:  # Wait
                    ev = member_events(it.cid)[int(classes.members[c][0])] if pool else done[it.cid]
                    t0 = env.now
                    if not ev.processed:
                        yield ev
                    job = cpu_jobs.pop((it.cid, c), None)
                    if job is not None and not job.processed:
                        yield job
                    if a2a_cpu > 0 and not overlap:
                        work = a2a_cpu_of(it.cid, int(classes.members[c][0]))
                        if work > 0:
                            yield pool.run(work, exchange=True)
                    spec = prog.collectives[it.cid]
                    out.append(Span("compute", f"wait:{spec.name}", it.phase, spec.layer, spec.direction, t0, env.now))
                    i += 1
            end_time[c] = env.now

        for c in range(n_classes):
            env.process(rank_class(c))
        env.run()
        unfinished = [cid for cid in prog.collectives if cid not in finished and (arrivals[cid] or cid in started)]
        if unfinished:  # pragma: no cover - would be an engine bug
            raise RuntimeError(f"collectives never finished: {unfinished[:5]}")
        coll_spans = [Span(c.channel, c.name, c.phase, c.layer, c.direction, started[c.cid], finished[c.cid])
                      for c in prog.collectives.values() if c.cid in finished]
        return SimResult(cfg=self.cfg, program=prog, classes=classes, class_spans=spans, collective_spans=coll_spans,
                         end_time=end_time, link_bytes=bridge.link_traffic(), topology=self.topology,
                         profile=self.profile, cpu_pool=self.pool)


def simulate(cfg: Config, topology, profile=None, options: SimOptions = SimOptions()) -> SimResult:
    """Simulate one step of ``cfg`` on ``topology`` (see :class:`Simulation`)."""
    return Simulation(cfg, topology, profile, options).run()
