"""A two-way loss that depends on the tc rate: b and c hold at a reference rate R0 and scale by
(R / R0) ** -γ (``calibration.links.nic.two_way_rate_exponent``; closed-form checks, the profile's
field checks, and the in-situ fit finding a known γ again)."""
import copy
from pathlib import Path

import pytest
import yaml

from moesim.calibrate import netmodel as NM
from moesim.calibrate.netmodel import LinkParams, effective_topology
from moesim.errors import InputFileError, MoesimError
from moesim.network import FluidNetwork, NetworkParams
from moesim.network import collectives as C
from moesim.topology.model import Topology

ROOT = Path(__file__).resolve().parents[1]
R150, R400 = 150e6 / 8, 400e6 / 8          # bytes/s


def _links(b=0.3, c=0.1, gamma=1.0, ref=R150) -> dict:
    return {"nic": LinkParams(efficiency=0.9, latency_s=0.0, two_way_penalty=b, peer_penalty=c,
                              two_way_rate_exponent=gamma, two_way_reference_rate=ref)}


def _testbed(hosts: int, rate_bits: float) -> Topology:
    return Topology(NM.testbed_graph(hosts, 1, rate_bits), source="t")


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, -0.5])
def test_b_and_c_scale_with_the_rate_from_the_reference(gamma):
    for rate_bits, rate in ((150e6, R150), (400e6, R400)):
        g = effective_topology(_testbed(4, rate_bits), _links(gamma=gamma)).graph.graph
        factor = (rate / R150) ** -gamma
        assert g["two_way_penalty"]["nic"] == pytest.approx(0.3 * factor, rel=1e-12)
        assert g["peer_penalty"]["nic"] == pytest.approx(0.1 * factor, rel=1e-12)
    # at the reference rate the loss is b and c as written, whatever γ
    at_ref = effective_topology(_testbed(2, 150e6), _links(gamma=gamma)).graph.graph
    assert at_ref["two_way_penalty"]["nic"] == pytest.approx(0.3)
    # unshaped links carry no loss at all
    assert "two_way_penalty" not in effective_topology(_testbed(4, None), _links(gamma=gamma)).graph.graph


def test_an_all_to_all_at_the_higher_rate_loses_the_scaled_fraction():
    """4 hosts, one rank each: every host link exchanges with 3 peer hosts, so it carries
    efficiency x rate / (1 + b' + 2 c') with b', c' the loss at that rate."""
    nbytes = 4e6
    for rate_bits, rate in ((150e6, R150), (400e6, R400)):
        topo = effective_topology(_testbed(4, rate_bits), _links(gamma=1.0))
        for _, _, a in topo.graph.edges(data=True):
            a["latency"] = 0.0
            if a["link_class"] != "nic":
                a["bandwidth"] = 1e15
        net = FluidNetwork(topo, NetworkParams(0.0, 0.0))
        net.start(C.all_to_all(list(range(4)), 4 * nbytes, topo, algorithm="direct"), "a", 0.0)
        net.run_until_idle()
        f = R150 / rate
        per_link = 3 * nbytes                     # each rank's 4 nbytes go a quarter to each rank, 3 off host
        expected = per_link * (1 + 0.3 * f + 2 * 0.1 * f) / (0.9 * rate)
        assert net.timings["a"].end_s == pytest.approx(expected, rel=1e-9)


def test_a_rate_dependent_loss_needs_one_rate_per_class_and_a_reference():
    g = NM.testbed_graph(4, 1, 150e6)
    del g.graph["tc_rate_bits"]                            # not a testbed: a link's rate is its bandwidth
    u, v = next((u, v) for u, v, a in g.edges(data=True) if a["link_class"] == "nic")
    g.edges[u, v]["bandwidth"] = R400                      # one host link at another rate
    with pytest.raises(MoesimError, match="one tc rate per class"):
        effective_topology(Topology(g, source="t"), _links())
    assert "two_way_penalty" in effective_topology(Topology(g, source="t"), _links(gamma=0.0)).graph.graph
    with pytest.raises(MoesimError, match="two_way_reference_rate"):
        effective_topology(_testbed(4, 150e6), _links(ref=0.0))


