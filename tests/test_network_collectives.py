"""Collectives on small topologies against closed forms (exact), and the decompositions themselves."""
import networkx as nx
import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.network import Collective, FlowStage, NetworkParams, UniformStage, collectives, simulate_collective
from moesim.topology import Topology
from moesim.topology.generators import bigmac_paper, cluster

ALPHA, OVH = 3e-6, 7e-6
P = NetworkParams(latency_per_message_s=ALPHA, collective_overhead_s=OVH)


def star(n: int, bw: float, lat: float) -> Topology:
    """N GPUs on one non-blocking switch."""
    g = nx.Graph()
    g.add_node("sw", kind="switch")
    for r in range(n):
        g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r}")
        g.add_edge(f"g{r}", "sw", bandwidth=bw, latency=lat)
    return Topology(g, "star")


def test_one_link():
    g = nx.Graph()
    g.add_node("a", kind="gpu", rank=0, host="a")
    g.add_node("b", kind="gpu", rank=1, host="b")
    g.add_edge("a", "b", bandwidth="8 Gbit/s", latency="2 us")
    res = simulate_collective(Topology(g, "link"), collectives.p2p(0, 1, 3e9), P)
    assert res.time_s == pytest.approx(OVH + 3e9 / 1e9 + 2e-6 + ALPHA, rel=1e-12)
    assert res.bytes_by_class == {"nvlink": 3e9}
    assert res.flow_finish_times[0][0] == pytest.approx(res.time_s, rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 8, 16])
def test_all_to_all_on_non_blocking_switch(n):
    bw, lat, size = 25e9, 1e-6, 64e6
    res = simulate_collective(star(n, bw, lat), collectives.all_to_all(range(n), size), P)
    assert res.time_s == pytest.approx(OVH + (n - 1) / n * size / bw + 2 * lat + ALPHA, rel=1e-12)
    assert res.stage_times == [pytest.approx(res.time_s - OVH, rel=1e-12)]
    assert sum(res.bytes_by_class.values()) == pytest.approx(2 * (n - 1) * size, rel=1e-12)  # two links per byte


