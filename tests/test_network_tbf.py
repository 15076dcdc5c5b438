"""Optional testbed effects of the fluid network: tbf two-way goodput and its onset, token-bucket burst
with refill, and the receiver wait (all off unless the topology / parameters ask; closed-form checks)."""
import math
from dataclasses import replace
from pathlib import Path

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
    g = emulated_testbed(hosts, 1, link_bandwidth=CAP, stack_bandwidth=1e12).graph.copy()
    for _, _, a in g.edges(data=True):
        a["latency"] = 0.0
    g.graph.update(attrs)
    return Topology(g, source="<test>")


def _time(topo: Topology, coll: Collective) -> float:
    net = FluidNetwork(topo, NetworkParams(0.0, 0.0))
    net.start(coll, "c", 0.0)
    net.run_until_idle()
    return net.timings["c"].end_s


def _run(topo: Topology, colls: list, params: NetworkParams | None = None) -> dict:
    """Start ``(key, collective, start_s)`` triples on one network; end time of each."""
    net = FluidNetwork(topo, params or NetworkParams(0.0, 0.0))
    pending = sorted(colls, key=lambda c: c[2])
    while pending or net.in_flight:
        t = net.next_event_time()
        if pending and pending[0][2] <= t:
            key, coll, start = pending.pop(0)
            net.advance(start)
            net.start(coll, key, start)
            continue
        net.advance(t)
    return {k: net.timings[k].end_s for k, _, _ in colls}


@pytest.mark.parametrize("b", [0.1, 0.4])
def test_two_way_exchange_runs_at_rate_over_one_plus_b(b):
    nbytes = 1e6
    pair = C.p2p([0, 1], [1, 0], nbytes)                     # one connection, both directions
    assert _time(_topo(two_way_penalty={"nic": b}), pair) == pytest.approx(nbytes / (CAP / (1 + b)), rel=1e-9)
    assert _time(_topo(), pair) == pytest.approx(nbytes / CAP, rel=1e-9)
    # an All-to-All among 4 hosts is two-way on every link: each uplink sends 3 flows at CAP/(1+b)
    a2a = C.all_to_all(list(range(4)), 4 * nbytes)
    base = _time(_topo(), a2a)
    assert _time(_topo(two_way_penalty={"nic": b}), a2a) == pytest.approx(base * (1 + b), rel=1e-9)


@pytest.mark.parametrize("b,c", [(0.1, 0.2), (0.3, 0.05)])
def test_peer_penalty_grows_with_the_peer_hosts_a_link_exchanges_with(b, c):
    """rate / (1 + b + c (k - 1)): a pair exchange (k = 1) is untouched by c; an All-to-All among
    4 hosts has each host link exchanging with 3 peer hosts' links (k = 3); among 3 hosts k = 2."""
    nbytes = 1e6
    both = dict(two_way_penalty={"nic": b}, peer_penalty={"nic": c})
    pair = C.p2p([0, 1], [1, 0], nbytes)
    assert _time(_topo(**both), pair) == pytest.approx(nbytes * (1 + b) / CAP, rel=1e-9)
    for hosts in (3, 4):
        a2a = C.all_to_all(list(range(hosts)), hosts * nbytes)
        base = _time(_topo(hosts), a2a)
        assert _time(_topo(hosts, **both), a2a) == pytest.approx(base * (1 + b + c * (hosts - 2)), rel=1e-9)
    # c alone does nothing (it scales the two-way penalty's links), and one-way traffic stays free
    assert _time(_topo(peer_penalty={"nic": 0.5}), C.all_to_all(list(range(4)), 4 * nbytes)) == pytest.approx(
        _time(_topo(), C.all_to_all(list(range(4)), 4 * nbytes)), rel=1e-9)
    fan_in = C.p2p([1, 2, 3], [0, 0, 0], nbytes)
    assert _time(_topo(**both), fan_in) == pytest.approx(_time(_topo(), fan_in), rel=1e-9)
    # the calibrated link parameters carry c to the topology, on shaped links only
    lp = LinkParams(efficiency=1.0, max_bandwidth=1e9, two_way_penalty=b, peer_penalty=c)
    assert LinkParams.from_dict(lp.to_dict()) == lp
    g = effective_topology(Topology(NM.testbed_graph(4, 1, 8e6)), {"nic": lp}).graph.graph
    assert g["peer_penalty"] == {"nic": c} and g["two_way_penalty"] == {"nic": b}
    assert "peer_penalty" not in effective_topology(Topology(NM.testbed_graph(4, 1, None)), {"nic": lp}).graph.graph


