"""Validation: the committed testbed campaign meets its targets (no torch runs: it replays the
committed tables through the simulator), a run whose times are the simulator's own comes back
exact, bad run tables fail clearly, the plot is written, and the CLI works through the entry point."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.config import load_config
from moesim.engine import SimOptions, simulate
from moesim.errors import MoesimError
from moesim.units import fmt_seconds
from moesim.validate import REAL_BACKEND_BUCKET_BYTES, validate
from moesim.workload.ops import PHASES
from test_calibration import write_table

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "calibration" / "validation"
#: the committed campaigns: (validation dir, measurements dir, the held-out pairs that miss the 10%
#: speedup target, worst speedup error allowed). The default campaign (``calibration/``) ran 3 rounds
#: of paired launches on an AVX2 machine; ``calibration/avx2-sequential/`` the same design as two
#: launches per pair, the same morning; ``calibration/avx512-1r/`` one run per configuration on an
#: AVX-512 machine; the others 3 or 5 rounds (README "Results"; the record: calibration/README.md).
CAMPAIGNS = [(CAMPAIGN, ROOT / "calibration" / "measurements", set(), 0.10),
             (ROOT / "calibration" / "avx2-sequential" / "validation",
              ROOT / "calibration" / "avx2-sequential" / "measurements", {"2x2 400Mbit k8"}, 0.21),
             (ROOT / "calibration" / "avx512-1r" / "validation", ROOT / "calibration" / "avx512-1r" / "measurements",
              {"4x1 150Mbit k8"}, 0.12),
             (ROOT / "calibration" / "avx2" / "validation", ROOT / "calibration" / "avx2" / "measurements", set(), 0.10),
             (ROOT / "calibration" / "avx2-replication" / "validation",
              ROOT / "calibration" / "avx2-replication" / "measurements",
              {"2x2 400Mbit k2", "2x2 unshaped k2"}, 0.12),
             (ROOT / "calibration" / "avx2-5r" / "validation", ROOT / "calibration" / "avx2-5r" / "measurements",
              set(), 0.10),
             (ROOT / "calibration" / "avx512" / "validation", ROOT / "calibration" / "avx512" / "measurements",
              set(), 0.10),
             (ROOT / "calibration" / "avx512-replication" / "validation",
              ROOT / "calibration" / "avx512-replication" / "measurements", set(), 0.10),
             (ROOT / "calibration" / "avx512-paired-replication" / "validation",
              ROOT / "calibration" / "avx512-paired-replication" / "measurements", set(), 0.10)]
RUN_COLUMNS = ("step", "rank", "phase", "direction", "seconds", "count", "bytes", "bytes_remote", "run_id", "host",
               "backend", "world_size", "structure", "mode", "ep", "dp")


@pytest.fixture(scope="module", params=CAMPAIGNS, ids=["default", "avx2-sequential", "avx512-1r", "avx2", "avx2-replication", "avx2-5r", "avx512", "avx512-replication",
                     "avx512-paired-replication"])
def committed(request):
    vdir, mdir, missed, worst = request.param
    return validate([vdir]), vdir, mdir, (missed, worst)


def test_committed_campaign_speedup_split(committed):
    """Every pair of every committed campaign carries its step difference split by phase group
    (moesim.validate.speedupsplit): the parts add up to the step difference on both sides, and the
    All-to-All part is the rows' dispatch and combine difference."""
    rep = committed[0]
    split = {s["label"]: s for s in rep["speedup_split"]}
    assert set(split) == {p["label"] for p in rep["pairs"]}
    rows = {r["file"]: r for r in rep["rows"]}
    for p in rep["pairs"]:
        s, c, x = split[p["label"]], rows[p["cdac_file"]], rows[p["dcca_file"]]
        for side in ("measured_s", "predicted_s"):
            parts = sum(v[side] for k, v in s.items() if isinstance(v, dict) and k != "step")
            assert parts == pytest.approx(s["step"][side], abs=1e-9)
            a2a = sum(c["phases"][ph][side] - x["phases"][ph][side] for ph in ("dispatch", "combine"))
            assert s["all_to_all"][side] == pytest.approx(a2a, abs=1e-12)
        assert s["predicted_speedup"] == pytest.approx(p["predicted_speedup"])


