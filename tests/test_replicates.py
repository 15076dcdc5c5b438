"""The replicate floor (moesim.validate.replicates): each held-out pair predicted by the other campaigns
of its machine class, with no model."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import MoesimError
from moesim.validate.replicates import machine_class, replicate_floor
from test_validation import ROOT


def _pair(label, workload, measured, role="heldout"):
    return {"label": label, "workload": workload, "role": role, "measured_speedup": measured}


def _report(pairs, target=None):
    rep = {"pairs": pairs}
    if target is not None:
        rep["targets"] = {"speedup_error": target}
    return rep


def test_replicate_floor_closed_form():
    """Three campaigns of one class measured w at 1.0, 1.44 and 1.0: the first and last are predicted by
    sqrt(1.44 * 1.0) = 1.2 (+20 %), the middle one by 1.0 (1 / 1.44 - 1). A configuration no other
    campaign of the class measured, a campaign of another class and one of no class get no prediction."""
    a1 = _report([_pair("w", "w", 1.0), _pair("only here", "v", 3.0), _pair("fit", "f", 1.1, role="fit")])
    a2 = _report([_pair("w", "w", 1.44), _pair("fit", "f", 1.21, role="fit")])
    a3 = _report([_pair("w", "w", 1.0)], target=0.25)
    b = _report([_pair("w", "w", 5.0)])
    none = _report([_pair("w", "w", 1.0)])
    floor = replicate_floor([("a1", "A", a1), ("a2", "A", a2), ("a3", "A", a3), ("b", "B", b), ("n", None, none)])
    by = {c["name"]: c for c in floor["campaigns"]}
    assert by["a1"]["pairs"] == 1 and by["a1"]["peers"] == ["a2", "a3"]
    assert by["a1"]["mean_signed_error"] == pytest.approx(0.2)
    assert by["a2"]["mean_signed_error"] == pytest.approx(1 / 1.44 - 1)
    # each campaign's own target: a3's 25 % takes in its +20 %, the default 10 % does not
    assert (by["a1"]["within_target"], by["a2"]["within_target"], by["a3"]["within_target"]) == (0, 0, 1)
    assert by["a3"]["target"] == 0.25 and by["a1"]["target"] == 0.10
    assert by["b"]["pairs"] == by["n"]["pairs"] == 0 and by["b"]["mean_error"] is None
    assert floor["total"]["pairs"] == 3 and floor["total"]["within_target"] == 1
    assert floor["total"]["max_error"] == pytest.approx(1 - 1 / 1.44)
    p = next(x for x in floor["pairs"] if x["campaign"] == "a2")
    assert p["peers"] == {"a1": 1.0, "a3": 1.0} and p["replicate_speedup"] == pytest.approx(1.0)
    json.dumps(floor)


speedups = st.floats(min_value=0.3, max_value=4.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(s1=speedups, s2=speedups, same=speedups, n=st.integers(min_value=2, max_value=5))
def test_replicate_floor_properties(s1, s2, same, n):
    """Two replicates predict each other reciprocally, (1 + e1)(1 + e2) = 1; replicates that agree have
    no replicate error at all."""
    floor = replicate_floor([("x", "A", _report([_pair("w", "w", s1)])), ("y", "A", _report([_pair("w", "w", s2)]))])
    e1, e2 = (c["mean_signed_error"] for c in floor["campaigns"])
    assert (1 + e1) * (1 + e2) == pytest.approx(1.0, rel=1e-12)
    agree = replicate_floor([(str(i), "A", _report([_pair("w", "w", same)])) for i in range(n)])
    assert agree["total"]["pairs"] == n and agree["total"]["within_target"] == n
    assert agree["total"]["max_error"] == pytest.approx(0.0, abs=1e-12)


def test_replicate_floor_needs_workload_ids():
    old = {"pairs": [{"label": "w", "role": "heldout", "measured_speedup": 1.0}]}
    with pytest.raises(MoesimError, match="old: its report's pairs carry no 'workload'"):
        replicate_floor([("old", "A", old), ("new", "A", _report([_pair("w", "w", 1.0)]))])


def test_machine_class_of_committed_campaigns(tmp_path):
    """The manifest's machine gives the class; a campaign whose manifest predates it (the one-round
    AVX-512 campaign) takes its profile's; one whose profile gives no instruction set has none."""
    assert machine_class(ROOT / "calibration" / "validation") == "AVX2+FMA, 2 cores"
    assert machine_class(ROOT / "calibration" / "avx512" / "validation") == "AVX-512, 2 cores"
    one_round = ROOT / "calibration" / "avx512-1r" / "validation"
    assert "peak_flops_from" not in json.loads((one_round / "manifest.json").read_text())["campaign"].get("machine", {})
    assert machine_class(one_round) == "AVX-512, 2 cores"
    (tmp_path / "manifest.json").write_text(json.dumps({
        "runs": [{"file": "x.csv"}], "profile": str(ROOT / "calibration" / "h200-sxm-measured.yaml")}))
    assert machine_class(tmp_path) is None


def test_replicate_floor_printed(capsys):
    """The CLI's lines: per campaign its count, a campaign without peers said as such, the total beside
    the model's; and one line when no campaign has a peer."""
    from moesim.cli.validate_cmd import _print_replicate_floor
    floor = replicate_floor([("a1", "A", _report([_pair("w", "w", 1.0)])), ("a2", "A", _report([_pair("w", "w", 1.21)])),
                             ("b", "B", _report([_pair("w", "w", 2.0)]))])
    _print_replicate_floor(floor, {"pairs": 3, "within_target": 2, "mean_error": 0.05, "max_error": 0.12})
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert "0 of 1" in lines["a1"] and "+21.0%" in lines["a1"]          # 1.21 / 1.0 - 1: not within 10 %
    assert "0 of 1" in lines["a2"] and "-17.4%" in lines["a2"]          # 1.0 / 1.21 - 1
    assert "no other campaign of its class" in lines["b"]
    out = "\n".join(lines.values())
    assert ("replicate floor: 0 of 2 held-out pairs within target, mean error 19.18%, worst 21.0% "
            "(the model: 2 of 3, mean error 5.00%, worst 12.0%)") in out
    _print_replicate_floor(replicate_floor([("a", "A", _report([_pair("w", "w", 1.0)]))]), {"pairs": 0})
    assert capsys.readouterr().out.startswith("replicate floor: no campaign has another of its machine class")