def test_one_way_patterns_are_free_and_absent_by_default():
    t = _topo(two_way_penalty={"nic": 0.5})
    for coll in (C.p2p([1], [0], 1e6), C.p2p([1, 2, 3], [0, 0, 0], 1e6), C.p2p([0, 0, 0], [1, 2, 3], 1e6),
                 C.p2p([0, 1, 2, 3], [1, 2, 3, 0], 1e6)):              # single, fan-in, fan-out, ring
        assert _time(t, coll) == pytest.approx(_time(_topo(), coll), rel=1e-9)


def test_burst_passes_first_bytes_and_refills_while_idle():
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
    # token accounting: a small stage (a dispatch's split-size exchange) spends only its own bytes,
    # so the big stage right after it still finds B - 1e3 in the bucket
    st = [FlowStage(np.array([1]), np.array([0]), np.array([n])) for n in (1e3, 1e6)]
    coll = Collective("p2p", "direct", np.array([0, 1]), st)
    assert _time(_topo(burst_bytes={"nic": B}), coll) == pytest.approx((1e6 - (B - 1e3)) / CAP, rel=1e-6)
    # a second collective after an idle gap finds CAP * gap in its bucket (at most B)
    first_end = (1e6 - B) / CAP
    for gap, credit in ((0.05, 0.05 * CAP), (1.0, B)):
        ends = _run(_topo(burst_bytes={"nic": B}), [("a", one, 0.0), ("b", one, first_end + gap)])
        assert ends["a"] == pytest.approx(first_end, rel=1e-9)
        assert ends["b"] - (first_end + gap) == pytest.approx((1e6 - credit) / CAP, rel=1e-9)
    # a collective that starts while another uses the link finds its bucket empty
    # (b's uplink is idle and full, but its route's busy downlink holds nothing): a has 7e5 B left at
    # t = 0.1, both then share the downlink (a ends at 0.1 + 7e5 / (CAP/2) = 1.5), b sends 3e5 more alone
    ends = _run(_topo(burst_bytes={"nic": B}), [("a", one, 0.0), ("b", C.p2p([2], [0], 1e6), 0.1)])
    assert ends["a"] == pytest.approx(1.5, rel=1e-9) and ends["b"] == pytest.approx(1.8, rel=1e-9)


def test_receiver_wait_overlaps_wire_time_and_adds_to_cpu_time():
    wait = 0.3
    p = NetworkParams(0.0, 0.0, receiver_wait_s=wait)
    small, big = C.p2p([1], [0], 1e4), C.p2p([1], [0], 1e6)
    # shaped (wire-bound) link: max(wait, transfer)
    assert _run(_topo(), [("s", small, 0.0)], p)["s"] == pytest.approx(wait, rel=1e-9)
    assert _run(_topo(), [("b", big, 0.0)], p)["b"] == pytest.approx(1.0, rel=1e-9)
    # CPU-bound link (the kernel's copies need the cores the wait is about): wait + transfer
    cpu = _topo(cpu_bound={"nic": 1.0})
    assert _run(cpu, [("b", big, 0.0)], p)["b"] == pytest.approx(wait + 1.0, rel=1e-9)
    # off by default
    assert _time(_topo(), small) == pytest.approx(1e4 / CAP, rel=1e-9)


