"""Routing: minimum-cost paths through no other GPU, per-path even ECMP split, against a brute-force
enumeration with networkx on generated and random topologies."""
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings

from moesim.network.routing import Router
from moesim.topology import Topology
from moesim.topology.generators import bigmac_paper, cluster, dgx_h100_node, emulated_testbed
from test_network_gen import random_topologies


def brute_force(topo: Topology, s: int, t: int) -> dict[int, float]:
    g = nx.DiGraph()
    for l, (u, v) in enumerate(zip(topo.link_src.tolist(), topo.link_dst.tolist())):
        g.add_edge(u, v, cost=int(topo.link_cost[l]), link=l)
    sn, tn = int(topo.rank_node[s]), int(topo.rank_node[t])
    g.remove_nodes_from([int(x) for x in topo.rank_node if x not in (sn, tn)])
    paths = list(nx.all_shortest_paths(g, sn, tn, weight="cost"))
    frac: dict[int, float] = {}
    for p in paths:
        for u, v in zip(p, p[1:]):
            frac[g[u][v]["link"]] = frac.get(g[u][v]["link"], 0.0) + 1.0 / len(paths)
    return frac


def check_all_pairs(topo: Topology) -> None:
    n = topo.num_gpus
    s, t = np.nonzero(~np.eye(n, dtype=bool))
    routes = Router(topo).routes(s, t)
    for i, (a, b) in enumerate(zip(s.tolist(), t.tolist())):
        got: dict[int, float] = {}
        sl = slice(routes.indptr[i], routes.indptr[i + 1])
        for l, f in zip(routes.links[sl].tolist(), routes.fracs[sl].tolist()):
            got[l] = got.get(l, 0.0) + f
        want = brute_force(topo, a, b)
        assert got.keys() == want.keys(), (a, b)
        assert all(got[k] == pytest.approx(want[k], rel=1e-12) for k in want)
        lat = sum(f * topo.link_latency[l] for l, f in want.items())
        assert routes.latency[i] == pytest.approx(lat, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("make", [bigmac_paper, dgx_h100_node, lambda: emulated_testbed(3, 2),
                                  lambda: cluster(3, 4, leaf_ports=2, spines=3),
                                  lambda: cluster(3, 4, fabric="leafspine", nics_per_node=2, leaf_ports=3, spines=2),
                                  lambda: cluster(3, 4, intra="pcie", nics_per_node=2, leaf_ports=2, spines=2)])
def test_generated_topologies_match_brute_force(make):
    check_all_pairs(make())


def test_paper_routes():
    topo = bigmac_paper()
    links = topo.links
    r = Router(topo).routes([0, 0, 6], [1, 8, 9])
    classes = [list(links.link_class[r.links[r.indptr[i]:r.indptr[i + 1]]]) for i in range(3)]
    assert classes[0] == ["pcie", "pcie"]                                  # same PCIe switch
    assert classes[1].count("nic") == 2 and "upi" not in classes[1]      # socket-0 GPU to the NIC
    assert classes[2].count("upi") == 1                                  # socket-1 GPU crosses to socket 0


def test_ecmp_over_spines():
    topo = cluster(2, 2, leaf_ports=1, spines=4)          # every node in its own group: traffic crosses spines
    r = Router(topo).routes([0], [3])
    fr = r.fracs[topo.links.link_class.values[r.links] == "fabric"]
    assert len(fr) == 8 and np.allclose(fr, 0.25)


@settings(max_examples=60, deadline=None)
@given(random_topologies())
def test_random_topologies_match_brute_force(topo):
    check_all_pairs(topo)