def test_committed_campaign_meets_targets(committed):
    rep, vdir, _, (allowed_misses, worst) = committed
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert rep["judged_on"] == "heldout" and rep["heldout"]["rows"] >= 16
    assert rep["fit"]["rows"] >= 1            # the split is real: fit runs exist and are not judged
    held_files = {r["file"] for r in manifest["runs"] if r["role"] == "heldout"}
    assert {f for r in rep["rows"] if r["role"] == "heldout" for f in r["files"]} == held_files
    # repeated runs of a configuration are one row, judged on their median
    assert sum(r["repeats"] for r in rep["rows"]) == len(manifest["runs"])
    for r in rep["rows"]:
        assert r["measured_s"] == pytest.approx(float(np.median(r["measured_runs_s"])))
    assert 0 <= rep["mape"] <= 0.10, rep["mape"]
    assert rep["max_error"] >= rep["mape"]
    held_pairs = [p for p in rep["pairs"] if p["role"] == "heldout"]
    assert len(held_pairs) >= 8
    # Known gaps (calibration/README.md "What remains"), with the tbf efficiency fitted on the one-way rings and
    # the peer loss counted on shared peer links (model AL; before it the paired default campaign missed
    # 4x1 400 Mbit/s top-2 at 14.0 %, now 8.7 %, so the default meets the target on every pair): on the
    # sequential AVX2 campaign 2x2 400 Mbit/s
    # top-8 (20.0 %, over-predicted; its DCCA rounds 2 and 3 computed
    # 1.6x slower than round 1: per-round speedups 1.59, 1.29, 1.38); on the single-run AVX-512
    # campaign 4x1 150 Mbit/s top-8 (10.9 %, under-predicted); on the AVX2 replication two top-2
    # pairs (10.4 % and 11.5 %), among them 2x2 400 Mbit/s top-2, whose rounds drifted (per-round
    # speedups 0.99, 0.89, 1.00). The six other campaigns here meet the target on every pair. Any new
    # miss fails here.
    missed = {p["label"] for p in held_pairs if p["error"] > 0.10}
    assert missed <= allowed_misses, missed
    assert rep["speedup_max_error"] <= worst, rep["speedup_max_error"]
    assert rep["targets"]["mape"] == 0.10 and rep["targets"]["speedup_error"] == 0.10
    assert rep["targets_met"] == (rep["mape"] <= 0.10 and rep["speedup_max_error"] <= 0.10)
    # the campaign covers what the issue asks for
    labels = {r["label"] for r in rep["rows"]}
    assert any(l.startswith("2x2 ") for l in labels) and any(l.startswith("4x1 ") for l in labels)
    assert len({r["rate_bits"] for r in rep["rows"]}) >= 3
    assert {r["structure"] for r in rep["rows"]} == {"cdac", "dcca"}
    assert {r["top_k"] for r in rep["rows"]} >= {2, 4, 8}
    for r in rep["rows"]:
        assert 0.1 <= r["measured_s"] <= 2.0, (r["label"], r["measured_s"])


def test_committed_profile_is_measured_with_provenance(committed):
    import yaml
    from moesim.cost import load_profile
    _, vdir, mdir, _ = committed
    manifest = json.loads((vdir / "manifest.json").read_text())
    path = (vdir / manifest["profile"]).resolve()
    prof = load_profile(path)
    assert prof.status == "measured"
    raw = yaml.safe_load(path.read_text())
    prov = raw["provenance"]
    assert {"machine", "date", "torch_version", "command", "sources"} <= set(prov)
    assert all(len(s["sha256"]) == 64 for s in prov["sources"])
    # every source table is committed and unchanged
    import hashlib
    for s in prov["sources"]:
        assert hashlib.sha256((mdir / s["file"]).read_bytes()).hexdigest() == s["sha256"], s["file"]
    assert "residuals" in raw["calibration"]


