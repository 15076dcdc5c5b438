"""Validation and normalisation of a topology graph. Every error names the source, the node or edge,
and the problem, and is raised as :class:`moesim.errors.InputFileError`."""
from __future__ import annotations

import math
import numbers

import networkx as nx

from moesim.errors import InputFileError
from moesim.topology.schema import KINDS, infer_link_class
from moesim.units import parse_bandwidth, parse_duration


def _edge_name(graph: nx.Graph, u: object, v: object) -> str:
    arrow = "->" if graph.is_directed() else "--"
    return f"edge {u!r} {arrow} {v!r}"


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return None


def normalise_graph(graph: nx.Graph, source: str) -> nx.Graph:
    """Return a validated copy of ``graph`` with SI attributes: ``bandwidth`` (bytes/s, float),
    ``latency`` (s, float), ``link_class`` (str), ``cost`` (int >= 1); GPU ``rank`` (int), ``host`` (str),
    ``device`` (str or absent). Raises InputFileError(source, ...) on the first problem found."""
    def fail(reason: str) -> None:
        raise InputFileError(source, reason)

    if graph.is_multigraph():
        fail("parallel edges (multigraph) are not supported; merge them into one edge with the summed bandwidth")
    if graph.number_of_nodes() == 0:
        fail("the topology has no nodes")
    out = graph.__class__()
    out.graph.update(graph.graph)
    rank_nodes: dict[int, object] = {}
    for node, attrs in graph.nodes(data=True):
        kind = attrs.get("kind")
        if kind is None:
            fail(f"node {node!r}: missing 'kind' (one of {', '.join(KINDS)})")
        if kind not in KINDS:
            fail(f"node {node!r}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        clean = dict(attrs)
        if kind == "gpu":
            if "rank" not in attrs:
                fail(f"node {node!r}: GPU without a 'rank'")
            rank = _as_int(attrs["rank"])
            if rank is None or rank < 0:
                fail(f"node {node!r}: rank {attrs['rank']!r} is not a non-negative integer")
            if rank in rank_nodes:
                fail(f"node {node!r}: duplicate rank {rank} (also on node {rank_nodes[rank]!r})")
            rank_nodes[rank] = node
            host = attrs.get("host")
            if host is None or (isinstance(host, str) and not host.strip()):
                fail(f"node {node!r}: GPU without a 'host'")
            if not isinstance(host, (str, int)) or isinstance(host, bool):
                fail(f"node {node!r}: host {host!r} is not a string")
            clean["rank"], clean["host"] = rank, str(host)
            device = attrs.get("device")
            if device is not None and not isinstance(device, str):
                fail(f"node {node!r}: device {device!r} is not a string")
            if device in (None, ""):
                clean.pop("device", None)
        else:
            for key in ("rank", "host"):
                if key in attrs:
                    fail(f"node {node!r}: '{key}' is only allowed on GPU nodes (kind is {kind!r})")
        out.add_node(node, **clean)
    if not rank_nodes:
        fail("the topology has no GPU nodes (kind 'gpu')")
    missing = sorted(set(range(len(rank_nodes))) - set(rank_nodes))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        fail(f"ranks must be 0..{len(rank_nodes) - 1} without gaps; missing {shown}")

    for u, v, attrs in graph.edges(data=True):
        name = _edge_name(graph, u, v)
        if u == v:
            fail(f"{name}: self-loop")
        if "bandwidth" not in attrs:
            fail(f"{name}: missing 'bandwidth' (bytes/s, or a string such as '100 Gbit/s')")
        try:
            bandwidth = parse_bandwidth(attrs["bandwidth"])
        except ValueError as exc:
            fail(f"{name}: {exc}")
        if not bandwidth > 0:
            fail(f"{name}: bandwidth {attrs['bandwidth']!r} is not positive")
        try:
            latency = parse_duration(attrs.get("latency", 0.0))
        except ValueError as exc:
            fail(f"{name}: {exc}")
        if latency < 0:
            fail(f"{name}: latency {attrs.get('latency')!r} is negative")
        cost = _as_int(attrs.get("cost", 1))
        if cost is None or cost < 1:
            fail(f"{name}: cost {attrs.get('cost')!r} is not a positive integer")
        link_class = attrs.get("link_class")
        if link_class is None or link_class == "":
            link_class = infer_link_class(out.nodes[u]["kind"], out.nodes[v]["kind"])
        elif not isinstance(link_class, str):
            fail(f"{name}: link_class {link_class!r} is not a string")
        clean = dict(attrs)
        clean.update(bandwidth=float(bandwidth), latency=float(latency), link_class=link_class, cost=cost)
        if not math.isfinite(clean["bandwidth"]):  # pragma: no cover - parse_bandwidth rejects these
            fail(f"{name}: bandwidth is not finite")
        out.add_edge(u, v, **clean)
    _check_reachability(out, rank_nodes, fail)
    return out


def _check_reachability(graph: nx.Graph, rank_nodes: dict[int, object], fail) -> None:
    """Every GPU must reach every other GPU along paths whose inner nodes are not GPUs."""
    directed = graph if graph.is_directed() else graph.to_directed(as_view=True)
    n = len(rank_nodes)
    gpu_bit = {node: 1 << rank for rank, node in rank_nodes.items()}
    inner = directed.subgraph([x for x, k in graph.nodes(data="kind") if k != "gpu"])
    cond = nx.condensation(inner)
    member = cond.graph["mapping"]
    targets = [0] * cond.number_of_nodes()
    for node, bit in gpu_bit.items():
        for pred in directed.predecessors(node):
            if pred not in gpu_bit:
                targets[member[pred]] |= bit
    reach = [0] * cond.number_of_nodes()
    for c in reversed(list(nx.topological_sort(cond))):
        r = targets[c]
        for succ in cond.successors(c):
            r |= reach[succ]
        reach[c] = r
    everyone = (1 << n) - 1
    for rank in range(n):
        node = rank_nodes[rank]
        r = gpu_bit[node]
        for succ in directed.successors(node):
            r |= gpu_bit[succ] if succ in gpu_bit else reach[member[succ]]
        if r != everyone:
            missing = everyone & ~r
            other = (missing & -missing).bit_length() - 1
            fail(f"GPU rank {rank} (node {node!r}) cannot reach rank {other} (node {rank_nodes[other]!r}); "
                 "routes may not pass through other GPUs")
