"""The testbed's network as the simulator sees it, and the calibrated link parameters.

Link model (per link class, fitted by :func:`moesim.calibrate.fit.fit_network`)::

    effective bandwidth = efficiency * tc_rate      nic (a namespace's veth), shaped by tc tbf
                        = (not limited)             nic, unshaped
                        = max_bandwidth             stack (a rank's TCP path to its veth), loopback

``efficiency`` is what tbf lets through of its nominal rate (it counts Ethernet/IP/TCP headers,
so payload goodput is below the rate). ``max_bandwidth`` is the throughput of the kernel's TCP
copies on the ranks' cores: through a rank's ``stack`` for traffic to other namespaces, over the
``loopback`` device between ranks of one namespace (the kernel routes local addresses over ``lo``,
never the veth). An unshaped veth has no rate of its own; the copies its traffic costs are the
ranks' (their ``stack`` links). The microbenchmarks time collectives with every rank copying at
once, as the ranks of a step do in an All-to-All, so a step uses these rates as fitted.
``latency_s`` is added per link on a route (a message across the bridge crosses two ``nic``
links); the profile's ``network.latency_per_message_s`` is the software cost of one message (gloo,
syscalls), paid once per flow. Optional, shaped links only (0 = off): ``two_way_penalty`` b (a
link that carries a rank pair's traffic in both directions at once carries 1/(1+b) of its rate;
``peer_penalty`` c makes it 1/(1+b+c(k-1)) when those flows cross k peer hosts' shaped links),
``two_way_onset_s`` H (that loss sets in only after the link has carried such traffic for H
seconds without a break), ``two_way_rate_exponent`` γ with ``two_way_reference_rate`` R0 (bytes/s:
b and c hold at the tc rate R0 and scale by ``(R / R0) ** -γ`` at rate R, for a loss that falls as the
rate rises, as ``real_backend.patterns`` measures; γ = 0: one loss at every rate), ``burst_s`` (tbf
bucket: ``burst_s * rate`` bytes pass at once at a collective's start; see :mod:`moesim.network.fluid`),
``burst_continuous`` (the buckets are accounted continuously, not per stage: the network's
``graph.graph["burst_accounting"] = "continuous"``), ``two_way_active`` (the two-way loss holds a
flow only while its reverse flow still sends: ``graph.graph["two_way_accounting"] = "active"``), ``peer_shared`` (c counts only the peer links
that other hosts' two-way flows also cross: ``graph.graph["peer_accounting"] = "shared"``) and
``release_spread`` s (an All-to-All across
shaped links returns to its members over the last s of its duration, as ``real_backend.patterns``
measures; see :mod:`moesim.engine.netbridge`).

Collective times for fitting are computed with the simulator's own network model
(:mod:`moesim.network`): per stage, the fluid time with one link class at unit capacity (bytes on
its bottleneck), so that fitted parameters mean the same thing in validation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import networkx as nx
import numpy as np

from moesim.errors import MoesimError
from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives as C
from moesim.network.stages import Collective
from moesim.topology.generators import emulated_testbed
from moesim.testbed_shaping import TBF_BURST_S
from moesim.topology.model import Topology

CLASSES = ("nic", "stack", "loopback")
#: the testbed's tc tbf bucket, in seconds at the rate (see :mod:`moesim.testbed_shaping`)
TESTBED_TBF_BURST_S = TBF_BURST_S
BIG = 1e30


@dataclass(frozen=True)
class LinkParams:
    """Calibrated parameters of one link class (SI units; ``efficiency`` None = not rate-limited)."""

    efficiency: float | None = None
    max_bandwidth: float = math.inf
    latency_s: float = 0.0
    two_way_penalty: float = 0.0     # b: a link carrying two-way rank-pair traffic carries 1/(1+b) of it
    peer_penalty: float = 0.0        # c: ... 1/(1+b+c(k-1)) when those flows cross k peer hosts' links
    two_way_onset_s: float = 0.0     # H: ... only after H s of such traffic without a break (0: at once)
    two_way_rate_exponent: float = 0.0   # γ: b and c scale by (rate / two_way_reference_rate) ** -γ
    two_way_reference_rate: float = 0.0  # R0 (bytes/s): the tc rate at which b and c hold as written
    burst_s: float = 0.0             # token bucket: an idle shaped link passes burst_s * tc rate bytes at once
    burst_continuous: bool = False   # ... its bucket accounted continuously (not per stage; moesim.network.fluid)
    two_way_active: bool = False     # the two-way loss only while a flow's reverse flow still sends (moesim.network.fluid)
    peer_shared: bool = False        # c counts only peer links other hosts' two-way flows also cross (ditto)
    release_spread: float = 0.0      # an All-to-All over it releases its members over the last fraction of its time

    def bandwidth(self, nominal: float | None) -> float:
        """Effective bytes/s for a link with tc rate ``nominal`` (bytes/s; None = unshaped)."""
        shaped = math.inf if nominal is None or self.efficiency is None else self.efficiency * nominal
        return min(shaped, self.max_bandwidth)

    def two_way_scale(self, nominal: float | None) -> float:
        """Factor on b and c for a link with tc rate ``nominal`` (bytes/s; None = unshaped): ``(nominal /
        two_way_reference_rate) ** -two_way_rate_exponent``, 1 when the exponent is 0."""
        if self.two_way_rate_exponent == 0.0 or nominal is None:
            return 1.0
        if not self.two_way_reference_rate > 0:
            raise MoesimError("a two-way loss that depends on the rate (two_way_rate_exponent) needs a positive "
                              "two_way_reference_rate (bytes/s)")
        return float((nominal / self.two_way_reference_rate) ** (-self.two_way_rate_exponent))

    def to_dict(self) -> dict:
        out = {"max_bandwidth": None if math.isinf(self.max_bandwidth) else float(self.max_bandwidth),
               "latency_s": float(self.latency_s)}
        if self.efficiency is not None:
            out = {"efficiency": float(self.efficiency), **out}
        if self.two_way_penalty > 0:
            out["two_way_penalty"] = float(self.two_way_penalty)
        if self.peer_penalty > 0:
            out["peer_penalty"] = float(self.peer_penalty)
        if self.two_way_onset_s > 0:
            out["two_way_onset_s"] = float(self.two_way_onset_s)
        if self.two_way_rate_exponent != 0.0:
            out["two_way_rate_exponent"] = float(self.two_way_rate_exponent)
            out["two_way_reference_rate"] = float(self.two_way_reference_rate)
        if self.burst_s > 0:
            out["burst_s"] = float(self.burst_s)
        if self.burst_continuous:
            out["burst_continuous"] = True
        if self.two_way_active:
            out["two_way_active"] = True
        if self.peer_shared:
            out["peer_shared"] = True
        if self.release_spread > 0:
            out["release_spread"] = float(self.release_spread)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "LinkParams":
        mb = d.get("max_bandwidth")
        return cls(efficiency=None if d.get("efficiency") is None else float(d["efficiency"]),
                   max_bandwidth=math.inf if mb is None else float(mb), latency_s=float(d.get("latency_s", 0.0)),
                   two_way_penalty=float(d.get("two_way_penalty") or 0.0),
                   peer_penalty=float(d.get("peer_penalty") or 0.0),
                   two_way_onset_s=float(d.get("two_way_onset_s") or 0.0), burst_s=float(d.get("burst_s") or 0.0),
                   two_way_rate_exponent=float(d.get("two_way_rate_exponent") or 0.0),
                   two_way_reference_rate=float(d.get("two_way_reference_rate") or 0.0),
                   burst_continuous=d.get("burst_continuous") is True,
                   two_way_active=d.get("two_way_active") is True,
                   peer_shared=d.get("peer_shared") is True,
                   release_spread=float(d.get("release_spread") or 0.0))


def testbed_graph(hosts: int, ranks_per_host: int, rate_bits: float | None, cores: int | None = None) -> nx.Graph:
    """The graph ``real_backend.testbed`` writes (nominal: tc rate for ``nic``, 2 GB/s per rank for
    ``stack`` and ``loopback``); ``cores``: the machine's cores, which all its ranks share
    (``shared_cpu_cores``; None: not recorded)."""
    nic = (rate_bits / 8.0) if rate_bits else 10e9
    g = emulated_testbed(hosts, ranks_per_host, link_bandwidth=nic).graph.copy()
    g.graph["tc_rate_bits"] = float(rate_bits or 0.0)
    if cores:
        g.graph["shared_cpu_cores"] = int(cores)
    g.graph["source"] = "real_backend.testbed"
    return g


def upgrade_testbed_topology(topology: Topology) -> Topology:
    """A testbed topology in the current layout. Files ``real_backend.testbed`` wrote before ranks had a
    ``stack`` link (every flow crossed one per-rank ``loopback`` link to its host, even between two
    namespaces) are rebuilt from what they record: hosts, ranks per host, tc rate and cores (their
    graph attributes are kept). Other topologies are returned as they are."""
    g = topology.graph
    if "tc_rate_bits" not in g.graph or "stack" in topology.link_classes:
        return topology
    rph = {len(topology.ranks_of_host(h)) for h in topology.hosts}
    if len(rph) != 1:
        return topology
    new = testbed_graph(len(topology.hosts), rph.pop(), float(g.graph.get("tc_rate_bits") or 0.0) or None,
                        g.graph.get("shared_cpu_cores"))
    new.graph.update({k: v for k, v in g.graph.items() if k not in ("name", "description")})
    new.graph["layout_upgraded_from"] = "per-rank loopback link carrying every flow"
    return Topology(new, source=topology.source)


def nominal_rate(topology: Topology, link_class: str, bandwidth: float) -> float | None:
    """The tc rate (bytes/s) behind a link of a testbed topology, None when unshaped; for other
    topologies the link's own bandwidth."""
    gattr = topology.graph.graph
    if "tc_rate_bits" in gattr:
        if link_class == "nic":
            rate = float(gattr.get("tc_rate_bits") or 0.0)
            return rate / 8.0 if rate > 0 else None
        return None  # stack, loopback: not shaped
    return bandwidth


