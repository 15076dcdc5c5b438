"""A summary of a topology: counts, link classes and bisection bandwidth."""
from __future__ import annotations

import networkx as nx
import numpy as np

from moesim.topology.model import Topology


def bisection_halves(topo: Topology) -> tuple[list[int], list[int]]:
    """The two halves used for bisection bandwidth: the first and second half of the hosts (in rank
    order), or of the ranks when there is a single host."""
    hosts = topo.hosts
    if len(hosts) > 1:
        first = set(hosts[: len(hosts) // 2])
        a = [r for r in range(topo.num_gpus) if topo.host_of(r) in first]
    else:
        a = list(range(topo.num_gpus // 2))
    b = sorted(set(range(topo.num_gpus)) - set(a))
    return a, b


def bisection_bandwidth(topo: Topology) -> float:
    """Bisection bandwidth in bytes/s per direction: the smaller of the two max-flows between the
    halves of :func:`bisection_halves` (ideal routing; GPUs do not forward). 0 for one GPU."""
    a, b = bisection_halves(topo)
    if not a or not b:
        return 0.0
    return min(_max_flow(topo, a, b), _max_flow(topo, b, a))


def _max_flow(topo: Topology, src_ranks: list[int], dst_ranks: list[int]) -> float:
    src_nodes = set(topo.rank_node[src_ranks].tolist())
    dst_nodes = set(topo.rank_node[dst_ranks].tolist())
    g = nx.DiGraph()
    for u, v, c in zip(topo.link_src.tolist(), topo.link_dst.tolist(), topo.link_capacity.tolist()):
        if v in src_nodes or u in dst_nodes:
            continue  # never into a source GPU nor out of a sink GPU
        if g.has_edge(u, v):
            g[u][v]["capacity"] += c
        else:
            g.add_edge(u, v, capacity=c)
    s, t = "__source__", "__sink__"
    for x in src_nodes:
        g.add_edge(s, x)  # no capacity attribute: unbounded
    for x in dst_nodes:
        g.add_edge(x, t)
    return float(nx.maximum_flow_value(g, s, t))


def summarize(topo: Topology, bisection: bool = True) -> dict:
    """A JSON-ready summary: name, GPUs, hosts, GPUs per host, node kinds, devices, per link class the
    number of directed links and their capacity range (bytes/s), and the bisection bandwidth (bytes/s)."""
    per_host = sorted({len(topo.ranks_of_host(h)) for h in topo.hosts})
    classes = {}
    for cid, name in enumerate(topo.link_classes):
        caps = topo.link_capacity[topo.link_class_id == cid]
        classes[name] = {"links": int(caps.size), "min_bandwidth": float(caps.min()), "max_bandwidth": float(caps.max()),
                         "total_bandwidth": float(caps.sum())}
    devices = sorted({d for d in (topo.device_of(r) for r in range(topo.num_gpus)) if d})
    out = {
        "name": topo.name,
        "description": topo.description,
        "gpus": topo.num_gpus,
        "hosts": len(topo.hosts),
        "gpus_per_host": per_host[0] if len(per_host) == 1 else per_host,
        "nodes": topo.kind_counts(),
        "devices": devices,
        "directed_links": topo.num_links,
        "link_classes": classes,
    }
    if bisection:
        a, _ = bisection_halves(topo)
        out["bisection_bandwidth"] = bisection_bandwidth(topo)
        out["bisection_split"] = "hosts" if len(topo.hosts) > 1 else "ranks"
        out["bisection_first_half_ranks"] = len(a)
    return out


def format_summary(summary: dict) -> str:
    """Human-readable text of :func:`summarize`."""
    from moesim.units import fmt_si
    lines = [f"topology {summary['name']}: {summary['gpus']} GPUs on {summary['hosts']} hosts "
             f"({summary['gpus_per_host']} per host)"]
    if summary.get("description"):
        lines.append(f"  {summary['description']}")
    lines.append("  nodes: " + ", ".join(f"{k} {v}" for k, v in summary["nodes"].items()))
    if summary["devices"]:
        lines.append("  devices: " + ", ".join(summary["devices"]))
    lines.append(f"  directed links: {summary['directed_links']}")
    for name, c in summary["link_classes"].items():
        rng = fmt_si(c["min_bandwidth"], "B/s") if np.isclose(c["min_bandwidth"], c["max_bandwidth"]) else \
            f"{fmt_si(c['min_bandwidth'], 'B/s')} .. {fmt_si(c['max_bandwidth'], 'B/s')}"
        lines.append(f"    {name:<10} {c['links']:>7} links  {rng} each")
    if "bisection_bandwidth" in summary:
        lines.append(f"  bisection bandwidth: {fmt_si(summary['bisection_bandwidth'], 'B/s')} per direction "
                     f"(max-flow between halves of the {summary['bisection_split']})")
    return "\n".join(lines)
