"""The :class:`Topology`: a validated cluster graph with array views of its directed links."""
from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
import pandas as pd

from moesim.topology.validate import normalise_graph


class Topology:
    """A cluster: GPUs (ranks), host-internal nodes and network switches joined by directed links.

    An undirected graph edge is two directed links of the same capacity (full duplex); a directed graph
    gives one link per edge. Units: capacity in bytes/s, latency in seconds. ``cost`` is the integer
    routing cost of a link (routes are minimum-cost paths, default one per hop).
    """

    def __init__(self, graph: nx.Graph, source: str = "<topology>"):
        self.source = str(source)
        self.graph = normalise_graph(graph, self.source)
        g = self.graph
        self.name: str = str(g.graph.get("name") or "topology")
        self.description: str = str(g.graph.get("description") or "")
        self.nodes: list = list(g.nodes)
        self.node_index: dict = {node: i for i, node in enumerate(self.nodes)}
        self.kind = np.array([g.nodes[x]["kind"] for x in self.nodes], dtype=object)
        self.is_gpu = self.kind == "gpu"

        src, dst, cap, lat, cost, cls = [], [], [], [], [], []
        directed = g.is_directed()
        for u, v, a in g.edges(data=True):
            iu, iv = self.node_index[u], self.node_index[v]
            pairs = ((iu, iv),) if directed else ((iu, iv), (iv, iu))
            for a_, b_ in pairs:
                src.append(a_); dst.append(b_)
                cap.append(a["bandwidth"]); lat.append(a["latency"]); cost.append(a["cost"]); cls.append(a["link_class"])
        self.link_src = np.asarray(src, dtype=np.int64)
        self.link_dst = np.asarray(dst, dtype=np.int64)
        self.link_capacity = np.asarray(cap, dtype=np.float64)
        self.link_latency = np.asarray(lat, dtype=np.float64)
        self.link_cost = np.asarray(cost, dtype=np.int64)
        self.link_classes: list[str] = sorted(set(cls))
        class_id = {c: i for i, c in enumerate(self.link_classes)}
        self.link_class_id = np.asarray([class_id[c] for c in cls], dtype=np.int64)

        ranked = sorted((a["rank"], x) for x, a in g.nodes(data=True) if a["kind"] == "gpu")
        self.rank_node = np.asarray([self.node_index[x] for _, x in ranked], dtype=np.int64)
        self._host = [g.nodes[x]["host"] for _, x in ranked]
        self._device = [g.nodes[x].get("device") for _, x in ranked]
        hosts: dict[str, list[int]] = {}
        for rank, host in enumerate(self._host):
            hosts.setdefault(host, []).append(rank)
        self._ranks_of_host = hosts
        self.node_rank = np.full(len(self.nodes), -1, dtype=np.int64)
        self.node_rank[self.rank_node] = np.arange(len(self.rank_node))
        self._cache: dict = {}  # derived structures (router, symmetry) keyed by name

    # -- ranks and hosts ---------------------------------------------------------------------------
    @property
    def num_gpus(self) -> int:
        return len(self.rank_node)

    @property
    def num_links(self) -> int:
        return len(self.link_src)

    @property
    def hosts(self) -> list[str]:
        """Host names, ordered by their lowest rank."""
        return list(self._ranks_of_host)

    def host_of(self, rank: int) -> str:
        return self._host[self._check_rank(rank)]

    def ranks_of_host(self, host: str) -> list[int]:
        try:
            return list(self._ranks_of_host[host])
        except KeyError:
            raise KeyError(f"no host {host!r} in topology {self.name!r}") from None

    def device_of(self, rank: int) -> str | None:
        return self._device[self._check_rank(rank)]

    def node_of(self, rank: int) -> object:
        return self.nodes[self.rank_node[self._check_rank(rank)]]

    def _check_rank(self, rank: int) -> int:
        r = int(rank)
        if not 0 <= r < self.num_gpus:
            raise IndexError(f"rank {rank} out of range 0..{self.num_gpus - 1}")
        return r

    # -- links ------------------------------------------------------------------------------------
    @cached_property
    def links(self) -> pd.DataFrame:
        """One row per directed link: src, dst (node ids), link_class, capacity (bytes/s), latency (s), cost."""
        return pd.DataFrame({
            "src": [self.nodes[i] for i in self.link_src],
            "dst": [self.nodes[i] for i in self.link_dst],
            "link_class": [self.link_classes[i] for i in self.link_class_id],
            "capacity": self.link_capacity,
            "latency": self.link_latency,
            "cost": self.link_cost,
        })

    def kind_counts(self) -> dict[str, int]:
        kinds, counts = np.unique(self.kind.astype(str), return_counts=True)
        return {str(k): int(c) for k, c in zip(kinds, counts)}

    def __repr__(self) -> str:
        return (f"Topology({self.name!r}, gpus={self.num_gpus}, hosts={len(self._ranks_of_host)}, "
                f"nodes={len(self.nodes)}, links={self.num_links})")