def test_in_step_byte_cost_at_the_slowest_rate_matches_the_pattern_probe(committed):
    """The in-step marginal cost of an All-to-All byte (``a2a_cost``: per testbed and structure, the
    line of All-to-All phase time against remote bytes over its three top-k configurations). CDAC
    at 150 Mbit/s, where the shaped links bind and its bytes dominate: measured, a byte moves at
    0.5-0.75 of the rate, near the two-way loss that ``real_backend.patterns`` measures for
    isolated All-to-Alls (0.62-0.79), and the model prices it within 30 %. (At 400 Mbit/s and
    unshaped the model over-prices CDAC's bytes, on 2x2 by about 30 ms a top-8 step: calibration/README.md "What
    remains".)"""
    rep = committed[0]
    cost = {c["label"]: c for c in rep["a2a_cost"]}
    assert set(cost) == {f"{t} {r} {s}" for t in ("2x2", "4x1") for r in ("150Mbit", "400Mbit", "unshaped")
                         for s in ("cdac", "dcca")}
    for label, c in cost.items():
        assert c["configurations"] == 3 and c["structure"] == label.split()[-1]
        m = c["measured"]["s_per_byte"]
        if m > 0:
            assert c["slope_ratio"] == pytest.approx(c["predicted"]["s_per_byte"] / m)
        else:   # a line through noise (the replication's 4x1 unshaped DCCA): no ratio, no rate
            assert c["slope_ratio"] is None and c["measured"]["bytes_per_s"] is None
        if label.endswith("150Mbit cdac"):
            goodput = c["measured"]["bytes_per_s"] / (150e6 / 8)
            assert 0.5 <= goodput <= 0.75, (label, goodput)
            assert 0.7 <= c["slope_ratio"] <= 1.3, (label, c["slope_ratio"])


def test_in_step_goodput_floor_on_shaped_4x1_runs(committed):
    """The least mean rate of a shaped host link over its rank's All-to-All phases (``goodput_floor``,
    4x1 only: one rank per host). calibration/README.md "What remains" (6), on every committed campaign: CDAC's
    links ran slower at top-8 than at top-2 at 150 Mbit/s (longer transfers lose more), slower than
    the model has them there, and faster than the model has them at 400 Mbit/s top-4 and top-8."""
    rep = committed[0]
    floor = {g["label"]: g for g in rep["a2a_goodput_floor"]}
    assert set(floor) == {f"4x1 {r} {s} k{k}" for r in ("150Mbit", "400Mbit") for s in ("cdac", "dcca")
                          for k in (2, 4, 8)}
    for g in floor.values():
        assert 0.05 < g["measured"] < 1.0 and 0.05 < g["predicted"] < 1.0, g
    cdac = {f"{r} k{k}": floor[f"4x1 {r} cdac k{k}"] for r, k in (("150Mbit", 2), ("150Mbit", 8), ("400Mbit", 4),
                                                                   ("400Mbit", 8))}
    assert cdac["150Mbit k8"]["measured"] < cdac["150Mbit k2"]["measured"]
    assert cdac["150Mbit k8"]["measured"] < cdac["150Mbit k8"]["predicted"]
    for k in ("400Mbit k4", "400Mbit k8"):      # 0.034-0.28 above (the least: the paired default campaign,
        assert cdac[k]["measured"] > cdac[k]["predicted"] + 0.025, (k, cdac[k])   # 0.045 before model AL)


def test_all_to_all_bytes_move_inside_the_waiting(committed):
    """``a2a_overlap`` on every committed campaign (calibration/README.md "The bytes move inside the
    waiting"): the measured All-to-All phases of all 36 configurations, both structures and every
    top-k, fit one floor of 55-120 ms per rank-step with each testbed's bytes inside it (max form)
    at a MAPE under 8 %, at most 0.6 of the additive form's (which needs goodputs above the tc rate);
    the engine's own phases are further off than the max form."""
    fit = committed[0]["a2a_overlap"]
    over, add = fit["overlapping"], fit["additive"]
    assert fit["rows"] == 36
    assert 0.055 <= over["floor_s"] <= 0.12, over["floor_s"]
    assert over["mape"] < 0.08 and over["mape"] < 0.6 * add["mape"], (over["mape"], add["mape"])
    assert fit["engine"]["mape"] > over["mape"]
    shaped = [t["rate_fraction"] for t in over["testbeds"] if t["rate_bits"]]
    assert len(shaped) == 4 and all(0.5 < f < 0.9 for f in shaped), shaped