@pytest.mark.parametrize("nbytes", [4e3, 1e4, 3e4])
def test_two_way_loss_sets_in_after_its_onset(nbytes):
    """Closed form: a rank pair's exchange of ``nbytes`` each way over links with b and onset H runs at
    the full rate for H s, at CAP / (1 + b) after it; a link's clock restarts once it has idled."""
    b, onset = 0.5, 0.01
    pair = C.p2p([0, 1], [1, 0], nbytes)
    topo = _topo(2, two_way_penalty={"nic": b}, two_way_onset_s={"nic": onset})
    at_rate = onset * CAP
    want = nbytes / CAP if nbytes <= at_rate else onset + (nbytes - at_rate) * (1 + b) / CAP
    assert _time(topo, pair) == pytest.approx(want, rel=1e-9)
    # no onset: the loss from the first byte; one-way traffic never pays it
    assert _time(_topo(2, two_way_penalty={"nic": b}), pair) == pytest.approx(nbytes * (1 + b) / CAP, rel=1e-9)
    assert _time(topo, C.p2p([0], [1], nbytes)) == pytest.approx(nbytes / CAP, rel=1e-9)
    # the same exchange again after an idle gap: the link's clock has restarted, a fresh onset
    ends = _run(topo, [("a", pair, 0.0), ("b", C.p2p([0, 1], [1, 0], nbytes), want + 0.05)])
    assert ends["b"] - (want + 0.05) == pytest.approx(want, rel=1e-9)


def test_an_onset_counts_from_when_a_link_began_to_carry_two_way_traffic():
    """A second exchange joining a link already past its onset pays the loss at once; the link's rate is
    shared by both, so the first one's remaining bytes also run at the penalised capacity."""
    b, onset, n = 1.0, 0.01, 3e4
    topo = _topo(2, two_way_penalty={"nic": b}, two_way_onset_s={"nic": onset})
    ends = _run(topo, [("a", C.p2p([0, 1], [1, 0], n), 0.0), ("b", C.p2p([0, 1], [1, 0], 1e3), 0.02)])
    # a: 1e4 B in the first 10 ms at CAP, then CAP/2; from 20 ms on it shares CAP/2 with b (1e3 B each way)
    left_at_20ms = n - onset * CAP - 0.01 * CAP / 2
    assert ends["b"] == pytest.approx(0.02 + 1e3 / (CAP / 4), rel=1e-9)
    assert ends["a"] == pytest.approx(0.02 + (left_at_20ms + 1e3) / (CAP / 2), rel=1e-9)


def test_link_params_round_trip_and_shaped_only():
    lp = LinkParams(efficiency=0.9, max_bandwidth=5e8, latency_s=1e-4, two_way_penalty=0.2, burst_s=0.005)
    assert LinkParams.from_dict(lp.to_dict()) == lp
    assert "two_way_penalty" not in LinkParams(efficiency=0.9).to_dict()
    assert LinkParams.from_dict({"efficiency": 0.9}).two_way_penalty == 0.0
    shaped = effective_topology(Topology(NM.testbed_graph(4, 1, 400e6), source="t"), {"nic": lp})
    assert shaped.graph.graph["two_way_penalty"] == {"nic": 0.2}
    assert "two_way_onset_s" not in shaped.graph.graph
    late = replace(lp, two_way_onset_s=0.015)
    assert LinkParams.from_dict(late.to_dict()) == late and late.to_dict()["two_way_onset_s"] == 0.015
    on = effective_topology(Topology(NM.testbed_graph(4, 1, 400e6), source="t"), {"nic": late})
    assert on.graph.graph["two_way_onset_s"] == {"nic": 0.015}
    # an onset without a loss, or on an unshaped link, is nothing
    assert "two_way_onset_s" not in effective_topology(Topology(NM.testbed_graph(4, 1, None), source="t"),
                                                       {"nic": late}).graph.graph
    assert "two_way_onset_s" not in effective_topology(Topology(NM.testbed_graph(4, 1, 400e6), source="t"),
                                                       {"nic": replace(late, two_way_penalty=0.0)}).graph.graph
    assert shaped.graph.graph["burst_bytes"]["nic"] == pytest.approx(0.005 * 400e6 / 8)
    unshaped = effective_topology(Topology(NM.testbed_graph(4, 1, None), source="t"), {"nic": lp})
    assert "two_way_penalty" not in unshaped.graph.graph and "burst_bytes" not in unshaped.graph.graph
    assert math.isfinite(float(unshaped.link_capacity.max()))


