"""Twin hosts and the exact symmetry reduction of uniform All-to-Alls."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from moesim.network import Collective, FlowStage, NetworkParams, collectives, simulate_collective
from moesim.network.symmetry import Domains, meet, participation_labels, uniform_orbits
from moesim.topology import Topology
from moesim.topology.generators import bigmac_paper, cluster

P = NetworkParams(1e-6, 2e-6)


def test_twin_classes():
    assert Domains(bigmac_paper()).twin.tolist() == [0, 0, 0, 0]
    d = Domains(cluster(5, 4, leaf_ports=2, spines=2))     # groups {0,1}, {2,3}, {4}: hosts share leaves
    assert d.twin.tolist() == [0, 0, 1, 1, 2]
    assert d.local_of_rank[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_a_host_with_a_different_link_is_not_a_twin():
    topo = cluster(4, 4, leaf_ports=4, spines=2)
    g = topo.graph.copy()
    g.edges["node2/gpu1", "node2/nvswitch"]["bandwidth"] = 100e9
    odd = Topology(g, "odd")
    assert Domains(odd).twin.tolist() == [0, 0, 1, 0]
    _assert_matches_explicit(odd, np.arange(16))


def test_orbit_counts_add_up():
    topo = cluster(8, 8, leaf_ports=4, spines=2)
    dom = Domains(topo)
    ranks = np.arange(64)
    labels = meet(dom.twin, participation_labels(dom, ranks))
    orb = uniform_orbits(dom, ranks, labels)
    assert orb.count.sum() == 64 * 63 and len(orb.count) == 2 * (2 * 64) + 2 * 56


def _assert_matches_explicit(topo: Topology, ranks: np.ndarray) -> None:
    n = len(ranks)
    sym = simulate_collective(topo, collectives.all_to_all(ranks, 3e6 * n), P)
    a, b = np.nonzero(~np.eye(n, dtype=bool))
    flat = simulate_collective(topo, Collective("all_to_all", "direct", ranks, [FlowStage(ranks[a], ranks[b], 3e6)]), P)
    assert sym.time_s == pytest.approx(flat.time_s, rel=1e-12)
    assert np.allclose(sym.flow_finish_times[0], flat.flow_finish_times[0], rtol=1e-12)
    assert np.allclose(sym.link_bytes["bytes"], flat.link_bytes["bytes"], rtol=1e-9, atol=1e-3)


@settings(max_examples=12, deadline=None)
@given(nodes=st.integers(2, 6), gpus=st.integers(1, 4), leaf_ports=st.integers(1, 4), spines=st.integers(1, 3),
       fabric=st.sampled_from(["rail", "leafspine"]), intra=st.sampled_from(["nvswitch", "pcie"]),
       pick=st.integers(0, 2**24))
def test_symmetric_equals_explicit_on_random_clusters(nodes, gpus, leaf_ports, spines, fabric, intra, pick):
    topo = cluster(nodes, gpus, intra=intra, fabric=fabric, leaf_ports=leaf_ports, spines=spines,
                   nics_per_node=1 if intra == "pcie" else gpus)
    rng = np.random.default_rng(pick)
    ranks = np.arange(topo.num_gpus) if pick % 2 else np.sort(rng.choice(topo.num_gpus, max(2, topo.num_gpus // 2),
                                                                           replace=False))
    _assert_matches_explicit(topo, ranks)
