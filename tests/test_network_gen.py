"""Hypothesis strategies for random, valid topologies, shared by the network tests (imported as
``test_network_gen``), and a check that they are valid."""
import networkx as nx
from hypothesis import strategies as st

from moesim.topology import Topology

INNER_KINDS = ["switch", "cpu", "pcie_switch", "nic", "nvswitch"]


@st.composite
def random_topologies(draw, max_gpus: int = 6, max_inner: int = 6, costs: bool = True, directed=None):
    """Connected by construction: inner nodes form a random tree plus extra edges, every GPU hangs off
    one or two inner nodes, a few direct GPU-GPU links. Directed graphs get both directions with
    independent bandwidths."""
    is_directed = draw(st.booleans()) if directed is None else directed
    n_gpu = draw(st.integers(2, max_gpus))
    n_in = draw(st.integers(1, max_inner))
    g = nx.DiGraph() if is_directed else nx.Graph()
    bw = st.sampled_from([1e9, 2e9, 3e9, 5e9])
    cost = st.sampled_from([1, 1, 2]) if costs else st.just(1)
    lat = st.sampled_from([0.0, 1e-6, 2.5e-6])

    def link(u, v):
        g.add_edge(u, v, bandwidth=draw(bw), cost=draw(cost), latency=draw(lat))
        if is_directed:
            g.add_edge(v, u, bandwidth=draw(bw), cost=draw(cost), latency=draw(lat))

    inner = [f"x{i}" for i in range(n_in)]
    for x in inner:
        g.add_node(x, kind=draw(st.sampled_from(INNER_KINDS)))
    for i in range(1, n_in):
        link(inner[i], inner[draw(st.integers(0, i - 1))])
    for r in range(n_gpu):
        g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r % 2}")
        for x in draw(st.lists(st.sampled_from(inner), min_size=1, max_size=2, unique=True)):
            link(f"g{r}", x)
    for u, v in draw(st.lists(st.tuples(st.sampled_from(inner), st.sampled_from(inner)), max_size=n_in)):
        if u != v and not g.has_edge(u, v):
            link(u, v)
    for a, b in draw(st.lists(st.tuples(st.integers(0, n_gpu - 1), st.integers(0, n_gpu - 1)), max_size=2)):
        if a != b and not g.has_edge(f"g{a}", f"g{b}"):
            link(f"g{a}", f"g{b}")
    return Topology(g, "random")


@st.composite
def flow_pairs(draw, topo: Topology, max_size: int = 14):
    n = topo.num_gpus
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 2)), min_size=1, max_size=max_size))
    return [(a, b if b < a else b + 1) for a, b in pairs]


from hypothesis import given, settings  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(random_topologies())
def test_random_topologies_are_valid(topo):
    assert topo.num_gpus >= 2 and sorted(topo.node_rank[topo.rank_node]) == list(range(topo.num_gpus))
    assert set(topo.link_src[topo.is_gpu[topo.link_src]]) == set(topo.rank_node)  # every GPU sends somewhere
