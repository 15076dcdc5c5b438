"""Reading and writing topology files: node-link JSON (``networkx.node_link_data``) and GraphML."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import networkx as nx

from moesim.errors import InputFileError
from moesim.io import atomic_path, read_input_bytes, write_json_atomic
from moesim.topology.model import Topology

_GRAPHML_SUFFIXES = (".graphml", ".xml")


def load_topology(path: str | os.PathLike) -> Topology:
    """Load and validate a topology file (node-link JSON, or GraphML by suffix or content)."""
    p = Path(path)
    data = read_input_bytes(p, "a topology file")
    head = data.lstrip()[:1]
    if p.suffix.lower() in _GRAPHML_SUFFIXES or head == b"<" or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        graph = _parse_graphml(data, p)
    else:
        graph = _parse_node_link(data, p)
    return Topology(graph, source=str(p))


def _parse_node_link(data: bytes, path: Path) -> nx.Graph:
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputFileError(path, "malformed JSON: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise InputFileError(path, "malformed node-link JSON: the top level must be an object with 'nodes' and 'edges'")
    nodes = obj.get("nodes")
    if not isinstance(nodes, list):
        raise InputFileError(path, "malformed node-link JSON: missing 'nodes' list")
    edge_key = "edges" if "edges" in obj else "links" if "links" in obj else None
    edges = obj.get(edge_key, []) if edge_key else []
    if not isinstance(edges, list):
        raise InputFileError(path, f"malformed node-link JSON: '{edge_key}' is not a list")
    if obj.get("multigraph"):
        raise InputFileError(path, "parallel edges (multigraph) are not supported; merge them into one edge")
    ids = set()
    for i, entry in enumerate(nodes):
        if not isinstance(entry, dict) or "id" not in entry:
            raise InputFileError(path, f"malformed node-link JSON: node entry {i} has no 'id'")
        if isinstance(entry["id"], (list, dict)):
            raise InputFileError(path, f"malformed node-link JSON: node entry {i} has an id that is not a string or number")
        if entry["id"] in ids:
            raise InputFileError(path, f"node {entry['id']!r} is listed twice")
        ids.add(entry["id"])
    for i, entry in enumerate(edges):
        if not isinstance(entry, dict) or "source" not in entry or "target" not in entry:
            raise InputFileError(path, f"malformed node-link JSON: edge entry {i} needs 'source' and 'target'")
        for end in ("source", "target"):
            ref = entry[end]
            if isinstance(ref, (list, dict)) or ref not in ids:
                raise InputFileError(path, f"edge entry {i} ({entry.get('source')!r} -> {entry.get('target')!r}): "
                                           f"unknown node {ref!r}")
    graph = nx.DiGraph() if obj.get("directed") else nx.Graph()
    if isinstance(obj.get("graph"), dict):
        graph.graph.update(obj["graph"])
    for entry in nodes:
        graph.add_node(entry["id"], **{k: v for k, v in entry.items() if k != "id"})
    for entry in edges:
        u, v = entry["source"], entry["target"]
        if graph.has_edge(u, v):
            raise InputFileError(path, f"edge {u!r} -- {v!r} is listed twice (parallel edges are not supported)")
        graph.add_edge(u, v, **{k: val for k, val in entry.items() if k not in ("source", "target", "key")})
    return graph


def _parse_graphml(data: bytes, path: Path) -> nx.Graph:
    for encoding in ("utf-8-sig", "utf-16", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    lowered = text.lower()
    if "<!doctype" in lowered or "<!entity" in lowered:
        raise InputFileError(path, "GraphML with a DOCTYPE or ENTITY declaration is refused (entity expansion)")
    try:
        graph = nx.read_graphml(io.BytesIO(data))
    except Exception as exc:  # the XML parser and networkx raise many types for broken files
        raise InputFileError(path, f"malformed GraphML: {exc}") from None
    if graph.is_multigraph():
        raise InputFileError(path, "parallel edges are not supported; merge them into one edge with the summed bandwidth")
    return graph


def topology_graph(topo: Topology) -> nx.Graph:
    """The file form of ``topo``: numbers in SI units, ``cost`` omitted where it is the default 1."""
    g = topo.graph.__class__()
    g.graph.update({k: v for k, v in topo.graph.graph.items() if isinstance(v, (str, int, float, bool))})
    for node, attrs in topo.graph.nodes(data=True):
        g.add_node(node, **{k: v for k, v in attrs.items() if v is not None})
    for u, v, attrs in topo.graph.edges(data=True):
        clean = dict(attrs)
        if clean.get("cost", 1) == 1:
            clean.pop("cost", None)
        g.add_edge(u, v, **clean)
    return g


def save_topology(topo: Topology, path: str | os.PathLike) -> None:
    """Write ``topo`` atomically: GraphML for a ``.graphml``/``.xml`` suffix, node-link JSON otherwise."""
    p = Path(path)
    graph = topology_graph(topo)
    if p.suffix.lower() in _GRAPHML_SUFFIXES:
        with atomic_path(p) as tmp:
            nx.write_graphml(graph, tmp)
    else:
        data = nx.node_link_data(graph, edges="edges")   # the networkx node-link format ...
        data["nodes"] = [{"id": n.pop("id"), **n} for n in data["nodes"]]   # ... with the id first
        data["edges"] = [{"source": e.pop("source"), "target": e.pop("target"), **e} for e in data["edges"]]
        write_json_atomic(p, data)
