"""Several campaigns judged together (``moesim validate DIR DIR ...``) and the engine what-ifs of
``moesim validate`` (``--a2a-start``, ``--time-slice``, ``--a2a-cpu``)."""
from __future__ import annotations

import json

import pytest

from moesim.cli import main
from moesim.engine import SimOptions, simulate
from moesim.errors import MoesimError
from moesim.validate import REAL_BACKEND_BUCKET_BYTES, validate
from moesim.validate.across import campaign_dirs, summarise_across, validate_across
from moesim.validate.core import check_engine, load_run, mean_copies, resolve_inputs, topology_for
from test_validation import ROOT

VAL = ROOT / "calibration" / "validation"
OTHER = ROOT / "calibration" / "avx2" / "validation"
PROFILE = ROOT / "calibration" / "cpu-testbed.yaml"


def _pair(label, measured, predicted, role="heldout"):
    return {"label": label, "role": role, "measured_speedup": measured, "predicted_speedup": predicted,
            "error": abs(predicted - measured) / measured}


def _report(name, pairs, targets=None, mape=0.05):
    rep = {"pairs": pairs, "profile": {"name": name}, "heldout": {"mape": mape, "max_error": 2 * mape}}
    if targets is not None:
        rep["targets"] = targets
    return rep


def test_summarise_across_counts_signs_and_targets():
    a = _report("a", [_pair("x", 1.0, 1.2), _pair("y", 2.0, 1.9), _pair("z", 1.0, 5.0, role="fit")])
    b = _report("b", [_pair("x", 1.0, 1.05), _pair("y", 2.0, 2.0)], targets={"speedup_error": 0.04})
    out = summarise_across([("A", a), ("B", b)])
    ca, cb = out["campaigns"]
    # fit pairs are not judged; campaign a uses the default 10 % target, b its manifest's 4 %
    assert (ca["pairs"], ca["within_target"], ca["target"]) == (2, 1, 0.10)
    assert (cb["pairs"], cb["within_target"], cb["target"]) == (2, 1, 0.04)
    assert ca["worst"] == {"label": "x", "error": pytest.approx(0.2)}
    assert ca["mean_signed_error"] == pytest.approx((0.2 - 0.05) / 2)
    assert ca["mean_error"] == pytest.approx((0.2 + 0.05) / 2)
    x, y = out["configurations"]
    assert x["label"] == "x" and x["signed_errors"] == {"A": pytest.approx(0.2), "B": pytest.approx(0.05)}
    assert (x["over"], x["under"], x["mean_signed_error"], x["max_abs_error"]) == (2, 0, pytest.approx(0.125),
                                                                                 pytest.approx(0.2))
    assert (y["over"], y["under"]) == (0, 1)             # an exact prediction is neither
    t = out["total"]
    assert (t["campaigns"], t["pairs"], t["within_target"]) == (2, 4, 2)
    assert t["mean_error"] == pytest.approx((0.2 + 0.05 + 0.05 + 0.0) / 4)
    assert t["mean_signed_error"] == pytest.approx((0.2 - 0.05 + 0.05 + 0.0) / 4)
    assert t["max_error"] == pytest.approx(0.2)
    with pytest.raises(MoesimError, match="no campaign"):
        summarise_across([])


def test_campaign_dirs_only_for_two_or_more_campaigns(tmp_path):
    assert campaign_dirs([VAL]) is None                       # one campaign: the ordinary report
    assert campaign_dirs([VAL, tmp_path]) is None              # not a campaign: run tables
    assert campaign_dirs([VAL / "2x2-150mbit-cdac-k2-r1.csv", OTHER]) is None
    assert campaign_dirs([VAL, OTHER]) == [VAL, OTHER]
    with pytest.raises(MoesimError, match="twice"):
        campaign_dirs([VAL, VAL / ".." / "validation"])