def test_link_params_round_trip_and_profile_fields_are_checked(tmp_path):
    from moesim.calibrate.netmodel import apply_profile_network
    from moesim.cost.profile import load_profile
    lp = _links()["nic"]
    assert LinkParams.from_dict(lp.to_dict()) == lp
    assert "two_way_rate_exponent" not in LinkParams(two_way_penalty=0.2).to_dict()
    data = yaml.safe_load((ROOT / "calibration" / "cpu-testbed.yaml").read_text())
    nic = data["calibration"]["links"]["nic"]
    assert "two_way_rate_exponent" not in nic                     # committed profiles: one loss per rate
    nic.update(two_way_rate_exponent=1.0, two_way_reference_rate=R150)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    topo = apply_profile_network(_testbed(4, 400e6), load_profile(good))
    assert topo.graph.graph["two_way_penalty"]["nic"] == pytest.approx(nic["two_way_penalty"] * R150 / R400)
    for fields, msg in (({"two_way_rate_exponent": "fast"}, r"two_way_rate_exponent' must be a number"),
                        ({"two_way_rate_exponent": float("nan")}, r"two_way_rate_exponent' must be finite"),
                        ({"two_way_reference_rate": -1.0}, r"two_way_reference_rate' must be positive"),
                        ({"two_way_reference_rate": None}, r"two_way_reference_rate' \(bytes/s\) is required")):
        bad = copy.deepcopy(data)
        bad["calibration"]["links"]["nic"].update(fields)
        if fields.get("two_way_reference_rate", 0) is None:
            del bad["calibration"]["links"]["nic"]["two_way_reference_rate"]
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(InputFileError, match=r"bad\.yaml.*calibration\.links\.nic\." + msg):
            load_profile(path)


def test_insitu_fit_finds_a_known_rate_exponent(tmp_path):
    """Fit runs at 150 and 400 Mbit/s whose step times are the simulator's own with shared cores and
    a two-way loss b = 0.3 at 150 Mbit/s falling with γ = 1: the fit scans γ, finds 1 and writes it
    with its reference rate; with γ held at 0 the same runs fit worse."""
    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.calibrate.release import release_spread
    from test_insitu_effects import OLD_DEFAULT, _fixed_share, _synthetic_runs
    patterns = sorted((ROOT / "calibration" / "patterns").glob("release-*.csv"))
    base = _fixed_share(yaml.safe_load((OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml").read_text()))
    base["calibration"]["links"]["nic"]["release_spread"] = release_spread(patterns).spread

    def truth(run):
        run.two_way_reference_rate = R150
        return run.step(base, 0.005, 0.3, 0.0, 0.0, rate_exponent=1.0, cpu_pool=True, pool_cores=2.0,
                        alone_factor=0.8, time_slice_s=0.0, pairwise_a2a=True)
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k8.csv", "4x1-400mbit-cdac-k8.csv"), truth)

    def fit(grid):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,), time_slice_s=0.0,
                          pairwise_a2a=True, pool_grids=((2.0,), (0.8,), (0.005,), (0.3,), (0.0,)),
                          rate_exponent_grid=grid).profile
    prof = fit((0.0, 0.5, 1.0, 1.5))
    nic, ins = prof["calibration"]["links"]["nic"], prof["calibration"]["insitu"]
    assert nic["two_way_rate_exponent"] == 1.0 and nic["two_way_reference_rate"] == pytest.approx(R150)
    assert ins["nic_two_way_rate"]["exponent"] == 1.0
    assert ins["residuals"]["max_error"] < 1e-9
    flat = fit((0.0,))
    assert "two_way_rate_exponent" not in flat["calibration"]["links"]["nic"]
    assert flat["calibration"]["insitu"]["residuals"]["max_error"] > 0.02
    with pytest.raises(MoesimError, match="two or more tc rates"):
        fit_insitu(Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None),
                   paths[:1], patterns=patterns, refine=0, rate_exponent_grid=(0.0, 1.0))
    with pytest.raises(MoesimError, match="needs the shared-core fit"):
        fit_insitu(Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None),
                   paths, rate_exponent_grid=(0.0, 1.0))