def effective_topology(topology: Topology, links: Mapping[str, LinkParams],
                       link_efficiency: Mapping[str, float] | None = None) -> Topology:
    """A copy of ``topology`` with calibrated bandwidth and latency per link class. Classes without
    calibrated parameters keep their bandwidth (times ``link_efficiency`` if given)."""
    g = topology.graph.copy()
    eff = dict(link_efficiency or {})
    burst: dict = {}
    burst_or_shaped: set = set()
    shaped_rates: dict = {}   # class -> the tc rates (bytes/s) of its shaped links
    cpu_bound: set = set()
    for u, v, a in g.edges(data=True):
        cls = a.get("link_class")
        if cls in links:
            lp = links[cls]
            nominal = nominal_rate(topology, cls, float(a["bandwidth"]))
            if nominal is not None and lp.efficiency is not None:
                burst_or_shaped.add(cls)
                shaped_rates.setdefault(cls, set()).add(float(nominal))
            if lp.burst_s > 0 and nominal is not None and lp.efficiency is not None:
                burst[cls] = max(burst.get(cls, 0.0), lp.burst_s * nominal)
            bw = lp.bandwidth(nominal)
            if math.isfinite(bw):          # else not limited by the fit: the link keeps its own bandwidth
                a["bandwidth"] = float(bw)
                if nominal is None or lp.efficiency is None or lp.efficiency * nominal >= lp.max_bandwidth:
                    cpu_bound.add(cls)   # the bandwidth is the kernel's copy rate, not a wire rate
            a["latency"] = float(a.get("latency", 0.0)) + lp.latency_s
        elif cls in eff:
            a["bandwidth"] = float(a["bandwidth"]) * eff[cls]
    # both token-bucket effects exist only on shaped (tc tbf) links
    scale = {cls: _two_way_scale(cls, links[cls], shaped_rates[cls]) for cls in burst_or_shaped}
    inc = {cls: float(links[cls].two_way_penalty) * scale[cls] for cls in burst_or_shaped
           if links[cls].two_way_penalty > 0}
    if inc:
        g.graph["two_way_penalty"] = {**dict(g.graph.get("two_way_penalty") or {}), **inc}
        peer = {cls: float(links[cls].peer_penalty) * scale[cls] for cls in inc if links[cls].peer_penalty > 0}
        if peer:
            g.graph["peer_penalty"] = {**dict(g.graph.get("peer_penalty") or {}), **peer}
        if any(links[cls].two_way_active for cls in inc):
            g.graph["two_way_accounting"] = "active"
        if peer and any(links[cls].peer_shared for cls in peer):
            g.graph["peer_accounting"] = "shared"
        onset = {cls: float(links[cls].two_way_onset_s) for cls in inc if links[cls].two_way_onset_s > 0}
        if onset:
            g.graph["two_way_onset_s"] = {**dict(g.graph.get("two_way_onset_s") or {}), **onset}
    spread = {cls: float(links[cls].release_spread) for cls in burst_or_shaped if links[cls].release_spread > 0}
    if spread:
        g.graph["release_spread"] = {**dict(g.graph.get("release_spread") or {}), **spread}
    if burst:
        g.graph["burst_bytes"] = {**dict(g.graph.get("burst_bytes") or {}), **burst}
        if any(links[cls].burst_continuous for cls in burst):
            g.graph["burst_accounting"] = "continuous"
    if cpu_bound:
        g.graph["cpu_bound"] = {**dict(g.graph.get("cpu_bound") or {}), **{c: 1.0 for c in sorted(cpu_bound)}}
    g.graph["calibrated"] = True
    return Topology(g, source=topology.source + " (calibrated)")


