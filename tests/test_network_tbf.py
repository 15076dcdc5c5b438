"""Optional token-bucket (tc tbf) effects of the fluid network: incast goodput and burst (both off
unless the topology asks for them; closed-form checks)."""
import math

import numpy as np
import pytest

from moesim.calibrate import netmodel as NM
from moesim.calibrate.netmodel import LinkParams, effective_topology
from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives as C
from moesim.network.stages import Collective, FlowStage
from moesim.topology.generators import emulated_testbed
from moesim.topology.model import Topology

CAP = 1e6


def _topo(hosts=4, **attrs) -> Topology:
    g = emulated_testbed(hosts, 1, link_bandwidth=CAP, loopback_bandwidth=1e12).graph.copy()
    for _, _, a in g.edges(data=True):
        a["latency"] = 0.0
    g.graph.update(attrs)
    return Topology(g, source="<test>")


def _time(topo: Topology, coll: Collective) -> float:
    net = FluidNetwork(topo, NetworkParams(0.0, 0.0))
    net.start(coll, "c", 0.0)
    net.run_until_idle()
    return net.timings["c"].end_s


@pytest.mark.parametrize("b", [0.1, 0.4])
def test_incast_three_senders_get_rate_times_g3(b):
    nbytes = 1e6
    coll = C.p2p([1, 2, 3], [0, 0, 0], nbytes)
    t = _time(_topo(incast_penalty={"nic": b}), coll)
    # host0's downlink has fan-in 3: it carries CAP * g(3) = CAP / (1 + 2b) in total
    assert t == pytest.approx(3 * nbytes / (CAP / (1 + 2 * b)), rel=1e-9)
    assert _time(_topo(), coll) == pytest.approx(3 * nbytes / CAP, rel=1e-9)


def test_incast_single_upstream_is_free_and_absent_by_default():
    coll = C.p2p([1], [0], 1e6)
    assert _time(_topo(incast_penalty={"nic": 0.5}), coll) == pytest.approx(1.0, rel=1e-9)
    # a ring (one upstream link per receiving link) and the uplinks (fan-in from loopback) are unaffected
    ring = C.p2p([0, 1, 2, 3], [1, 2, 3, 0], 1e6)
    assert _time(_topo(incast_penalty={"nic": 0.5}), ring) == pytest.approx(_time(_topo(), ring), rel=1e-9)


def test_burst_passes_first_bytes_of_a_collective():
    B = 2e5
    one = C.p2p([1], [0], 1e6)
    assert _time(_topo(burst_bytes={"nic": B}), one) == pytest.approx((1e6 - B) / CAP, rel=1e-9)
    # two flows into one link share its burst (each gets B/2 at once), the rest at the rate
    two = C.p2p([1, 2], [0, 0], 1e6)
    assert _time(_topo(burst_bytes={"nic": B}), two) == pytest.approx((2e6 - B) / CAP, rel=1e-9)
    # a later stage of the same collective follows back to back: no burst left
    st = [FlowStage(np.array([1]), np.array([0]), np.array([1e6])) for _ in range(2)]
    coll = Collective("p2p", "direct", np.array([0, 1]), st)
    assert _time(_topo(burst_bytes={"nic": B}), coll) == pytest.approx((2e6 - B) / CAP, rel=1e-9)


def test_link_params_round_trip_and_shaped_only():
    lp = LinkParams(efficiency=0.9, max_bandwidth=5e8, latency_s=1e-4, incast_penalty=0.2, burst_s=0.005)
    assert LinkParams.from_dict(lp.to_dict()) == lp
    assert "incast_penalty" not in LinkParams(efficiency=0.9).to_dict()
    assert LinkParams.from_dict({"efficiency": 0.9}).incast_penalty == 0.0
    shaped = effective_topology(Topology(NM.testbed_graph(4, 1, 400e6), source="t"), {"nic": lp})
    assert shaped.graph.graph["incast_penalty"] == {"nic": 0.2}
    assert shaped.graph.graph["burst_bytes"]["nic"] == pytest.approx(0.005 * 400e6 / 8)
    unshaped = effective_topology(Topology(NM.testbed_graph(4, 1, None), source="t"), {"nic": lp})
    assert "incast_penalty" not in unshaped.graph.graph and "burst_bytes" not in unshaped.graph.graph
    assert math.isfinite(float(unshaped.link_capacity.max()))


def test_fit_network_chooses_tbf_effects_only_when_asked():
    import glob
    from pathlib import Path

    from moesim.calibrate.fit import fit_network
    from moesim.calibrate.tables import collective_medians, read_table
    root = Path(__file__).resolve().parents[1] / "calibration" / "measurements"
    coll = collective_medians([read_table(Path(p)) for p in sorted(glob.glob(str(root / "net-*.csv")))])
    off = fit_network(coll)
    assert off.links["nic"].incast_penalty == 0.0 and off.links["nic"].burst_s == 0.0
    on = fit_network(coll, tbf_effects=True, incast_grid=(0.0, 0.15), burst_grid=(0.0, 0.002))
    assert on.links["nic"].incast_penalty in (0.0, 0.15) and on.links["nic"].burst_s in (0.0, 0.002)
    assert on.links["loopback"].incast_penalty == 0.0