def test_engine_what_if_is_checked():
    assert check_engine(None) == {}
    assert check_engine({"pairwise_a2a": 0, "time_slice_s": "0.004"}) == {"pairwise_a2a": False, "time_slice_s": 0.004}
    with pytest.raises(MoesimError, match="unknown engine setting 'cpu'"):
        check_engine({"cpu": 1})
    with pytest.raises(MoesimError, match=r"time_slice_s must lie in \[0, 1\]"):
        check_engine({"time_slice_s": 2.0})
    assert check_engine({"a2a_cpu_s": "0.002"}) == {"a2a_cpu_s": 0.002}
    for bad in (-0.001, 1.0):
        with pytest.raises(MoesimError, match=r"a2a_cpu_s must lie in \[0, 1\)"):
            check_engine({"a2a_cpu_s": bad})
        with pytest.raises(MoesimError, match=r"release_spread must lie in \[0, 1\), got"):
            check_engine({"release_spread": bad})
    assert check_engine({"release_spread": "0.772"}) == {"release_spread": 0.772}
    assert check_engine({"a2a_cpu_overlap": 1}) == {"a2a_cpu_overlap": True}


def test_engine_what_if_simulates_with_the_override():
    """A what-if row is exactly the engine's simulation with that setting (and not the profile's)."""
    files = [VAL / "4x1-400mbit-cdac-k2-r1.csv", VAL / "4x1-400mbit-dcca-k2-r1.csv"]
    base = validate(files, profile=str(PROFILE))
    what = validate(files, profile=str(PROFILE), engine={"pairwise_a2a": False, "time_slice_s": 0.0})
    assert what["engine_what_if"] == {"pairwise_a2a": False, "time_slice_s": 0.0}
    assert "engine_what_if" not in base
    run = load_run(resolve_inputs([files[0]]).runs[0])
    topo, _ = topology_for(run.spec, run.table)
    res = simulate(run.cfg, topo, str(PROFILE), SimOptions(bucket_bytes=REAL_BACKEND_BUCKET_BYTES,
                                                           a2a_copies=mean_copies([run]), pairwise_a2a=False,
                                                           time_slice_s=0.0))
    row = next(r for r in what["rows"] if r["structure"] == "cdac")
    assert row["predicted_s"] == pytest.approx(res.step_time_s, rel=1e-12)
    before = next(r for r in base["rows"] if r["structure"] == "cdac")
    assert abs(row["predicted_s"] - before["predicted_s"]) > 1e-3 * before["predicted_s"]