def test_two_level_tree_with_oversubscribed_uplink():
    k, bw, up, lat, size = 4, 10e9, 10e9, 1e-6, 8e9       # 4 GPUs per leaf, 4:1 oversubscribed uplink
    g = nx.Graph()
    g.add_node("root", kind="switch")
    for leaf in range(2):
        g.add_node(f"leaf{leaf}", kind="switch")
        g.add_edge(f"leaf{leaf}", "root", bandwidth=up, latency=lat)
        for i in range(k):
            r = leaf * k + i
            g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r}")
            g.add_edge(f"g{r}", f"leaf{leaf}", bandwidth=bw, latency=lat)
    res = simulate_collective(Topology(g, "tree"), collectives.all_to_all(range(2 * k), size), P)
    s = size / (2 * k)
    cross = OVH + k * k * s / up + 4 * lat + ALPHA                # k*k flows share the uplink each way
    local = OVH + (k - 1) * s / (bw - up / k) + 2 * lat + ALPHA   # the rest of the GPU link, shared by k-1 flows
    assert res.time_s == pytest.approx(cross, rel=1e-12)
    stage = collectives.all_to_all(range(2 * k), size).stages[0]
    same_leaf = (stage.src // k) == (stage.dst // k)
    finish = res.flow_finish_times[0] + 0.0
    assert np.allclose(finish[same_leaf], local, rtol=1e-12) and np.allclose(finish[~same_leaf], cross, rtol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_ring_all_reduce(n):
    bw, lat, size = 20e9, 0.5e-6, 1e9
    res = simulate_collective(star(n, bw, lat), collectives.all_reduce(range(n), size), P)
    step = size / n / bw + 2 * lat + ALPHA
    # the 2(N-1) ring steps are pipelined into one stage that pays one message latency per step:
    # 2(N-1)/N * S/B + 2(N-1) * alpha, the alpha-beta closed form
    assert len(res.stage_times) == 1
    assert res.time_s == pytest.approx(OVH + 2 * (n - 1) * step, rel=1e-12)
    assert res.stage_times[0] == pytest.approx(2 * (n - 1) * step, rel=1e-12)
    rs = simulate_collective(star(n, bw, lat), collectives.reduce_scatter(range(n), size), P)
    ag = simulate_collective(star(n, bw, lat), collectives.all_gather(range(n), size), P)
    assert rs.time_s == pytest.approx(OVH + (n - 1) * step, rel=1e-12) and ag.time_s == pytest.approx(rs.time_s)


def test_chain_two_flows_share_one_bottleneck():
    g = nx.Graph()
    for x in ("s0", "s1"):
        g.add_node(x, kind="switch")
    for r, sw in enumerate(["s0", "s0", "s1", "s1", "s0"]):
        g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r}")
    g.add_edge("g0", "s0", bandwidth=10e9)
    g.add_edge("g1", "s0", bandwidth=10e9)
    g.add_edge("g4", "s0", bandwidth=1e9)   # a third flow limited at its own link
    g.add_edge("s0", "s1", bandwidth=4e9)   # the shared bottleneck
    g.add_edge("s1", "g2", bandwidth=10e9)
    g.add_edge("s1", "g3", bandwidth=10e9)
    topo = Topology(g, "chain")
    zero = NetworkParams(0.0, 0.0)
    res = simulate_collective(topo, collectives.p2p([0, 1], [2, 3], [4e9, 12e9]), zero)
    # both at 2 GB/s until the 4 GB flow ends at t=2; then 8 GB left alone at 4 GB/s: t=4
    assert res.flow_finish_times[0].tolist() == pytest.approx([2.0, 4.0], rel=1e-12)
    res = simulate_collective(topo, collectives.p2p([0, 1, 4], [2, 3, 2], [30e9, 30e9, 1e9]), zero)
    # the third flow gets 1 (its own link), the two others share the remaining 3: 1.5 each
    assert res.flow_finish_times[0][2] == pytest.approx(1.0, rel=1e-12)
    # after it ends at t=1 they get 2 each: 30 - 1.5 = 28.5 GB more at 2 GB/s
    assert res.flow_finish_times[0][:2].tolist() == pytest.approx([1 + 28.5 / 2] * 2, rel=1e-12)


def test_all_to_all_v_matrix_and_uniform_detection():
    topo = bigmac_paper()
    m = np.full((4, 4), 5e6)
    assert isinstance(collectives.all_to_all([0, 8, 16, 24], m).stages[0], UniformStage)
    m[1, 2] = 9e6
    coll = collectives.all_to_all([0, 8, 16, 24], m, topo)
    st = coll.stages[0]
    assert isinstance(st, FlowStage) and st.num_flows == 12 and st.total_bytes == pytest.approx(m.sum() - m.trace())
    t_v = simulate_collective(topo, coll, P).time_s
    t_u = simulate_collective(topo, collectives.all_to_all([0, 8, 16, 24], 4 * 5e6), P).time_s
    assert t_v > t_u  # skew makes it slower


@pytest.mark.parametrize("uniform", [True, False])
def test_2d_decomposition_conserves_bytes(uniform):
    topo = cluster(3, 4, leaf_ports=2, spines=2)
    n = 12
    rng = np.random.default_rng(1)
    m = np.full((n, n), 1e6) if uniform else rng.uniform(0.5e6, 2e6, (n, n))
    coll = collectives.all_to_all(range(n), m, topo, "2d")
    assert [s.label for s in coll.stages] == ["2d:intra_aggregate", "2d:inter_exchange", "2d:intra_scatter"]
    hosts = np.arange(n) // 4
    for s in coll.stages:
        same = hosts[s.src] == hosts[s.dst]
        assert same.all() if s.label != "2d:inter_exchange" else (~same).all()
    off = m * (hosts[:, None] != hosts[None, :])
    assert coll.stages[1].total_bytes == pytest.approx(off.sum(), rel=1e-12)
    # each host pair exchanges one message, between proxies of equal local index
    assert coll.stages[1].num_flows == 3 * 2 and np.all(coll.stages[1].src % 4 == coll.stages[1].dst % 4)
    intra = m * (hosts[:, None] == hosts[None, :]) * (1 - np.eye(n))
    s1 = coll.stages[0].total_bytes
    assert s1 <= intra.sum() + off.sum() + 1 and s1 >= intra.sum()
    res = simulate_collective(topo, coll, P)
    assert res.time_s > 0 and len(res.stage_times) == 3


def test_uniform_symmetric_solution_equals_explicit_flows():
    topo = cluster(5, 4, leaf_ports=2, spines=3)          # 3 groups of twin hosts, one of them partial
    for ranks in (np.arange(20), np.array([0, 1, 4, 5, 8, 9, 12, 13, 16, 17])):
        n = len(ranks)
        sym = simulate_collective(topo, collectives.all_to_all(ranks, 4e6 * n), P)
        a, b = np.nonzero(~np.eye(n, dtype=bool))
        flat = simulate_collective(topo, Collective("all_to_all", "direct", ranks,
                                                    [FlowStage(ranks[a], ranks[b], 4e6)]), P)
        assert sym.time_s == pytest.approx(flat.time_s, rel=1e-12)
        assert np.allclose(sym.link_bytes["bytes"], flat.link_bytes["bytes"], rtol=1e-9, atol=1e-3)
        assert np.allclose(sym.flow_finish_times[0], flat.flow_finish_times[0], rtol=1e-12)


def test_collective_argument_errors():
    with pytest.raises(MoesimError, match="distinct"):
        collectives.all_to_all([0, 0], 1e6)
    with pytest.raises(MoesimError, match="not available"):
        collectives.all_reduce([0, 1], 1e6, algorithm="2d")
    with pytest.raises(MoesimError, match="needs the topology"):
        collectives.all_to_all([0, 1], 1e6, algorithm="2d")
    with pytest.raises(MoesimError, match="same number of ranks"):
        collectives.all_to_all([0, 1, 8], 1e6, bigmac_paper(), algorithm="2d")
    with pytest.raises(MoesimError, match="3 x 3"):
        collectives.all_to_all([0, 1, 2], np.ones((2, 2)))
    with pytest.raises(MoesimError, match="unknown collective"):
        collectives.build("broadcast", [0, 1], 1e6)
    single = collectives.all_to_all([3], 1e6)
    assert single.stages == [] and simulate_collective(bigmac_paper(), single, P).time_s == pytest.approx(OVH)
