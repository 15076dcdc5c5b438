"""The incremental FluidNetwork: event semantics, collectives in flight together, symmetry refinement
when traffic changes mid-way, memoisation, byte accounting."""
import math

import networkx as nx
import numpy as np
import pytest

from moesim.network import Collective, FlowStage, FluidNetwork, NetworkParams, collectives
from moesim.topology import Topology
from moesim.topology.generators import cluster, emulated_testbed

ZERO = NetworkParams(0.0, 0.0)


def _drive(net: FluidNetwork, starts: list[tuple[float, object, Collective]]) -> dict:
    """Start collectives at given times, advancing event by event like the engine does."""
    pending = sorted(starts, key=lambda x: x[0])
    done_at = {}
    while pending or net.in_flight:
        t_next = net.next_event_time()
        if pending and pending[0][0] <= t_next:
            t, key, coll = pending.pop(0)
            for k in net.advance(t):
                done_at[k] = net.now
            net.start(coll, key, t)
            continue
        for k in net.advance(t_next):
            done_at[k] = t_next
    return done_at


def test_two_transfers_share_a_link_fairly():
    topo = emulated_testbed(2, 1, link_bandwidth=1e9, stack_bandwidth=1e12)
    net = FluidNetwork(topo, ZERO)
    assert net.next_event_time() == math.inf and net.advance(5.0) == [] and net.now == 5.0
    done = _drive(net, [(5.0, "a", collectives.p2p(0, 1, 2e9)), (6.0, "b", collectives.p2p(0, 1, 1e9))])
    # a alone for 1 s (1 GB sent), then a (1 GB left) and b (1 GB) at 0.5 GB/s each: both end at 8
    assert done["a"] == pytest.approx(8.0) and done["b"] == pytest.approx(8.0)
    assert net.timings["a"].time_s == pytest.approx(3.0) and net.bytes_by_class()["nic"] == pytest.approx(2 * 3e9)


def test_event_api_and_overheads():
    topo = emulated_testbed(2, 1, link_bandwidth=1e9, stack_bandwidth=1e12)
    net = FluidNetwork(topo, NetworkParams(latency_per_message_s=0.25, collective_overhead_s=0.5))
    net.start(collectives.p2p(0, 1, 1e9), "x", 0.0)
    assert net.next_event_time() == pytest.approx(0.5)           # delayed stage start
    assert net.advance(0.5) == [] and net.next_event_time() == pytest.approx(1.5)  # last byte sent
    assert net.advance(1.5) == [] and net.next_event_time() == pytest.approx(1.75)  # ... and arrived
    assert net.advance(2.0) == ["x"] and net.timings["x"].end_s == pytest.approx(1.75)
    with pytest.raises(ValueError, match="backwards"):
        net.advance(1.0)
    net.start(collectives.p2p(0, 1, 1e9), "y", 2.0)
    with pytest.raises(ValueError, match="already in flight"):
        net.start(collectives.p2p(0, 1, 1e9), "y", 2.0)
    with pytest.raises(ValueError, match="advance the network"):
        net.start(collectives.p2p(0, 1, 1e9), "z", 10.0)
    with pytest.raises(ValueError, match="already at"):
        net.start(collectives.p2p(0, 1, 1e9), "z", 1.0)


def test_empty_collective_completes_after_overhead():
    net = FluidNetwork(emulated_testbed(2, 2), NetworkParams(0.0, 1e-3))
    net.start(collectives.all_reduce([1], 1e6), "solo", 0.0)
    assert net.advance(net.next_event_time()) == ["solo"] and net.now == pytest.approx(1e-3)


def _explicit(coll: Collective) -> Collective:
    """The same collective with every stage as an explicit flow list (no symmetry)."""
    return Collective(coll.op, coll.algorithm, coll.ranks,
                      [FlowStage(s.src, s.dst, s.nbytes, repeat=s.repeat, latency_steps=s.latency_steps)
                       for s in coll.stages])


