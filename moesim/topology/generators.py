"""Generators for the shipped topologies: the BigMac paper's speed cluster, a DGX-H100-like node, a
parametric multi-node cluster and the on-one-machine emulated testbed. All bandwidths are bytes/s per
direction, all latencies seconds; each returns a validated :class:`Topology`.

Effective link rates used (datasheet raw rate, minus protocol overhead):
- PCIe 4.0 x16: 31.5 GB/s raw (16 GT/s x 16 lanes, 128b/130b) -> 25 GB/s effective DMA throughput.
- PCIe 5.0 x16: 63 GB/s raw -> 50 GB/s effective.
- 100 Gb/s InfiniBand (HDR100/EDR): 12.5 GB/s; 400 Gb/s NDR: 50 GB/s.
- NVLink 4 (H100 SXM): 900 GB/s bidirectional per GPU -> 450 GB/s per direction through NVSwitch.
- Inter-socket link (UPI/xGMI): 40 GB/s per direction (two UPI links of ~20 GB/s usable each).
"""
from __future__ import annotations

import math

import networkx as nx

from moesim.errors import MoesimError
from moesim.topology.model import Topology

PAPER_GPU = "paper-gpu-48gb"
DGX_GPU = "h100-sxm"

PCIE4_X16 = 25e9
PCIE5_X16 = 50e9
IB_100G = 100e9 / 8
NDR_400G = 400e9 / 8
NVLINK4 = 450e9
SOCKET_LINK = 40e9

LAT_PCIE = 0.3e-6      # one PCIe hop (switch or root port), s
LAT_SOCKET = 0.2e-6    # inter-socket hop, s
LAT_NVLINK = 0.25e-6   # GPU <-> NVSwitch, s
LAT_NIC = 0.5e-6       # NIC <-> first switch (NIC processing + cable), s
LAT_FABRIC = 0.5e-6    # switch <-> switch, s


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise MoesimError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MoesimError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _link(g: nx.Graph, u: str, v: str, bandwidth: float, latency: float, link_class: str, cost: int = 1) -> None:
    attrs = dict(bandwidth=float(bandwidth), latency=float(latency), link_class=link_class)
    if cost != 1:
        attrs["cost"] = cost
    g.add_edge(u, v, **attrs)