def _two_way_scale(cls: str, lp: LinkParams, rates: set) -> float:
    """The factor on a class's b and c at its links' tc rate; the topology holds one b per class, so a
    rate-dependent loss needs one rate per class."""
    if lp.two_way_rate_exponent == 0.0:
        return 1.0
    if len(rates) > 1:
        raise MoesimError(f"link class {cls!r}: a two-way loss that depends on the rate (two_way_rate_exponent) "
                          f"needs one tc rate per class, the topology has {len(rates)}")
    return lp.two_way_scale(next(iter(rates)))


def apply_profile_network(topology: Topology, profile) -> Topology:
    """The topology as a profile's network calibration sees it: calibrated per-class links
    (``calibration.links`` of a measured profile) and ``network.link_efficiency``; the topology
    itself when the profile calibrates no link."""
    from moesim.calibrate.profile_io import link_params, raw_profile
    _, raw = raw_profile(profile)
    links = link_params(raw)
    eff = dict(profile.network.link_efficiency)
    if not links and not eff:
        return topology
    return effective_topology(topology, links, eff)


# ---------------------------------------------------------------------------------------------
# features of a measured collective
# ---------------------------------------------------------------------------------------------
def group_members(group: str, hosts: int, rph: int) -> list[list[int]]:
    """Rank lists of every group of a microbench measurement (all run at once)."""
    world = hosts * rph
    if group == "world":
        return [list(range(world))]
    if group == "intra_node":
        return [list(range(h * rph, (h + 1) * rph)) for h in range(hosts)]
    if group == "inter_node":
        return [list(range(i, world, rph)) for i in range(rph)]
    raise ValueError(f"unknown microbench group {group!r}")