def test_round_spread_closed_form_and_on_committed_campaigns(committed):
    """``speedup_round_spread``: relative sd of a held-out pair's per-round speedups (ddof 1), median
    and max over pairs, and sd / sqrt(rounds); fit pairs and single-round pairs do not count."""
    from moesim.validate.core import round_spread
    pairs = [{"role": "heldout", "measured_speedup_runs": [1.0, 1.2]},          # sd 0.1414 / 1.1
             {"role": "heldout", "measured_speedup_runs": [2.0, 2.0, 2.0]},     # 0
             {"role": "heldout", "measured_speedup_runs": [3.0]},               # one round: left out
             {"role": "fit", "measured_speedup_runs": [1.0, 5.0]}]
    got = round_spread(pairs)
    first = (0.2 / 2 ** 0.5) / 1.1
    assert got["pairs"] == 2 and got["rounds"] == 3 and got["max_sd"] == pytest.approx(first)
    assert got["median_sd"] == pytest.approx(first / 2)
    assert got["median_sd_of_mean"] == pytest.approx((first / 2 ** 0.5) / 2)
    assert round_spread(pairs[2:]) is None
    # the committed campaigns (calibration/README.md "What remains"): single-round has none; the others move by a
    # median 1.9-6 % from round to round (the paired AVX-512 replication 1.9 %, the rest 2.5 % or more),
    # 1.1-2.6 % for their 3- or 5-round estimates
    rep = committed[0]
    spread = rep["speedup_round_spread"]
    if committed[1].parent.name == "avx512-1r":
        assert spread is None
    else:
        assert spread["pairs"] == 12 and spread["rounds"] in (3, 5)
        assert 0.018 <= spread["median_sd"] <= 0.06 and 0.010 <= spread["median_sd_of_mean"] <= 0.026


def test_goodput_floor_closed_form():
    """8 x remote bytes / (dispatch + combine) / rate, measured and predicted; only shaped testbeds with
    one rank per host and byte counts."""
    from moesim.validate.a2acost import goodput_floor

    def row(rph, rate, nbytes, meas, pred):
        return {"label": "x", "role": "fit", "structure": "cdac", "top_k": 4, "hosts": 4, "ranks_per_host": rph,
                "rate_bits": rate, "a2a_remote_bytes": nbytes,
                "phases": {"dispatch": {"measured_s": meas / 4, "predicted_s": pred / 2},
                           "combine": {"measured_s": 3 * meas / 4, "predicted_s": pred / 2},
                           "attention": {"measured_s": 9.0, "predicted_s": 9.0}}}
    (g,) = goodput_floor([row(1, 100e6, 5e6, 0.5, 0.8), row(2, 100e6, 5e6, 0.5, 0.8), row(1, 0.0, 5e6, 0.5, 0.8),
                          row(1, 100e6, None, 0.5, 0.8)])
    assert g["measured"] == pytest.approx(0.8) and g["predicted"] == pytest.approx(0.5)
    assert g["remote_bytes"] == 5e6 and g["rate_bits"] == 100e6