def test_two_campaigns_judged_together(capsys):
    rep = validate_across([VAL, OTHER])
    assert list(rep["reports"]) == [str(VAL), str(OTHER)]
    for camp in rep["campaigns"]:
        single = rep["reports"][camp["name"]]
        held = [p for p in single["pairs"] if p["role"] == "heldout"]
        assert camp["pairs"] == len(held) == 12
        assert camp["within_target"] == sum(p["error"] <= 0.10 for p in held)
        assert camp["heldout_mape"] == single["mape"]
        for p in held:
            conf = next(c for c in rep["configurations"] if c["label"] == p["label"])
            assert conf["signed_errors"][camp["name"]] == pytest.approx(p["predicted_speedup"] / p["measured_speedup"] - 1)
    assert rep["total"]["pairs"] == 24
    assert rep["total"]["within_target"] == sum(c["within_target"] for c in rep["campaigns"])
    # both are AVX2 campaigns of the same configurations: each one's replicate prediction of a pair is
    # the other's measured speedup (moesim.validate.replicates)
    floor = rep["replicate_floor"]
    assert [c["machine_class"] for c in floor["campaigns"]] == ["AVX2+FMA, 2 cores"] * 2
    assert floor["total"]["pairs"] == 24
    measured = {name: {p["label"]: p["measured_speedup"] for p in r["pairs"]} for name, r in rep["reports"].items()}
    for p in floor["pairs"]:
        (other,) = (n for n in measured if n != p["campaign"])
        assert p["peers"] == {other: measured[other][p["label"]]}
        assert p["signed_error"] == pytest.approx(measured[other][p["label"]] / p["measured_speedup"] - 1, rel=1e-12)
    # the CLI prints the same totals, and refuses what a single campaign's report alone can do
    assert main(["validate", str(VAL), str(OTHER)]) == 0
    out = capsys.readouterr().out
    assert f"all 2 campaigns: {rep['total']['within_target']} of 24 held-out pairs within target" in out
    assert "4x1 400Mbit k2" in out and "over under" in out
    f = floor["total"]
    assert (f"replicate floor: {f['within_target']} of 24 held-out pairs within target, mean error "
            f"{100 * f['mean_error']:.2f}%") in out
    groups = {g["group"]: g for g in rep["phase_groups"]}
    assert groups["compute"]["rows"] == groups["all_to_all"]["rows"] == 48      # 24 held-out per campaign
    assert f"all_to_all mean |e| {100 * groups['all_to_all']['mean_error']:.1f}%" in out
    assert main(["validate", str(VAL), str(OTHER), "--profile", str(PROFILE)]) == 2
    assert "--profile" in capsys.readouterr().err
    assert main(["validate", str(VAL), str(OTHER), "--phases", "--skew"]) == 2
    assert "--phases, --skew: not available" in capsys.readouterr().err
    # --a2a-cost: each campaign's floor fit, as its own report has it
    assert main(["validate", str(VAL), str(OTHER), "--a2a-cost"]) == 0
    out = capsys.readouterr().out
    from moesim.units import fmt_seconds
    for name, single in rep["reports"].items():
        fit = single["a2a_overlap"]
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " ") and "%" in ln and "@" in ln)
        assert fmt_seconds(fit["overlapping"]["floor_s"]) in line and fit["overlapping"]["worst"]["label"] in line


def test_two_campaigns_json(capsys):
    assert main(["validate", str(VAL), str(OTHER), "--json", "--a2a-start", "together", "--a2a-cpu", "0.002",
                 "--release-spread", "0.5"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["total"]["pairs"] == 24 and len(rep["configurations"]) == 12
    assert all(r["engine_what_if"] == {"pairwise_a2a": False, "a2a_cpu_s": 0.002, "release_spread": 0.5}
               for r in rep["reports"].values())


def test_phase_groups_closed_form():
    """Per group the held-out rows' time in the group's phases, summed, predicted / measured - 1: a model
    that books compute slow and the All-to-Alls short shows it even where its step is right."""
    def row(role, phases):
        return {"role": role, "phases": {k: {"measured_s": m, "predicted_s": p} for k, (m, p) in phases.items()}}
    a = _report("a", [])
    a["rows"] = [row("heldout", {"attention": (0.02, 0.03), "experts": (0.01, 0.015), "dispatch": (0.04, 0.03),
                                 "combine": (0.04, 0.03), "grad_allreduce": (0.1, 0.1)}),
                 row("fit", {"attention": (0.02, 0.2)})]                      # fit rows are not judged
    b = _report("b", [])
    b["rows"] = [row("heldout", {"attention": (0.02, 0.02), "dispatch": (0.05, 0.06)})]
    groups = {g["group"]: g for g in summarise_across([("A", a), ("B", b)])["phase_groups"]}
    assert set(groups) == {"compute", "all_to_all", "grad_allreduce"}      # no row measured tp_comm
    assert groups["compute"]["rows"] == 2
    assert groups["compute"]["mean_signed_error"] == pytest.approx((0.5 + 0.0) / 2)
    assert groups["all_to_all"]["mean_signed_error"] == pytest.approx((-0.25 + 0.2) / 2)
    assert groups["all_to_all"]["mean_error"] == pytest.approx((0.25 + 0.2) / 2)
    assert groups["grad_allreduce"] == {"group": "grad_allreduce", "phases": ["grad_allreduce"], "rows": 1,
                                        "mean_error": 0.0, "mean_signed_error": 0.0}
    assert "dispatch" not in groups["compute"]["phases"] and "optimizer" in groups["compute"]["phases"]
