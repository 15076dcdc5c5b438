"""The SimPy engine: one process per class of symmetric ranks walks the step's operation graph;
collectives start when every rank has launched them and their channel is free, and finish when
the fluid network model says their flows are done. The network is advanced as events fire, so
concurrent collectives (All-to-Alls of several ep groups, gradient all-reduces overlapping the
backward pass) share links max-min fairly.

Simplifications (documented in README): a collective completes for all its members at once (when
its last flow lands), every group of one SPMD collective starts together (exact when the groups
are alike, as they are for the layouts moesim builds), and a rank's compute stream runs one op at
a time (runs of ops between two collectives take a single SimPy event).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import simpy

from moesim.config import Config
from moesim.cost import CostModel, Profile, find_profile
from moesim.engine.costing import RankClasses, price_program
from moesim.engine.netbridge import NetworkBridge
from moesim.engine.result import SimResult, Span
from moesim.errors import MoesimError
from moesim.workload import build_program
from moesim.workload.builder import DEFAULT_BUCKET_BYTES
from moesim.workload.ops import Compute, Launch, Program


@dataclass(frozen=True)
class SimOptions:
    """Engine options: ``a2a_algorithm`` direct | 2d; ``bucket_bytes`` gradient bucket size (bytes);
    ``a2a_copies`` measured routing (token copies per forward dispatch, ep x ep), or None to use the
    config's routing."""

    a2a_algorithm: str = "direct"
    bucket_bytes: float = DEFAULT_BUCKET_BYTES
    a2a_copies: Optional[np.ndarray] = None


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
        self.program: Program = build_program(cfg, options.bucket_bytes, options.a2a_copies)
        self.classes: RankClasses = price_program(self.program, self.models, self.device_of_rank)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        env = simpy.Environment()
        prog, classes = self.program, self.classes
        bridge = NetworkBridge(env, self.topology, self.profile.network, self.options.a2a_algorithm)
        n_classes = classes.count
        arrivals = {cid: 0 for cid in prog.collectives}
        done = {cid: env.event() for cid in prog.collectives}
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
            ev = bridge.start(prog.collectives[cid], cid)
            ev.callbacks.append(lambda _e, cid=cid: finish(cid))

        def finish(cid: int):
            finished[cid] = env.now
            done[cid].succeed()

        def arrive(cid: int):
            arrivals[cid] += 1
            if arrivals[cid] < n_classes:
                return
            prev = previous.get(cid)
            if prev is None or done[prev].processed or prev in finished:
                start(cid)
            else:
                done[prev].callbacks.append(lambda _e, cid=cid: start(cid))

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
                    while i < n and isinstance(items[i], Compute):
                        op = items[i]
                        d = durations[row]
                        out.append(Span("compute", op.name, op.phase, op.layer, op.direction, t, t + d))
                        t += d
                        row += 1
                        i += 1
                    if t > t0:
                        yield env.timeout(t - t0)
                elif isinstance(it, Launch):
                    arrive(it.cid)
                    i += 1
                else:  # Wait
                    ev = done[it.cid]
                    t0 = env.now
                    if not ev.processed:
                        yield ev
                    spec = prog.collectives[it.cid]
                    out.append(Span("compute", f"wait:{spec.name}", it.phase, spec.layer, spec.direction, t0, env.now))
                    i += 1
            end_time[c] = env.now

        for c in range(n_classes):
            env.process(rank_class(c))
        env.run()
        unfinished = [cid for cid in prog.collectives if cid not in finished and arrivals[cid]]
        if unfinished:  # pragma: no cover - would be an engine bug
            raise RuntimeError(f"collectives never finished: {unfinished[:5]}")
        coll_spans = [Span(c.channel, c.name, c.phase, c.layer, c.direction, started[c.cid], finished[c.cid])
                      for c in prog.collectives.values() if c.cid in finished]
        return SimResult(cfg=self.cfg, program=prog, classes=classes, class_spans=spans, collective_spans=coll_spans,
                         end_time=end_time, link_bytes=bridge.link_traffic(), topology=self.topology,
                         profile=self.profile)


def simulate(cfg: Config, topology, profile=None, options: SimOptions = SimOptions()) -> SimResult:
    """Simulate one step of ``cfg`` on ``topology`` (see :class:`Simulation`)."""
    return Simulation(cfg, topology, profile, options).run()