def test_a2a_cost_recovers_a_known_line():
    """Closed form: phase times exactly on a line in the remote bytes give back its intercept and
    slope; testbeds with fewer than 3 configurations, or rows without byte counts, are left out."""
    import pandas as pd
    from moesim.validate.a2acost import a2a_cost, remote_bytes_per_step

    def row(hosts, nbytes, meas, pred):
        return {"hosts": hosts, "ranks_per_host": 1, "rate_bits": 0.0, "structure": "cdac", "a2a_remote_bytes": nbytes,
                "phases": {"dispatch": {"measured_s": meas / 2, "predicted_s": pred / 2},
                           "combine": {"measured_s": meas / 2, "predicted_s": pred / 2}}}
    rows = [row(4, b, 0.05 + 2e-9 * b, 0.02 + 6e-9 * b) for b in (1e6, 3e6, 9e6)]
    rows += [row(2, 1e6, 0.1, 0.1), row(2, 2e6, 0.2, 0.2), row(4, None, 1.0, 1.0)]
    (c,) = a2a_cost(rows)
    assert c["label"] == "4x1 unshaped cdac" and c["configurations"] == 3
    assert c["measured"]["intercept_s"] == pytest.approx(0.05) and c["measured"]["s_per_byte"] == pytest.approx(2e-9)
    assert c["predicted"]["intercept_s"] == pytest.approx(0.02) and c["predicted"]["bytes_per_s"] == pytest.approx(1 / 6e-9)
    assert c["slope_ratio"] == pytest.approx(3.0)
    # remote bytes per rank-step: All-to-All phases only, summed per (step, rank), averaged
    df = pd.DataFrame({"step": [0, 0, 0, 1, 1, 0], "rank": [0, 0, 1, 0, 1, 0],
                       "phase": ["dispatch", "combine", "dispatch", "dispatch", "combine", "attention"],
                       "bytes_remote": [10.0, 20.0, 40.0, 50.0, 60.0, 999.0]})
    assert remote_bytes_per_step(df) == pytest.approx((30 + 40 + 50 + 60) / 4)
    assert remote_bytes_per_step(df.drop(columns="bytes_remote")) is None