def test_concurrent_collectives_and_refinement_match_explicit_flows():
    topo = cluster(6, 4, leaf_ports=2, spines=2)
    p = NetworkParams(2e-6, 5e-6)
    scen = [(0.0, "ep0", collectives.all_to_all(range(0, 12), 48e6)),
            (0.0, "ep1", collectives.all_to_all(range(12, 24), 48e6)),
            (2e-4, "ring", collectives.all_reduce([0, 5, 13, 22], 8e6)),          # breaks the twins mid-way
            (3e-4, "ep0b", collectives.all_to_all(range(0, 24, 2), 24e6))]
    net_sym, net_flat = FluidNetwork(topo, p), FluidNetwork(topo, p)
    done_sym = _drive(net_sym, scen)
    done_flat = _drive(net_flat, [(t, k, _explicit(c)) for t, k, c in scen])
    assert done_sym.keys() == done_flat.keys() == {"ep0", "ep1", "ring", "ep0b"}
    for k in done_sym:
        assert net_sym.timings[k].end_s == pytest.approx(net_flat.timings[k].end_s, rel=1e-9), k
    assert np.allclose(net_sym.link_bytes, net_flat.link_bytes, rtol=1e-9, atol=1.0)


def test_bytes_are_conserved_and_links_never_overloaded():
    topo = cluster(4, 4, intra="pcie", nics_per_node=2, leaf_ports=2, spines=2)
    net = FluidNetwork(topo, NetworkParams(1e-6, 1e-6))
    rng = np.random.default_rng(3)
    m = rng.uniform(1e5, 3e6, (16, 16))
    colls = {"v": collectives.all_to_all(range(16), m), "r": collectives.all_reduce(range(0, 16, 3), 5e6),
             "d": collectives.all_to_all(range(16), 16e6, topo, "2d")}
    for k, c in colls.items():
        net.start(c, k, 0.0)
    expected = 0.0
    from moesim.network.routing import router_for
    for c in colls.values():
        for s in c.stages:
            hops = np.diff(router_for(topo).routes(s.src, s.dst).indptr)   # ECMP fractions sum to path length
            r = router_for(topo).routes(s.src, s.dst)
            per_flow = np.bincount(r.pair_of_entry, weights=r.fracs, minlength=s.num_flows)
            expected += float((s.nbytes * per_flow).sum()) * s.repeat
            assert len(hops) == s.num_flows
    while net.in_flight:
        rates = net.link_rates
        assert np.all(rates <= topo.link_capacity * (1 + 1e-9))
        net.advance(net.next_event_time())
    assert net.link_bytes.sum() == pytest.approx(expected, rel=1e-9)


def test_recurring_all_to_all_is_solved_once_and_flow_times_are_recorded():
    topo = cluster(4, 4, leaf_ports=2, spines=2)
    net = FluidNetwork(topo)
    for layer in range(5):
        for g in range(2):
            net.start(collectives.all_to_all(range(8 * g, 8 * g + 8), 32e6), (layer, g), net.now,
                      record_flows=(layer == 0))
        net.run_until_idle()
    assert net.stats["solves"] <= 3 and net.stats["memo_hits"] >= 4 * net.stats["solves"]
    times = [net.timings[(layer, 0)].time_s for layer in range(5)]
    assert np.allclose(times, times[0], rtol=1e-12)
    ft = net.flow_finish_times((0, 0))[0]
    assert len(ft) == 56 and ft.max() == pytest.approx(net.timings[(0, 0)].end_s, rel=1e-12)


def test_directed_topology_uses_each_direction_capacity():
    g = nx.DiGraph()
    g.add_node("sw", kind="switch")
    for r in range(2):
        g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r}")
    g.add_edge("g0", "sw", bandwidth=1e9); g.add_edge("sw", "g0", bandwidth=4e9)
    g.add_edge("g1", "sw", bandwidth=2e9); g.add_edge("sw", "g1", bandwidth=2e9)
    net = FluidNetwork(Topology(g, "asym"), ZERO)
    net.start(collectives.p2p([0, 1], [1, 0], 4e9), "x", 0.0)
    net.run_until_idle()
    assert net.timings["x"].end_s == pytest.approx(4.0)  # 0 -> 1 limited by 1 GB/s; 1 -> 0 by 2 GB/s