def test_fit_network_chooses_tbf_effects_only_when_asked():
    import glob
    from pathlib import Path

    from moesim.calibrate.fit import fit_network
    from moesim.calibrate.tables import collective_medians, read_table
    root = Path(__file__).resolve().parents[1] / "calibration" / "avx512-1r" / "measurements"
    coll = collective_medians([read_table(Path(p)) for p in sorted(glob.glob(str(root / "net-*.csv")))])
    off = fit_network(coll)
    assert off.links["nic"].two_way_penalty == 0.0 and off.links["nic"].burst_s == 0.0
    on = fit_network(coll, tbf_effects=True, two_way_grid=(0.0, 0.15), burst_grid=(0.0, 0.002))
    assert on.links["nic"].two_way_penalty in (0.0, 0.15) and on.links["nic"].burst_s in (0.0, 0.002)
    assert on.links["loopback"].two_way_penalty == 0.0


def _synthetic_collectives(truth: dict) -> "pd.DataFrame":
    """Collective medians the simulator itself makes with known links: 4x1 and 2x2, All-to-All and
    all-reduce (world; 2x2 also the two-rank inter-node groups), 1 and 4 MiB, 150 / 400 Mbit/s and unshaped."""
    import itertools

    import pandas as pd
    rows = []
    for (h, r), kind, size, rate in itertools.product(((4, 1), (2, 2)), ("all_to_all", "all_reduce"),
                                                     (1 << 20, 4 << 20), (150e6, 400e6, 0.0)):
        for group in (("world",) if r == 1 else ("world", "inter_node")):
            s = NM.simulate_measured(kind, group, h, r, size, rate or None, truth, 1e-4, 5e-4)
            rows.append(dict(kind=kind, group=group, hosts=h, ranks_per_host=r, size_bytes=float(size),
                             rate_bits=rate, seconds=s))
    return pd.DataFrame(rows)


def test_one_way_efficiency_recovers_the_ring_rate_the_joint_fit_mixes_with_the_two_way_loss():
    from moesim.calibrate.fit import fit_network, one_way_rows
    truth = {"nic": LinkParams(efficiency=0.9, two_way_penalty=0.3),
             "stack": LinkParams(efficiency=None, max_bandwidth=2e8),
             "loopback": LinkParams(efficiency=None, max_bandwidth=1e9)}
    coll = _synthetic_collectives(truth)
    one_way = one_way_rows(coll)
    # exactly the shaped rings of four ranks: not the All-to-Alls, not the two-rank rings, not unshaped rows
    assert set(map(tuple, coll.loc[one_way, ["kind", "group", "rate_bits"]].drop_duplicates().values.tolist())) == {
        ("all_reduce", "world", 150e6), ("all_reduce", "world", 400e6)}
    assert one_way.sum() == 8
    joint = fit_network(coll, nic_efficiency="joint")
    # pure-rate links in the joint fit: the All-to-Alls' 1/(1+b) loss pulls the efficiency far below 0.9
    assert joint.links["nic"].efficiency < 0.82
    assert joint.efficiency_from == {"rows": "joint"}
    ow = fit_network(coll)        # the default
    assert ow.links["nic"].efficiency == pytest.approx(0.9, rel=0.01)
    assert ow.efficiency_from["rows"] == "one-way" and ow.efficiency_from["rows_used"] == 4   # the 4 MiB rings
    assert ow.efficiency_from["joint_efficiency"] == pytest.approx(joint.links["nic"].efficiency, rel=1e-9)
    assert ow.residuals["network_one_way_rows"]["max_error"] < 0.02
    # everything else is the joint fit's
    assert ow.latency_per_message_s == joint.latency_per_message_s
    assert ow.links["stack"].max_bandwidth == joint.links["stack"].max_bandwidth