def _pcie_host(g: nx.Graph, host: str, first_rank: int, gpus: int, gpus_per_switch: int, nics: int,
               pcie_bandwidth: float, socket_bandwidth: float, device: str | None, nic_on_switch: bool) -> list[str]:
    """A two-socket PCIe host: GPUs under PCIe switches, half the switches under each socket, the
    sockets joined by an inter-socket link. Returns the NIC node names."""
    cpus = [f"{host}/cpu{s}" for s in range(2)]
    for c in cpus:
        g.add_node(c, kind="cpu")
    _link(g, cpus[0], cpus[1], socket_bandwidth, LAT_SOCKET, "upi")
    n_sw = math.ceil(gpus / gpus_per_switch)
    switches = [f"{host}/pcie{k}" for k in range(n_sw)]
    for k, sw in enumerate(switches):
        g.add_node(sw, kind="pcie_switch")
        _link(g, sw, cpus[min(1, (2 * k) // n_sw)], pcie_bandwidth, LAT_PCIE, "pcie")
    for i in range(gpus):
        gpu = f"{host}/gpu{i}"
        g.add_node(gpu, kind="gpu", rank=first_rank + i, host=host, **({"device": device} if device else {}))
        _link(g, gpu, switches[i // gpus_per_switch], pcie_bandwidth, LAT_PCIE, "pcie")
    nic_nodes = []
    for j in range(nics):
        nic = f"{host}/nic{j}"
        g.add_node(nic, kind="nic")
        parent = switches[(j * n_sw) // nics] if nic_on_switch else cpus[(2 * j) // nics if nics > 1 else 0]
        _link(g, nic, parent, pcie_bandwidth, LAT_PCIE, "pcie")
        nic_nodes.append(nic)
    return nic_nodes


def bigmac_paper(machines: int = 4, gpus_per_machine: int = 8, gpus_per_pcie_switch: int = 2,
                 pcie_bandwidth: float = PCIE4_X16, nic_bandwidth: float = IB_100G,
                 socket_bandwidth: float = SOCKET_LINK, device: str = PAPER_GPU) -> Topology:
    """The BigMac paper's speed cluster: 4 machines x 8 GPUs (48 GB, PCIe 4.0 x16), one 100 Gb/s
    InfiniBand NIC per machine, one IB switch.

    Assumed PCIe tree per machine (a typical 8-GPU 4U PCIe server): two CPU sockets joined by an
    inter-socket link; four PCIe 4.0 switches, two under each socket, each with two GPUs and a x16
    uplink to its root port; the NIC in a x16 slot of socket 0. So GPU pairs on one switch share
    nothing upstream, GPUs on different switches of a socket meet at the root complex, GPUs on
    different sockets cross the inter-socket link, and socket-1 GPUs reach the NIC across it.
    """
    machines = _count("machines", machines)
    gpus_per_machine = _count("gpus_per_machine", gpus_per_machine)
    gpus_per_pcie_switch = _count("gpus_per_pcie_switch", gpus_per_pcie_switch)
    g = nx.Graph(name="bigmac-paper",
                 description=(f"BigMac speed cluster: {machines} machines x {gpus_per_machine} GPUs on PCIe 4.0 x16 "
                              f"({pcie_bandwidth / 1e9:g} GB/s effective), {gpus_per_pcie_switch} GPUs per PCIe switch, "
                              f"two sockets ({socket_bandwidth / 1e9:g} GB/s), one {nic_bandwidth * 8 / 1e9:g} Gb/s IB NIC "
                              "per machine on socket 0, one IB switch"))
    g.add_node("ib-switch", kind="switch")
    for m in range(machines):
        host = f"node{m}"
        (nic,) = _pcie_host(g, host, m * gpus_per_machine, gpus_per_machine, gpus_per_pcie_switch, 1,
                            _positive("pcie_bandwidth", pcie_bandwidth), _positive("socket_bandwidth", socket_bandwidth),
                            device, nic_on_switch=False)
        _link(g, nic, "ib-switch", _positive("nic_bandwidth", nic_bandwidth), LAT_NIC, "nic")
    return Topology(g, source="<bigmac-paper>")


def cluster(nodes: int, gpus_per_node: int = 8, intra: str = "nvswitch", fabric: str = "rail",
            oversubscription: float = 1.0, nic_bandwidth: float = NDR_400G, nics_per_node: int | None = None,
            nvlink_bandwidth: float = NVLINK4, pcie_bandwidth: float = PCIE5_X16, socket_bandwidth: float = SOCKET_LINK,
            leaf_ports: int = 32, spines: int = 8, gpus_per_pcie_switch: int = 2, device: str | None = DGX_GPU,
            name: str | None = None) -> Topology:
    """A multi-node cluster of ``nodes`` x ``gpus_per_node`` GPUs.

    intra: ``"nvswitch"`` (every GPU on one NVSwitch at ``nvlink_bandwidth``; NIC j attached to its GPU
    group over PCIe, through a PCIe switch when several GPUs share a NIC, with routing cost 2 on the
    GPU-PCIe edges so GPU-to-GPU traffic stays on NVLink) or ``"pcie"`` (a two-socket PCIe tree as in
    :func:`bigmac_paper`, NICs on the PCIe switches).
    fabric: ``"rail"`` (rail-optimised: NIC j of every node in a group of ``leaf_ports`` nodes goes
    to leaf switch j of that group) or ``"leafspine"`` (NICs fill leaves in order, ``leaf_ports`` per
    leaf). With more than one leaf, every leaf connects to each of ``spines`` spine switches; each
    leaf's uplink capacity is ``leaf_ports * nic_bandwidth / oversubscription``, split evenly over the
    spines (a spine edge stands for a trunk of ports).
    """
    nodes = _count("nodes", nodes)
    gpus_per_node = _count("gpus_per_node", gpus_per_node)
    nics = gpus_per_node if nics_per_node is None else _count("nics_per_node", nics_per_node)
    leaf_ports = _count("leaf_ports", leaf_ports)
    spines = _count("spines", spines)
    nic_bandwidth = _positive("nic_bandwidth", nic_bandwidth)
    pcie_bandwidth = _positive("pcie_bandwidth", pcie_bandwidth)
    oversubscription = _positive("oversubscription", oversubscription)
    if intra not in ("nvswitch", "pcie"):
        raise MoesimError(f"intra must be 'nvswitch' or 'pcie', got {intra!r}")
    if fabric not in ("rail", "leafspine"):
        raise MoesimError(f"fabric must be 'rail' or 'leafspine', got {fabric!r}")
    if intra == "nvswitch" and gpus_per_node % nics:
        raise MoesimError(f"nics_per_node ({nics}) must divide gpus_per_node ({gpus_per_node}) with intra='nvswitch'")
    label = name or f"cluster-{nodes}x{gpus_per_node}-{intra}-{fabric}"
    g = nx.Graph(name=label, description=(
        f"{nodes} nodes x {gpus_per_node} GPUs, intra-node {intra}, {nics} x {nic_bandwidth * 8 / 1e9:g} Gb/s NICs "
        f"per node, {fabric} fabric, {leaf_ports} ports per leaf, oversubscription {oversubscription:g}:1"))
    nic_names: list[list[str]] = []
    for n in range(nodes):
        host = f"node{n}"
        first = n * gpus_per_node
        if intra == "nvswitch":
            nvs = f"{host}/nvswitch"
            g.add_node(nvs, kind="nvswitch")
            per_nic = gpus_per_node // nics
            names = []
            for i in range(gpus_per_node):
                gpu = f"{host}/gpu{i}"
                g.add_node(gpu, kind="gpu", rank=first + i, host=host, **({"device": device} if device else {}))
                _link(g, gpu, nvs, _positive("nvlink_bandwidth", nvlink_bandwidth), LAT_NVLINK, "nvlink")
            for j in range(nics):
                nic = f"{host}/nic{j}"
                g.add_node(nic, kind="nic")
                if per_nic == 1:
                    _link(g, f"{host}/gpu{j}", nic, pcie_bandwidth, LAT_PCIE, "pcie")
                else:
                    sw = f"{host}/pcie{j}"
                    g.add_node(sw, kind="pcie_switch")
                    _link(g, nic, sw, pcie_bandwidth, LAT_PCIE, "pcie")
                    for i in range(j * per_nic, (j + 1) * per_nic):
                        _link(g, f"{host}/gpu{i}", sw, pcie_bandwidth, LAT_PCIE, "pcie", cost=2)
                names.append(nic)
        else:
            names = _pcie_host(g, host, first, gpus_per_node, _count("gpus_per_pcie_switch", gpus_per_pcie_switch),
                               nics, pcie_bandwidth, _positive("socket_bandwidth", socket_bandwidth), device,
                               nic_on_switch=True)
        nic_names.append(names)

    leaves: dict[object, str] = {}
    for n in range(nodes):
        for j, nic in enumerate(nic_names[n]):
            if fabric == "rail":
                key, leaf = (n // leaf_ports, j), f"leaf{n // leaf_ports}.{j}"
            else:
                q = (n * nics + j) // leaf_ports
                key, leaf = q, f"leaf{q}"
            if key not in leaves:
                leaves[key] = leaf
                g.add_node(leaf, kind="switch")
            _link(g, nic, leaf, nic_bandwidth, LAT_NIC, "nic")
    if len(leaves) > 1:
        trunk = leaf_ports * nic_bandwidth / (oversubscription * spines)
        for k in range(spines):
            spine = f"spine{k}"
            g.add_node(spine, kind="switch")
            for leaf in leaves.values():
                _link(g, leaf, spine, trunk, LAT_FABRIC, "fabric")
    return Topology(g, source=f"<{label}>")


def dgx_h100_node(nvlink_bandwidth: float = NVLINK4, nic_bandwidth: float = NDR_400G) -> Topology:
    """One DGX-H100-like node: 8 H100 SXM GPUs on NVSwitch (450 GB/s per GPU per direction), 8 x 400 Gb/s
    NICs (one per GPU over PCIe 5.0), all NICs on one leaf switch that stands for the external network."""
    topo = cluster(1, 8, intra="nvswitch", fabric="leafspine", nic_bandwidth=nic_bandwidth,
                   nvlink_bandwidth=nvlink_bandwidth, leaf_ports=8, name="dgx-h100")
    topo.graph.graph["description"] = ("DGX-H100-like node: 8 x H100 SXM on NVSwitch (450 GB/s per GPU per direction), "
                                       "8 x 400 Gb/s NICs over PCIe 5.0 (50 GB/s), one leaf switch")
    topo.description = topo.graph.graph["description"]
    return topo


def emulated_testbed(hosts: int = 2, ranks_per_host: int = 2, link_bandwidth: float = 1e9 / 8,
                     loopback_bandwidth: float = 2e9, stack_bandwidth: float = 2e9,
                     device: str | None = None) -> Topology:
    """The on-one-machine testbed: ``hosts`` network namespaces on one bridge (a ``switch``), each joined
    by a shaped veth of ``link_bandwidth`` (class ``nic``). Ranks are processes; each reaches its
    namespace's veth through its own TCP stack, a ``stack`` link of ``stack_bandwidth`` to its
    ``host<i>`` node, and the other ranks of its namespace over the loopback device, a ``loopback``
    link of ``loopback_bandwidth`` to the namespace's ``host<i>/lo`` hub (present when a host has two
    or more ranks). ``stack`` links cost 2, so traffic between ranks of one host takes ``lo`` (as the
    kernel routes local addresses) and never the veth path. Bandwidths are per direction, bytes/s.
    Latencies are 0: per-message latency comes from NetworkParams (calibrated)."""
    hosts = _count("hosts", hosts)
    ranks_per_host = _count("ranks_per_host", ranks_per_host)
    link_bandwidth = _positive("link_bandwidth", link_bandwidth)
    loopback_bandwidth = _positive("loopback_bandwidth", loopback_bandwidth)
    stack_bandwidth = _positive("stack_bandwidth", stack_bandwidth)
    g = nx.Graph(name=f"testbed-{hosts}x{ranks_per_host}", description=(
        f"emulated testbed: {hosts} namespaces x {ranks_per_host} ranks, veth {link_bandwidth * 8 / 1e6:g} Mbit/s, "
        f"TCP stack to the veth {stack_bandwidth / 1e9:g} GB/s per rank"
        + (f", loopback {loopback_bandwidth / 1e9:g} GB/s per rank" if ranks_per_host > 1 else "")))
    g.add_node("bridge", kind="switch")
    for h in range(hosts):
        host = f"host{h}"
        g.add_node(host, kind="cpu")
        _link(g, host, "bridge", link_bandwidth, 0.0, "nic")
        if ranks_per_host > 1:
            g.add_node(f"{host}/lo", kind="switch")
        for k in range(ranks_per_host):
            rank = f"{host}/rank{k}"
            g.add_node(rank, kind="gpu", rank=h * ranks_per_host + k, host=host, **({"device": device} if device else {}))
            _link(g, rank, host, stack_bandwidth, 0.0, "stack", cost=2)
            if ranks_per_host > 1:
                _link(g, rank, f"{host}/lo", loopback_bandwidth, 0.0, "loopback")
    return Topology(g, source=f"<testbed-{hosts}x{ranks_per_host}>")


GENERATORS = {"bigmac-paper": bigmac_paper, "dgx-h100": dgx_h100_node, "cluster": cluster, "testbed": emulated_testbed}