def test_validate_cli_json_on_committed_campaign(moesim_exe):
    res = subprocess.run([moesim_exe, "validate", str(CAMPAIGN), "--json", "--measured-phases", "grad_allreduce"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert {"mape", "max_error", "rows"} <= set(rep)
    # the what-if re-predicts every pair; its "before" is the report's own
    cf = rep["counterfactual"]
    assert cf["phases"] == ["grad_allreduce"] and len(cf["pairs"]) == len(rep["pairs"]) == 18
    held = [p for p in rep["pairs"] if p["role"] == "heldout"]
    assert cf["heldout"]["pairs"] == len(held) == 12
    assert cf["heldout"]["within_target_before"] == sum(p["error"] <= 0.10 for p in held)
    assert [p["error_before"] for p in cf["pairs"]] == [p["error"] for p in rep["pairs"]]
    assert 0 <= rep["mape"] <= rep["max_error"] <= 1.0
    row = rep["rows"][0]
    assert {"measured_s", "predicted_s", "ape", "phases", "a2a_remote_bytes"} <= set(row)
    assert row["a2a_remote_bytes"] > 0 and len(rep["a2a_cost"]) == 12
    res = subprocess.run([moesim_exe, "validate", str(CAMPAIGN), "--a2a-cost"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "intercept + slope x remote bytes" in res.stdout and res.stdout.count("ms/MB") == 24
    floor_table = res.stdout.split("Shaped host link's least mean rate")[1].split("All-to-All phases per rank-step as "
                                                                                  "one floor")[0].splitlines()[2:]
    assert len(floor_table) == 12 and all(line.startswith("4x1 ") for line in floor_table)
    overlap = res.stdout.split("All-to-All phases per rank-step as one floor")[1].split("targets")[0].splitlines()[1:]
    assert [ln.split()[0] for ln in overlap] == ["overlapping", "additive", "the", "the"]
    assert fmt_seconds(rep["a2a_overlap"]["overlapping"]["floor_s"]) in overlap[0].split("MAPE")[0]
    # every configuration carries its rank skew, measured and simulated (shared cores, rank by rank);
    # known gap (calibration/README.md "Ranks reach an All-to-All apart"): the model spreads the ranks less than the
    # testbed does
    skews = [r["rank_skew"] for r in rep["rows"]]
    assert len(skews) == 36 and all(s and s["measured_s"] > 0 and s["predicted_s"] > 0 for s in skews)
    assert np.median([s["predicted_s"] for s in skews]) < np.median([s["measured_s"] for s in skews])
    res = subprocess.run([moesim_exe, "validate", str(CAMPAIGN), "--skew"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    table = res.stdout.split("All-to-All rank skew", 1)[1].splitlines()
    assert table[1].startswith("configuration") and table[2 + 36].startswith("median")
    for line in table[2:2 + 36]:     # configuration, skew measured, predicted, last arriver measured, predicted
        cells = line.split()[-8:]
        assert all(float(v) > 0 for v in cells[::2]) and set(cells[1::2]) <= {"s", "ms", "us"}
    # the last arriver (min over ranks per call) is at most the mean over ranks, so skew + last = mean > last
    lasts = [r["last_arriver"] for r in rep["rows"]]
    assert len(lasts) == 36 and all(x and x["measured_s"] > 0 and x["predicted_s"] > 0 for x in lasts)
    row = next(r for r in rep["rows"] if r["label"].startswith("4x1 unshaped dcca k4"))
    from moesim.calibrate.skew import measured_last_arriver
    from moesim.calibrate.tables import read_table
    assert row["last_arriver"]["measured_s"] == pytest.approx(float(np.median(
        [measured_last_arriver(read_table(CAMPAIGN / f, expect="run").df) for f in row["files"]])))
    # per phase and direction: last arriver <= mean <= first arriver, measured and predicted
    assert set(row["call_times"]) == {"dispatch/fwd", "dispatch/bwd", "combine/fwd", "combine/bwd"}
    for side in ("measured", "predicted"):
        for t in row["call_times"].values():
            assert 0 < t[side]["last"] <= t[side]["mean"] <= t[side]["first"]
    by_phase = res.stdout.split("time per All-to-All call by phase", 1)[1].splitlines()[2:6]
    assert [line.split()[0] for line in by_phase] == ["combine/bwd", "combine/fwd", "dispatch/bwd", "dispatch/fwd"]


def test_what_if_replaces_phases_in_closed_form():
    """Each structure's step with the named phases' predicted times swapped for the measured ones."""
    from moesim.validate.counterfactual import with_measured_phases

    def row(f, label, pred, phases):
        return {"file": f, "label": label, "predicted_s": pred,
                "phases": {ph: {"measured_s": m, "predicted_s": p} for ph, (m, p) in phases.items()}}
    rows = [row("c.csv", "4x1 150Mbit cdac k2", 1.0, {"dispatch": (0.2, 0.4), "grad_allreduce": (0.5, 0.4)}),
            row("d.csv", "4x1 150Mbit dcca k2", 0.8, {"dispatch": (0.1, 0.1), "grad_allreduce": (0.6, 0.5)})]
    pair = {"label": "4x1 150Mbit k2", "role": "heldout", "cdac_file": "c.csv", "dcca_file": "d.csv",
            "measured_speedup": 1.1, "predicted_speedup": 1.25, "error": 0.15 / 1.1}
    rep = {"rows": rows, "pairs": [pair], "targets": {"speedup_error": 0.10}}
    cf = with_measured_phases(rep, ["grad_allreduce"])
    (p,) = cf["pairs"]
    assert p["predicted_speedup"] == pytest.approx(1.1 / 0.9)           # (1.0 + 0.1) / (0.8 + 0.1)
    assert p["signed_error"] == pytest.approx((1.1 / 0.9 - 1.1) / 1.1)
    assert cf["heldout"] == pytest.approx({"pairs": 1, "within_target_before": 0, "within_target": 0, "target": 0.10,
                                          "mean_error": p["error"], "mean_signed_error": p["signed_error"]})
    both = with_measured_phases(rep, ["dispatch", "grad_allreduce"])["pairs"][0]
    assert both["predicted_speedup"] == pytest.approx(0.9 / 0.9) and both["error"] == pytest.approx(0.1 / 1.1)
    assert with_measured_phases(rep, ["embedding"])["pairs"][0]["predicted_speedup"] == pytest.approx(1.25)
    with pytest.raises(MoesimError, match="unknown phase.*allreduce"):
        with_measured_phases(rep, ["allreduce"])
    alone = with_measured_phases({"rows": rows[:1], "pairs": []}, ["grad_allreduce"])   # no pair to judge
    assert alone["pairs"] == [] and alone["heldout"]["pairs"] == 0 and alone["heldout"]["mean_error"] is None


def test_what_if_unknown_phase_fails_before_simulating(moesim_exe):
    res = subprocess.run([moesim_exe, "validate", str(CAMPAIGN), "--measured-phases", "grad_allreduce,bogus"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "bogus" in res.stderr and "grad_allreduce" in res.stderr
    assert res.stdout == ""


def _run_table(path: Path, cfg_over: list, step_s: float, phases, hosts=2, rph=2, rate=100e6) -> Path:
    """A run table of 3 steps on 4 ranks; ``phases``: {phase: s} for every rank, or a function of
    the rank giving them."""
    cfg = load_config(str(ROOT / "real_backend/configs/small-gpt.yaml"), cfg_over)
    rows = []
    for step in range(3):
        for rank in range(4):
            for ph, sec in (phases(rank) if callable(phases) else phases).items():
                rows.append({"step": step, "rank": rank, "phase": ph, "direction": "fwd", "seconds": sec, "count": 1})
            rows.append({"step": step, "rank": rank, "phase": "step", "direction": "none", "seconds": step_s,
                         "count": 1})
    meta = {"kind": "run", "world_size": 4, "config": cfg.to_dict(),
            "testbed": {"hosts": hosts, "ranks_per_host": rph, "rate_bits": rate}}
    return write_table(path, rows, meta, RUN_COLUMNS, kind="run")


def test_simulated_run_validates_exactly(tmp_path, capsys):
    """A table holding the simulator's own step and phase times has zero error (plumbing check:
    config and testbed from the meta, topology generated, measured medians)."""
    from moesim.calibrate.netmodel import testbed_graph
    from moesim.topology import Topology
    over = ["moe.top_k=4"]
    cfg = load_config(str(ROOT / "real_backend/configs/small-gpt.yaml"), over)
    topo = Topology(testbed_graph(2, 2, 100e6))
    res = simulate(cfg, topo, "h100-sxm", SimOptions(bucket_bytes=REAL_BACKEND_BUCKET_BYTES))
    phases = {k: v for k, v in res.mean_breakdown_s.items() if v > 0}
    p = _run_table(tmp_path / "sim.csv", over, res.step_time_s, phases)
    rep = validate([p], profile="h100-sxm")
    row = rep["rows"][0]
    assert row["ape"] < 1e-9 and rep["mape"] < 1e-9
    for ph in phases:
        assert row["phases"][ph]["predicted_s"] == pytest.approx(row["phases"][ph]["measured_s"], rel=1e-9)
    assert set(row["phases"]) <= set(PHASES)
    assert row["rank_skew"] is None          # no shared cores simulated rank by rank: no skew to compare
    # a CDAC/DCCA pair gives a speedup; the text output has the table, and a plot is written
    res2 = simulate(load_config(str(ROOT / "real_backend/configs/small-gpt.yaml"), over + ["moe.structure=dcca"]),
                    topo, "h100-sxm", SimOptions(bucket_bytes=REAL_BACKEND_BUCKET_BYTES))
    q = _run_table(tmp_path / "sim2.csv", over + ["moe.structure=dcca"], res2.step_time_s, {"experts": 0.01})
    html = tmp_path / "v.html"
    assert main(["validate", str(p), str(q), "--profile", "h100-sxm", "--plot", str(html)]) == 0
    out = capsys.readouterr().out
    assert "MAPE" in out and "speedup" in out and "2x2 100Mbit cdac k4" in out
    assert html.read_text().count("plotly") > 2


def test_bad_run_table_fails_clearly(tmp_path, capsys):
    p = _run_table(tmp_path / "bad.csv", [], 0.5, {"experts": 0.1})
    text = p.read_text().replace(",0.5,", ",-0.5,", 1)
    p.write_text(text)
    assert main(["validate", str(p), "--profile", "h100-sxm"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'seconds'" in err and "negative" in err
    assert main(["validate", str(tmp_path / "missing.csv"), "--profile", "h100-sxm"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["validate", str(p)]) == 2       # no profile and no manifest
    assert "--profile" in capsys.readouterr().err


def test_repeated_runs_are_one_configuration_judged_on_their_median(tmp_path, capsys):
    """Three runs of one configuration (and two of its DCCA twin) form one row each: measured is
    the median over runs, the speedup is the ratio of medians with the per-round ratios beside it;
    a configuration whose runs disagree on their role is refused."""
    over = ["moe.top_k=4"]
    dcca = over + ["moe.structure=dcca"]
    c = [_run_table(tmp_path / f"c-r{i}.csv", over, s, {"experts": 0.1}) for i, s in enumerate((0.5, 0.8, 0.6))]
    d = [_run_table(tmp_path / f"d-r{i}.csv", dcca, s, {"experts": 0.1}) for i, s in enumerate((0.4, 0.2))]
    rep = validate([*c, *d], profile="h100-sxm")
    assert len(rep["rows"]) == 2
    rc, rd = rep["rows"]
    assert rc["repeats"] == 3 and rc["files"] == ["c-r0.csv", "c-r1.csv", "c-r2.csv"]
    assert rc["measured_s"] == pytest.approx(0.6) and rc["measured_runs_s"] == pytest.approx([0.5, 0.8, 0.6])
    assert rc["measured_spread"] == pytest.approx(0.3 / 0.6)
    assert rd["measured_s"] == pytest.approx(0.3)                     # median of two = their mean
    assert rc["ape"] == pytest.approx(abs(rc["predicted_s"] - 0.6) / 0.6)
    pair = rep["pairs"][0]
    assert pair["measured_speedup"] == pytest.approx(2.0)
    assert pair["measured_speedup_runs"] == pytest.approx([0.5 / 0.4, 0.8 / 0.2])
    # the simulation is the same for every run of a configuration: one row per configuration
    single = validate([c[0]], profile="h100-sxm")["rows"][0]
    assert single["predicted_s"] == pytest.approx(rc["predicted_s"])
    html = tmp_path / "rounds.html"
    assert main(["validate", *map(str, c), *map(str, d), "--profile", "h100-sxm", "--plot", str(html)]) == 0
    out = capsys.readouterr().out
    assert "2 configuration(s), 5 run(s)" in out and "median" in out and "1.25 4.00" in out
    assert "measured, per round" in html.read_text()
    # mixed roles in one configuration
    vdir = tmp_path / "camp"
    vdir.mkdir()
    for f in c[:2]:
        (vdir / f.name).write_text(f.read_text())
    (vdir / "manifest.json").write_text(json.dumps({"profile": "h100-sxm", "runs": [
        {"file": "c-r0.csv", "role": "fit"}, {"file": "c-r1.csv", "role": "heldout"}]}))
    assert main(["validate", str(vdir), "--profile", "h100-sxm"]) == 2
    err = capsys.readouterr().err
    assert "different roles" in err and "c-r0.csv: fit" in err


def test_phases_compare_like_for_like_when_ranks_differ(tmp_path):
    """Skewed (zipf) routing makes every rank its own class, with its own expert time and waits. A
    table giving each rank its simulated phases is measured as the mean over ranks, and validation
    predicts that same mean (not the critical rank's phases), so every phase matches exactly."""
    from moesim.calibrate.netmodel import testbed_graph
    from moesim.topology import Topology
    over = ["moe.top_k=4", "moe.routing=zipf", "moe.zipf_exponent=1.5"]
    cfg = load_config(str(ROOT / "real_backend/configs/small-gpt.yaml"), over)
    res = simulate(cfg, Topology(testbed_graph(2, 2, 100e6)), "h100-sxm",
                   SimOptions(bucket_bytes=REAL_BACKEND_BUCKET_BYTES))
    assert len(res.classes.members) == 4
    per_rank = {}
    for spans, members in zip(res.class_spans, res.classes.members):
        d: dict = {}
        for sp in spans:
            d[sp.phase] = d.get(sp.phase, 0.0) + (sp.end - sp.start)
        per_rank.update({int(r): d for r in members})
    assert per_rank[res.critical_rank]["experts"] != pytest.approx(res.mean_breakdown_s["experts"], rel=1e-3)
    p = _run_table(tmp_path / "zipf.csv", over, res.step_time_s, lambda rank: per_rank[rank])
    row = validate([p], profile="h100-sxm", measured_traffic=False)["rows"][0]
    for ph in ("experts", "dispatch", "combine", "grad_allreduce"):
        assert row["phases"][ph]["predicted_s"] == pytest.approx(row["phases"][ph]["measured_s"], rel=1e-9)