def test_one_way_efficiency_needs_one_way_rows_and_a_known_choice():
    from moesim.calibrate.fit import fit_network
    from moesim.errors import MoesimError
    truth = {"nic": LinkParams(efficiency=0.9), "stack": LinkParams(efficiency=None, max_bandwidth=2e8),
             "loopback": LinkParams(efficiency=None, max_bandwidth=1e9)}
    coll = _synthetic_collectives(truth)
    a2a_only = coll[coll["kind"] == "all_to_all"]
    with pytest.raises(MoesimError, match="one-way.*none"):
        fit_network(a2a_only, nic_efficiency="one-way")
    small_rings = coll[coll["size_bytes"] < 4 << 20]
    with pytest.raises(MoesimError, match="at least 4194304 bytes"):
        fit_network(small_rings, nic_efficiency="one-way")
    with pytest.raises(MoesimError, match="joint, one-way.*'rings'"):
        fit_network(coll, nic_efficiency="rings")
    # without shaped rows there is no efficiency to fit: one-way asks for nothing
    unshaped = coll[coll["rate_bits"] == 0]
    assert fit_network(unshaped).links["nic"].efficiency is None


def test_profile_carries_the_onset_to_the_topology_and_names_a_bad_one(tmp_path):
    import yaml

    from moesim.calibrate.netmodel import apply_profile_network
    from moesim.cost.profile import load_profile
    from moesim.errors import InputFileError
    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "calibration" / "cpu-testbed.yaml").read_text())
    assert "two_way_onset_s" not in data["calibration"]["links"]["nic"]      # committed profiles: none
    data["calibration"]["links"]["nic"]["two_way_onset_s"] = 0.015
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    topo = apply_profile_network(Topology(NM.testbed_graph(4, 1, 400e6), source="t"), load_profile(good))
    assert topo.graph.graph["two_way_onset_s"] == {"nic": 0.015}
    for bad in (-0.001, 1.0, "soon"):
        data["calibration"]["links"]["nic"]["two_way_onset_s"] = bad
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(InputFileError, match=r"bad\.yaml.*calibration\.links\.nic\.two_way_onset_s"):
            load_profile(path)


@pytest.mark.parametrize("b", [0.2, 0.5])
def test_active_two_way_accounting_frees_a_flow_once_its_reverse_flow_has_ended(b):
    """A rank pair exchanging 3 MB one way and 1 MB back: by stage, the loss holds both flows until
    the stage ends (3 MB at CAP / (1 + b)); with "active" accounting the 1 MB ends at (1 + b) MB /
    CAP and the other 2 MB then move one-way at CAP. A uniform All-to-All, whose reverse flows end
    together, takes the same time either way; an unknown accounting is refused."""
    pair = C.p2p([0, 1], [1, 0], [3e6, 1e6])
    stage = _time(_topo(two_way_penalty={"nic": b}), pair)
    active = _time(_topo(two_way_penalty={"nic": b}, two_way_accounting="active"), pair)
    assert stage == pytest.approx(3e6 * (1 + b) / CAP, rel=1e-9)
    assert active == pytest.approx(1e6 * (1 + b) / CAP + 2e6 / CAP, rel=1e-9)
    a2a = C.all_to_all(list(range(4)), 4e6)
    assert _time(_topo(two_way_penalty={"nic": b}, peer_penalty={"nic": 0.1}, two_way_accounting="active"),
                 a2a) == pytest.approx(_time(_topo(two_way_penalty={"nic": b}, peer_penalty={"nic": 0.1}), a2a),
                                       rel=1e-12)
    with pytest.raises(ValueError, match="two_way_accounting"):
        FluidNetwork(_topo(two_way_accounting="sometimes"))


def test_active_two_way_accounting_drops_peers_whose_flows_have_ended():
    """Host 0 exchanges with hosts 1 and 2 as two pair stages (a pairwise All-to-All's last arriver),
    host 2's share back small: by stage host 0's link keeps the peer term for both peers to the end;
    with "active" accounting it loses it when host 2's flow ends, so the exchange ends sooner."""
    b, c = 0.3, 0.2
    colls = [("p1", C.p2p([0, 1], [1, 0], [2e6, 2e6]), 0.0), ("p2", C.p2p([0, 2], [2, 0], [2e6, 0.2e6]), 0.0)]
    stage = _run(_topo(two_way_penalty={"nic": b}, peer_penalty={"nic": c}), colls)
    active = _run(_topo(two_way_penalty={"nic": b}, peer_penalty={"nic": c}, two_way_accounting="active"), colls)
    assert max(active.values()) < 0.95 * max(stage.values())
    lp = LinkParams(efficiency=1.0, two_way_penalty=b, two_way_active=True)
    assert LinkParams.from_dict(lp.to_dict()) == lp
    topo = effective_topology(_topo(tc_rate_bits=8 * CAP), {"nic": lp})
    assert topo.graph.graph.get("two_way_accounting") == "active"