def test_the_campaign_records_the_rate_flag_and_refuses_it_without_the_in_situ_shared_core_fit(capsys):
    from moesim.calibrate.campaign import DEFAULT_PATTERNS, fit_command, main
    assert "--two-way-rate" in fit_command("calibration/x", "x", DEFAULT_PATTERNS, two_way_rate=True)
    assert "--two-way-rate" not in fit_command("calibration/x", "x", DEFAULT_PATTERNS)
    for extra in (["--patterns", "none"], ["--two-way", "trains"]):
        with pytest.raises(SystemExit) as exc:
            main(["--out", "/nonexistent/never-written", "--only", "calibrate", "--two-way-rate", *extra])
        assert exc.value.code == 2
        assert "--two-way-rate fits the two-way loss in situ" in capsys.readouterr().err


def test_a_least_rate_exponent_bounds_the_fit(tmp_path):
    """Fit runs whose loss grows with the rate (γ = -0.5 at b = 0.3): the fit with no bound finds it;
    bounded at 0 (``rate_exponent_min``) it stops at 0 and records the bound, and it still finds a
    γ = 1 above the bound exactly. The bound needs a grid and must leave two of its values; the
    campaign takes it as ``--two-way-rate-min`` only with ``--two-way-rate``."""
    from moesim.calibrate.campaign import DEFAULT_PATTERNS, fit_command, main
    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.calibrate.release import release_spread
    from test_insitu_effects import OLD_DEFAULT, _fixed_share, _synthetic_runs
    patterns = sorted((ROOT / "calibration" / "patterns").glob("release-*.csv"))
    base = _fixed_share(yaml.safe_load((OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml").read_text()))
    base["calibration"]["links"]["nic"]["release_spread"] = release_spread(patterns).spread

    def runs(gamma, where):
        def truth(run):
            run.two_way_reference_rate = R150
            return run.step(base, 0.005, 0.3, 0.0, 0.0, rate_exponent=gamma, cpu_pool=True, pool_cores=2.0,
                            alone_factor=0.8, time_slice_s=0.0, pairwise_a2a=True)
        where.mkdir()
        return _synthetic_runs(where, ("4x1-150mbit-cdac-k8.csv", "4x1-400mbit-cdac-k8.csv"), truth)

    def fit(paths, grid=(-0.5, 0.0, 0.5, 1.0), **kw):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=1, burst_fractions=(0.0,), time_slice_s=0.0,
                          pairwise_a2a=True, pool_grids=((2.0,), (0.8,), (0.005,), (0.3,), (0.0,)),
                          rate_exponent_grid=grid, **kw).profile
    growing = runs(-0.5, tmp_path / "growing")
    assert fit(growing)["calibration"]["links"]["nic"]["two_way_rate_exponent"] == -0.5
    bounded = fit(growing, rate_exponent_min=0.0)
    assert bounded["calibration"]["links"]["nic"].get("two_way_rate_exponent", 0.0) == 0.0   # 0: not written
    rec = bounded["calibration"]["insitu"]["nic_two_way_rate"]
    assert rec["exponent"] == 0.0 and rec["min"] == 0.0 and min(rec["grid"]) == 0.0
    assert bounded["calibration"]["insitu"]["residuals"]["max_error"] > 1e-3
    falling = fit(runs(1.0, tmp_path / "falling"), rate_exponent_min=0.0)
    assert falling["calibration"]["links"]["nic"]["two_way_rate_exponent"] == 1.0
    with pytest.raises(MoesimError, match="leaves 1 value"):
        fit(growing, rate_exponent_min=1.0)
    with pytest.raises(MoesimError, match="needs a rate exponent grid"):
        fit(growing, grid=(0.0,), rate_exponent_min=0.0)
    assert " --two-way-rate-min 0" in fit_command("x", "y", DEFAULT_PATTERNS, two_way_rate=True, two_way_rate_min=0.0)
    assert "rate-min" not in fit_command("x", "y", DEFAULT_PATTERNS, two_way_rate=True)
    with pytest.raises(SystemExit) as exc:
        main(["--out", "/nonexistent/never-written", "--only", "calibrate", "--two-way-rate-min", "0"])
    assert exc.value.code == 2