def build_collectives(kind: str, groups: list[list[int]], size_bytes: float, topo: Topology) -> list[Collective]:
    if kind == "all_to_all":
        return [C.all_to_all(g, size_bytes, topo, algorithm="direct") for g in groups]
    if kind == "all_reduce":
        return [C.all_reduce(g, size_bytes, topo, algorithm="ring") for g in groups]
    raise ValueError(f"unknown collective kind {kind!r}")


def _unit_topology(hosts: int, rph: int, nic_bw: float, stack_bw: float, lo_bw: float, nic_lat: float = 0.0,
                   nic_two_way: float = 0.0, nic_burst: float = 0.0) -> Topology:
    g = emulated_testbed(hosts, rph, link_bandwidth=nic_bw, stack_bandwidth=stack_bw,
                         loopback_bandwidth=lo_bw).graph.copy()
    if nic_two_way > 0:
        g.graph["two_way_penalty"] = {"nic": float(nic_two_way)}
    if nic_burst > 0:
        g.graph["burst_bytes"] = {"nic": float(nic_burst)}
    for _, _, a in g.edges(data=True):
        if a["link_class"] == "nic":
            a["latency"] = nic_lat
    return Topology(g, source="<unit>")


def _run_together(topo: Topology, colls: list[Collective], params: NetworkParams | None = None) -> float:
    net = FluidNetwork(topo, params or NetworkParams(0.0, 0.0))
    for i, c in enumerate(colls):
        net.start(c, i, 0.0)
    net.run_until_idle()
    return max((net.timings[i].end_s for i in range(len(colls))), default=0.0)


