"""Generated topologies: the paper cluster's PCIe tree, DGX node, parametric clusters, testbed; summaries."""
import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.topology import bisection_bandwidth, summarize
from moesim.topology.generators import bigmac_paper, cluster, dgx_h100_node, emulated_testbed


def test_paper_cluster():
    topo = bigmac_paper()
    assert topo.num_gpus == 32 and topo.hosts == [f"node{m}" for m in range(4)]
    assert {topo.device_of(r) for r in range(32)} == {"paper-gpu-48gb"}
    assert topo.ranks_of_host("node2") == list(range(16, 24))
    assert topo.kind_counts() == {"cpu": 8, "gpu": 32, "nic": 4, "pcie_switch": 16, "switch": 1}
    links = topo.links
    nic = links[links.link_class == "nic"]
    assert len(nic) == 8 and set(nic.capacity) == {12.5e9}            # 100 Gb/s each way
    assert set(links[links.link_class == "pcie"].capacity) == {25e9}  # PCIe 4.0 x16 effective
    assert set(links[links.link_class == "upi"].capacity) == {40e9}
    g = topo.graph
    assert sorted(g.neighbors("node0/pcie0")) == ["node0/cpu0", "node0/gpu0", "node0/gpu1"]
    assert sorted(g.neighbors("node0/pcie3")) == ["node0/cpu1", "node0/gpu6", "node0/gpu7"]
    assert sorted(g.neighbors("node0/nic0")) == ["ib-switch", "node0/cpu0"]
    assert bisection_bandwidth(topo) == pytest.approx(25e9)  # two NICs per half


def test_dgx_node():
    topo = dgx_h100_node()
    assert topo.num_gpus == 8 and topo.hosts == ["node0"] and topo.device_of(3) == "h100-sxm"
    links = topo.links
    assert set(links[links.link_class == "nvlink"].capacity) == {450e9}
    assert (links.link_class == "nic").sum() == 16 and set(links[links.link_class == "nic"].capacity) == {50e9}
    assert topo.kind_counts()["nic"] == 8 and topo.kind_counts()["nvswitch"] == 1


def test_rail_cluster_shape():
    topo = cluster(6, 4, leaf_ports=4, spines=3, oversubscription=2.0)
    kinds = topo.kind_counts()
    assert kinds["gpu"] == 24 and kinds["nic"] == 24 and kinds["switch"] == 2 * 4 + 3  # 2 groups x 4 rails + spines
    g = topo.graph
    assert g.has_edge("node5/nic2", "leaf1.2") and g.has_edge("node0/nic3", "leaf0.3")
    trunk = g.edges["leaf0.0", "spine0"]["bandwidth"]
    assert trunk == pytest.approx(4 * 50e9 / (2.0 * 3))
    assert topo.link_classes == ["fabric", "nic", "nvlink", "pcie"]


def test_leafspine_shared_nics_use_cost_to_stay_on_nvlink():
    topo = cluster(2, 8, fabric="leafspine", nics_per_node=4, leaf_ports=4, spines=2)
    g = topo.graph
    assert g.edges["node0/gpu0", "node0/pcie0"]["cost"] == 2 and g.has_edge("node0/nic0", "node0/pcie0")
    from moesim.network import router_for
    r = router_for(topo).routes([0], [1])
    assert {topo.links.link_class[l] for l in r.links} == {"nvlink"}


def test_pcie_cluster_and_single_leaf_has_no_spines():
    topo = cluster(4, 4, intra="pcie", nics_per_node=2, fabric="leafspine", leaf_ports=8)
    assert "spine0" not in topo.graph and topo.kind_counts()["switch"] == 1
    assert "upi" in topo.link_classes


def test_testbed():
    topo = emulated_testbed(3, 2, link_bandwidth=1e9 / 8, loopback_bandwidth=3e9, stack_bandwidth=1e9)
    assert topo.num_gpus == 6 and topo.hosts == ["host0", "host1", "host2"]
    assert topo.link_classes == ["loopback", "nic", "stack"] and topo.device_of(0) is None
    assert bisection_bandwidth(topo) == pytest.approx(1e9 / 8)
    # one rank per host: no loopback device traffic, so no lo hub
    assert emulated_testbed(4, 1).link_classes == ["nic", "stack"]


def test_testbed_routes_local_traffic_over_loopback_and_the_rest_over_the_stack():
    from moesim.network.routing import Router
    topo = emulated_testbed(2, 2)
    r = Router(topo)
    links = topo.links
    path = lambda s, d: list(links["link_class"].iloc[r.routes([s], [d]).links])  # noqa: E731
    assert path(0, 1) == ["loopback", "loopback"]                 # same namespace: lo only
    assert path(0, 2) == ["stack", "nic", "nic", "stack"]         # across the bridge: never lo


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(nodes=0), "nodes"), (dict(nodes=2, nic_bandwidth=-1), "nic_bandwidth"),
    (dict(nodes=2, intra="nvlink"), "intra"), (dict(nodes=2, fabric="torus"), "fabric"),
    (dict(nodes=2, gpus_per_node=8, nics_per_node=3), "divide"),
    (dict(nodes=2, oversubscription=0), "oversubscription")])
def test_generator_argument_errors(kwargs, fragment):
    with pytest.raises(MoesimError, match=fragment):
        cluster(**kwargs)


def test_summary():
    s = summarize(cluster(4, 8, leaf_ports=2, spines=2))
    assert s["gpus"] == 32 and s["hosts"] == 4 and s["gpus_per_host"] == 8
    assert s["link_classes"]["nic"]["links"] == 64 and s["link_classes"]["nic"]["max_bandwidth"] == 50e9
    assert s["bisection_bandwidth"] == pytest.approx(min(16 * 50e9, 2 * 8 * 50e9))
    assert np.isfinite(s["bisection_bandwidth"])