def test_a_profile_whose_two_way_active_is_not_a_flag_is_refused():
    import yaml

    from moesim.cost.profile import parse_profile
    from moesim.errors import InputFileError
    root = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((root / "calibration/cpu-testbed.yaml").read_text())
    d["calibration"]["links"]["nic"]["two_way_active"] = "yes"
    with pytest.raises(InputFileError, match=r"calibration\.links\.nic\.two_way_active' must be true or false"):
        parse_profile(d, Path("p.yaml"))
    d["calibration"]["links"]["nic"]["two_way_active"] = True
    assert parse_profile(d, Path("p.yaml")).name


@pytest.mark.parametrize("b,c", [(0.3, 0.2), (0.1, 0.4)])
def test_shared_peer_accounting_charges_c_only_for_peer_links_other_hosts_flows_cross(b, c):
    """Host 3 exchanges X with each of hosts 0-2 (a pairwise All-to-All's last arriver). Counting
    every peer link ("all") its link carries rate / (1 + b + 2c); counting only the peer links that
    other hosts' two-way flows also cross ("shared") none is, and it pays b alone. While hosts 0 and 1
    also exchange (10 X each way, still sending when host 3 is done), two of its three peer links
    are shared: 1 + b + 2c * 2/3. A uniform All-to-All among 4 hosts is the same either way."""
    X = 1e6
    late = C.p2p([3, 3, 3, 0, 1, 2], [0, 1, 2, 3, 3, 3], X)
    pens = dict(two_way_penalty={"nic": b}, peer_penalty={"nic": c})
    assert _time(_topo(**pens), late) == pytest.approx(3 * X * (1 + b + 2 * c) / CAP, rel=1e-9)
    assert _time(_topo(**pens, peer_accounting="shared"), late) == pytest.approx(3 * X * (1 + b) / CAP, rel=1e-9)
    colls = [("late", late, 0.0), ("pair", C.p2p([0, 1], [1, 0], 10 * X), 0.0)]
    assert _run(_topo(**pens), colls)["late"] == pytest.approx(3 * X * (1 + b + 2 * c) / CAP, rel=1e-9)
    assert _run(_topo(**pens, peer_accounting="shared"), colls)["late"] == pytest.approx(
        3 * X * (1 + b + 2 * c * 2 / 3) / CAP, rel=1e-9)
    a2a = C.all_to_all(list(range(4)), 4 * X)
    assert _time(_topo(**pens, peer_accounting="shared"), a2a) == pytest.approx(_time(_topo(**pens), a2a), rel=1e-12)
    with pytest.raises(ValueError, match="peer_accounting"):
        FluidNetwork(_topo(**pens, peer_accounting="some"))
    # the link parameters carry it to the topology, only with a peer term to scale
    lp = LinkParams(efficiency=1.0, two_way_penalty=b, peer_penalty=c, peer_shared=True)
    assert LinkParams.from_dict(lp.to_dict()) == lp
    assert effective_topology(_topo(tc_rate_bits=8 * CAP), {"nic": lp}).graph.graph.get("peer_accounting") == "shared"
    no_c = replace(lp, peer_penalty=0.0)
    assert "peer_accounting" not in effective_topology(_topo(tc_rate_bits=8 * CAP), {"nic": no_c}).graph.graph


def test_a_profile_whose_peer_shared_is_not_a_flag_is_refused():
    import yaml

    from moesim.cost.profile import parse_profile
    from moesim.errors import InputFileError
    root = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((root / "calibration/cpu-testbed.yaml").read_text())
    d["calibration"]["links"]["nic"]["peer_shared"] = 1
    with pytest.raises(InputFileError, match=r"calibration\.links\.nic\.peer_shared' must be true or false"):
        parse_profile(d, Path("p.yaml"))
