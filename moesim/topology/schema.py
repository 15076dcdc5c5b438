"""The topology file vocabulary: node kinds, attribute names, link classes inferred from endpoint kinds."""
from __future__ import annotations

KINDS = ("gpu", "cpu", "pcie_switch", "nvswitch", "nic", "switch")
"""Node kinds. ``gpu`` nodes are the ranks (endpoints that never forward traffic); ``switch`` nodes form
the network fabric; the other kinds are host-internal (root complex, PCIe switch, NVSwitch, NIC)."""

NODE_ATTRS = ("kind", "rank", "host", "device")
EDGE_ATTRS = ("bandwidth", "latency", "link_class", "cost")

_PCIE_SIDE = {"gpu", "cpu", "pcie_switch", "nic"}


def infer_link_class(kind_a: str, kind_b: str) -> str:
    """Link class of an edge without an explicit ``link_class``, from its endpoint kinds."""
    pair = {kind_a, kind_b}
    if pair <= {"gpu", "nvswitch"}:
        return "nvlink"
    if pair == {"cpu"}:
        return "upi"
    if pair == {"switch"}:
        return "fabric"
    if "switch" in pair:
        return "nic"
    if pair == {"nic"}:
        return "nic"
    if pair <= _PCIE_SIDE or "nvswitch" in pair:
        return "pcie"
    return "other"  # pragma: no cover - every pair of KINDS is covered above