@dataclass
class CollectiveFeatures:
    """What the fit needs about one measured collective, per stage of the simulator's decomposition
    (measured with the simulator itself, so any change of its collective algorithms carries over):
    the fluid time with one link class at 1 byte/s and the others unlimited (the bytes on that
    class's bottleneck), how many per-message latencies it pays, and how many ``nic`` link
    latencies its slowest route adds."""

    unit_time: dict              # class -> (stages,) seconds at 1 B/s
    messages: np.ndarray         # (stages,) per-message latencies paid
    nic_hops: np.ndarray         # (stages,) nic link latencies paid

    def transfer_time(self, bandwidth: Mapping[str, float]) -> float:
        per = np.zeros_like(self.messages, dtype=float)
        for cls, t in self.unit_time.items():
            per = np.maximum(per, t / bandwidth[cls])
        return float(per.sum())

    def predict(self, bandwidth: Mapping[str, float], latency_per_message: float, overhead: float,
                nic_latency: float) -> float:
        lat = float((self.messages * latency_per_message + self.nic_hops * nic_latency).sum())
        return overhead + lat + self.transfer_time(bandwidth)


def collective_features(kind: str, group: str, hosts: int, rph: int, size_bytes: float,
                        nic_two_way: float = 0.0, nic_burst: float = 0.0) -> CollectiveFeatures:
    """``nic_burst``: token-bucket burst in bytes at the row's tc rate (it scales with the rate, so the
    unit-rate feature carries ``burst_s * rate`` bytes)."""
    groups = group_members(group, hosts, rph)
    base = build_collectives(kind, groups, size_bytes, _unit_topology(hosts, rph, 1.0, 1.0, 1.0))
    n_stages = len(base[0].stages)
    unit = {c: np.zeros(n_stages) for c in CLASSES}
    msgs, hops = np.zeros(n_stages), np.zeros(n_stages)
    topos = {"nic": _unit_topology(hosts, rph, 1.0, BIG, BIG, nic_two_way=nic_two_way, nic_burst=nic_burst),
             "stack": _unit_topology(hosts, rph, BIG, 1.0, BIG),
             "loopback": _unit_topology(hosts, rph, BIG, BIG, 1.0)}
    free = _unit_topology(hosts, rph, BIG, BIG, BIG)
    lat_topo = _unit_topology(hosts, rph, BIG, BIG, BIG, nic_lat=1.0)
    for s in range(n_stages):
        colls = [Collective(c.op, c.algorithm, c.ranks, [c.stages[s]], c.bytes_per_rank) for c in base]
        for cls, topo in topos.items():
            if cls == "nic" and s > 0 and nic_burst > 0:  # later stages find the buckets empty
                topo = _unit_topology(hosts, rph, 1.0, BIG, BIG, nic_two_way=nic_two_way)
            unit[cls][s] = _run_together(topo, colls)
        msgs[s] = round(_run_together(free, colls, NetworkParams(1.0, 0.0)))
        hops[s] = round(_run_together(lat_topo, colls))
    # a class whose links no flow crosses has unit time ~ 1/BIG: drop it
    unit = {c: np.where(t > 1e-12, t, 0.0) for c, t in unit.items()}
    return CollectiveFeatures(unit, msgs, hops)


def simulate_measured(kind: str, group: str, hosts: int, rph: int, size_bytes: float, rate_bits: float | None,
                      links: Mapping[str, LinkParams], latency_per_message: float, overhead: float,
                      repeat: int = 1) -> float:
    """The simulator's time for a measured collective with calibrated links (for checks and tests);
    ``repeat``: that many back to back, each starting when the previous has ended (total s)."""
    topo = effective_topology(Topology(testbed_graph(hosts, rph, rate_bits), source="<testbed>"), links)
    colls = build_collectives(kind, group_members(group, hosts, rph), size_bytes, topo)
    net = FluidNetwork(topo, NetworkParams(latency_per_message, overhead))
    t = 0.0
    for k in range(repeat):
        for i, c in enumerate(colls):
            net.start(c, (k, i), t)
        net.run_until_idle()
        t = max(net.timings[(k, i)].end_s for i in range(len(colls)))
    return t
