"""Continuous token-bucket accounting of the fluid network (``burst_accounting = "continuous"``):
closed forms where it agrees with the per-stage accounting and where it does not, and the profile
field that switches it on."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.calibrate import netmodel as NM
from moesim.calibrate.netmodel import LinkParams, apply_profile_network, effective_topology
from moesim.cost.profile import load_profile
from moesim.errors import InputFileError
from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives as C
from moesim.network.stages import Collective, FlowStage
from moesim.topology.model import Topology
from test_network_tbf import CAP, _run, _time, _topo

B = 2e5
ROOT = Path(__file__).resolve().parents[1]


def _bucket(accounting: str, **attrs) -> Topology:
    return _topo(burst_bytes={"nic": B}, burst_accounting=accounting, **attrs)


def _one_in(src: int, nbytes: float = 1e6) -> Collective:
    """Host ``src`` -> host 0: ``src``'s uplink and host 0's downlink."""
    return C.p2p([src], [0], nbytes)


@pytest.mark.parametrize("accounting", ["per_stage", "continuous"])
def test_both_accountings_agree_where_stages_do_not_overlap(accounting):
    assert _time(_bucket(accounting), _one_in(1)) == pytest.approx((1e6 - B) / CAP, rel=1e-9)
    # back to back: the first stage kept the link at its rate, so the second finds nothing
    st = [FlowStage(np.array([1]), np.array([0]), np.array([1e6])) for _ in range(2)]
    assert _time(_bucket(accounting), Collective("p2p", "direct", np.array([0, 1]), st)) == pytest.approx(
        (2e6 - B) / CAP, rel=1e-9)
    # a split-size exchange spends only its own bytes
    st = [FlowStage(np.array([1]), np.array([0]), np.array([n])) for n in (1e3, 1e6)]
    assert _time(_bucket(accounting), Collective("p2p", "direct", np.array([0, 1]), st)) == pytest.approx(
        (1e6 - (B - 1e3)) / CAP, rel=1e-6)
    # an idle gap refills CAP * gap, at most B
    first_end = (1e6 - B) / CAP
    for gap, credit in ((0.05, 0.05 * CAP), (1.0, B)):
        ends = _run(_bucket(accounting), [("a", _one_in(1), 0.0), ("b", _one_in(1), first_end + gap)])
        assert ends["b"] - (first_end + gap) == pytest.approx((1e6 - credit) / CAP, rel=1e-9)
    # a transfer starting while another keeps the shared downlink at its rate finds it empty in both
    ends = _run(_bucket(accounting), [("a", _one_in(1), 0.0), ("b", _one_in(2), 0.1)])
    assert ends["a"] == pytest.approx(1.5, rel=1e-9) and ends["b"] == pytest.approx(1.8, rel=1e-9)


def test_a_stage_that_only_waits_out_its_floor_leaves_the_bucket_to_refill():
    """Where they differ: a small exchange that waits out its receivers' floor (50 ms) holds host 0's
    downlink but sends nothing; per stage a transfer starting meanwhile gets no burst, continuously it
    finds B - 1e3 + CAP * 0.02 > B, so a full bucket."""
    p = NetworkParams(0.0, 0.0, receiver_wait_s=0.05)
    colls = [("small", _one_in(1, 1e3), 0.0), ("big", _one_in(2), 0.02)]
    cont = _run(_bucket("continuous"), colls, p)
    assert cont["small"] == pytest.approx(0.05, rel=1e-9)
    assert cont["big"] == pytest.approx(0.02 + (1e6 - B) / CAP, rel=1e-9)
    assert _run(_bucket("per_stage"), colls, p)["big"] == pytest.approx(0.02 + 1e6 / CAP, rel=1e-9)


def test_stages_that_start_together_share_the_bucket_whichever_collective_they_belong_to():
    ends = _run(_bucket("continuous"), [("a", _one_in(1), 0.0), ("b", _one_in(2), 0.0)])
    assert ends["a"] == pytest.approx((2e6 - B) / CAP, rel=1e-9)
    assert ends["b"] == pytest.approx(ends["a"], rel=1e-12)


@pytest.mark.parametrize("accounting", ["per_stage", "continuous"])
def test_a_link_slowed_by_the_two_way_loss_gains_the_tokens_it_does_not_spend(accounting):
    b = 0.1      # the exchange runs at CAP / (1 + b): the link gains CAP * b / (1 + b) per s, less than B
    ex = FlowStage(np.array([0, 1]), np.array([1, 0]), np.array([1e6, 1e6]))
    nxt = FlowStage(np.array([1]), np.array([0]), np.array([1e6]))
    coll = Collective("p2p", "direct", np.array([0, 1]), [ex, nxt])
    t1 = (1e6 - B) / (CAP / (1 + b))
    credit = CAP * b / (1 + b) * t1
    assert credit < B
    assert _time(_bucket(accounting, two_way_penalty={"nic": b}), coll) == pytest.approx(
        t1 + (1e6 - credit) / CAP, rel=1e-9)


def test_bucket_levels_never_leave_zero_to_b():
    net = FluidNetwork(_bucket("continuous"), NetworkParams(0.0, 0.0))
    rng = np.random.default_rng(3)
    t = 0.0
    for i in range(20):
        t += float(rng.uniform(0.0, 0.3))
        net.advance(t)
        src = int(rng.integers(1, 4))
        net.start(C.p2p([src], [int(rng.integers(0, src))], float(rng.uniform(1e3, 5e5))), i, t)
        assert np.all(net._bucket >= 0.0) and np.all(net._bucket <= net._burst + 1e-6)
    net.run_until_idle()
    assert len(net.timings) == 20


def test_an_unknown_accounting_is_refused():
    with pytest.raises(ValueError, match="burst_accounting"):
        FluidNetwork(_bucket("sometimes"), NetworkParams(0.0, 0.0))


def test_link_field_round_trips_and_reaches_the_topology_only_with_a_bucket():
    lp = LinkParams(efficiency=0.9, max_bandwidth=5e8, burst_s=0.005, burst_continuous=True)
    assert LinkParams.from_dict(lp.to_dict()) == lp
    assert "burst_continuous" not in replace(lp, burst_continuous=False).to_dict()
    shaped = Topology(NM.testbed_graph(4, 1, 400e6), source="t")
    assert effective_topology(shaped, {"nic": lp}).graph.graph["burst_accounting"] == "continuous"
    assert "burst_accounting" not in effective_topology(shaped, {"nic": replace(lp, burst_continuous=False)}
                                                        ).graph.graph
    assert "burst_accounting" not in effective_topology(shaped, {"nic": replace(lp, burst_s=0.0)}).graph.graph


def test_profile_field_switches_it_on_and_a_bad_value_is_named(tmp_path):
    data = yaml.safe_load((ROOT / "calibration" / "cpu-testbed.yaml").read_text())
    nic = data["calibration"]["links"]["nic"]
    assert "burst_continuous" not in nic and nic.get("burst_s", 0) > 0    # committed: per stage, with a bucket
    nic["burst_continuous"] = True
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    topo = apply_profile_network(Topology(NM.testbed_graph(4, 1, 400e6), source="t"), load_profile(good))
    assert topo.graph.graph["burst_accounting"] == "continuous"
    nic["burst_continuous"] = "yes"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InputFileError, match=r"bad\.yaml.*calibration\.links\.nic\.burst_continuous"):
        load_profile(bad)


def _profile_with(tmp_path: Path, continuous: bool):
    data = yaml.safe_load((ROOT / "calibration" / "cpu-testbed.yaml").read_text())
    data["calibration"]["links"]["nic"]["burst_continuous"] = continuous
    path = tmp_path / f"continuous-{continuous}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


def test_pairwise_all_to_alls_of_a_step_find_the_bucket_only_when_accounted_continuously(tmp_path):
    """The committed profile starts an All-to-All's rank pairs apart (pairwise); per stage, a pair that
    starts while another pair holds a link gets no burst. Continuously it gets what the link gained,
    so on shaped links dispatch and combine take less time; unshaped links have no bucket: no change."""
    from moesim.engine import simulate
    from test_shared_cores import _campaign_cfg
    per_stage, cont = _profile_with(tmp_path, False), _profile_with(tmp_path, True)
    assert per_stage.device.pairwise_a2a
    cfg = _campaign_cfg("cdac", top_k=2)
    shaped = Topology(NM.testbed_graph(4, 1, 400e6, cores=2), source="t")
    a, b = simulate(cfg, shaped, per_stage), simulate(cfg, shaped, cont)
    for phase in ("dispatch", "combine"):
        assert b.comm_by_phase()[phase]["busy_s"] < 0.9 * a.comm_by_phase()[phase]["busy_s"]
    assert b.step_time_s < a.step_time_s
    unshaped = Topology(NM.testbed_graph(4, 1, None, cores=2), source="t")
    assert simulate(cfg, unshaped, cont).step_time_s == pytest.approx(simulate(cfg, unshaped, per_stage).step_time_s,
                                                                      rel=1e-12)


def test_the_what_if_switch_equals_the_profile_field_and_the_campaign_records_it(tmp_path):
    from moesim.calibrate.campaign import DEFAULT_PATTERNS, fit_command
    from moesim.engine import SimOptions, simulate
    from moesim.validate.core import check_engine
    from test_shared_cores import _campaign_cfg
    per_stage, cont = _profile_with(tmp_path, False), _profile_with(tmp_path, True)
    cfg = _campaign_cfg("dcca", top_k=4)
    topo = Topology(NM.testbed_graph(2, 2, 150e6, cores=2), source="t")
    on, off = (simulate(cfg, topo, per_stage, SimOptions(continuous_bucket=True)),
               simulate(cfg, topo, cont, SimOptions(continuous_bucket=False)))
    assert on.step_time_s == pytest.approx(simulate(cfg, topo, cont).step_time_s, rel=1e-12)
    assert off.step_time_s == pytest.approx(simulate(cfg, topo, per_stage).step_time_s, rel=1e-12)
    assert on.step_time_s != pytest.approx(off.step_time_s, rel=1e-6)
    assert check_engine({"continuous_bucket": 1}) == {"continuous_bucket": True}
    cmd = fit_command("calibration/x", "cpu-testbed-x", DEFAULT_PATTERNS, compute_first=True, continuous_bucket=True)
    assert "--compute-first --continuous-bucket" in cmd
    assert "--continuous-bucket" not in fit_command("calibration/x", "cpu-testbed-x", DEFAULT_PATTERNS)
