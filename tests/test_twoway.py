"""moesim.calibrate.twoway: the shaped links' two-way loss (b, c) fitted on a size sweep of isolated
All-to-Alls. Closed form: sweeps made by the simulator at known (b, c) give them back; c needs both
two-host and bigger testbeds; bad tables fail naming the file; the committed sweep shows what the
calibration/README.md says of it; the campaign records and checks its flag."""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.calibrate import campaign
from moesim.calibrate.netmodel import LinkParams
from moesim.calibrate.twoway import (SIZE_SWEEP_PATTERNS, TRAIN_PATTERNS, fit_two_way, main, onset_scan, predict,
                                     read_size_sweep)
from moesim.errors import InputFileError, MoesimError

ROOT = Path(__file__).resolve().parents[1]
OLD_DEFAULT = ROOT / "calibration" / "avx512-1r"   # the default campaign until 2026-12-03

LINKS = {"nic": LinkParams(efficiency=0.95, latency_s=1.5e-4),
         "stack": LinkParams(max_bandwidth=5e8), "loopback": LinkParams(max_bandwidth=1.5e9)}
LAT, BURST = 1.7e-4, 0.005
SWEEP = sorted(glob.glob(SIZE_SWEEP_PATTERNS))


def _synthetic(b: float, c: float, layouts=((2, 2), (4, 1))) -> pd.DataFrame:
    rows = [{"hosts": h, "ranks_per_host": r, "rate_bits": rate, "bytes_per_pair": n, "file": f"{h}x{r}-{rate:g}-{n}"}
            for h, r in layouts for rate in (150e6, 400e6) for n in (196608.0, 786432.0)]
    sweep = pd.DataFrame(rows)
    return sweep.assign(measured_s=predict(sweep, LINKS, LAT, BURST, b, c))


@pytest.mark.parametrize("b,c", [(0.2, 0.15), (0.35, 0.0)])
def test_a_sweep_made_at_known_b_and_c_gives_them_back(b, c):
    fit = fit_two_way(_synthetic(b, c), LINKS, LAT, BURST)
    assert fit.penalty == pytest.approx(b, abs=0.01) and fit.peer == pytest.approx(c, abs=0.01)
    assert np.allclose(fit.rows["predicted_s"], fit.rows["measured_s"], rtol=0.02)
    rec = fit.record()
    assert rec["source"] == "sizesweep" and rec["rows"] == 8 and rec["max_error"] < 0.02


def test_the_peer_term_needs_two_host_and_bigger_testbeds():
    fit = fit_two_way(_synthetic(0.2, 0.15, layouts=((2, 2),)), LINKS, LAT, BURST)
    assert fit.peer == 0.0 and fit.penalty == pytest.approx(0.2, abs=0.01)   # k = 1 everywhere: c is moot
    with pytest.raises(MoesimError, match="'nic' links"):
        fit_two_way(_synthetic(0.2, 0.15), {"stack": LINKS["stack"]}, LAT, BURST)


def test_the_committed_sweep_is_rate_independent_and_peer_dependent():
    """calibration/README.md: the isolated All-to-All's goodput per bottleneck byte is 0.62-0.63 on 4x1 and 0.81-0.83
    on 2x2, at 150 and 400 Mbit/s alike; no tbf drop, no TCP timeout in any run."""
    import json
    sweep = read_size_sweep(SWEEP)
    assert len(sweep) == 16 and set(sweep["bytes_per_pair"]) == {98304.0, 196608.0, 393216.0, 786432.0}
    goodput = {}
    for (h, r, rate), g in sweep.groupby(["hosts", "ranks_per_host", "rate_bits"]):
        bneck = g["bytes_per_pair"] * (h * r - r) * r    # bytes a host sends to other hosts
        slope = np.polyfit(bneck, g["measured_s"], 1)[0]
        goodput[(h, rate)] = 1.0 / slope / (rate / 8)
    for h, lo, hi in ((4, 0.60, 0.65), (2, 0.79, 0.85)):
        assert lo <= goodput[(h, 150e6)] <= hi and lo <= goodput[(h, 400e6)] <= hi, goodput
    for f in SWEEP:
        totals = json.loads(open(f.replace(".csv", ".netstats.json")).read())["totals"]
        assert totals["tbf_drops"] == 0 and totals["tcp_timeouts"] == 0 and totals["tbf_qdiscs"] == 2 * (
            int(f.split("sizesweep-")[1][0]))


def _bad(tmp_path, edit) -> str:
    lines = open(SWEEP[0]).read().splitlines()
    lines = edit(lines)
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("edit,message", [
    (lambda ls: [ls[0].replace("patterns", "run")] + ls[1:], "expected a 'patterns' table"),
    (lambda ls: [ls[0], ls[1].replace('"rate_bits": 150000000.0', '"rate_bits": null')] + ls[2:], "no tc rate"),
    (lambda ls: [ls[0], ls[1].replace('"hosts": 2', '"hostz": 2')] + ls[2:], "hosts and ranks_per_host"),
    (lambda ls: ls[:2] + [ls[2].replace("seconds", "ms")] + ls[3:], r"missing column\(s\) seconds"),
    (lambda ls: ls[:3] + [ls[3].replace(",0.0", ",abc", 1)] + ls[4:], "column 'seconds' all_to_all row 1"),
    (lambda ls: ls[:3] + [x for x in ls[3:] if not x.startswith("all_to_all")], "no all_to_all rows"),
    (lambda ls: ls[:3] + [",".join(v if i != 3 else "4096" for i, v in enumerate(ls[3].split(",")))] + ls[4:],
     "one size per table"),
])
def test_bad_sweep_tables_fail_naming_the_file(tmp_path, edit, message):
    with pytest.raises(InputFileError, match=message) as info:
        read_size_sweep([_bad(tmp_path, edit)])
    assert "bad.csv" in str(info.value)
    with pytest.raises(MoesimError, match="no size-sweep tables"):
        read_size_sweep([])


def test_the_campaign_records_and_checks_the_two_way_flag(tmp_path):
    cmd = campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, two_way="sizesweep")
    assert cmd.endswith("--two-way sizesweep --only calibrate)")
    assert "--two-way" not in campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS)
    assert campaign.TWO_WAY_PATTERNS_DEFAULT == {"sizesweep": SIZE_SWEEP_PATTERNS, "trains": TRAIN_PATTERNS}  # spelled out: no pandas there
    with pytest.raises(SystemExit):
        campaign.main(["--only", "calibrate", "--two-way", "guess"])
    args = argparse.Namespace(name="x", patterns="none", tbf_effects=False, out=str(tmp_path),
                              two_way="sizesweep", two_way_patterns="calibration/patterns/no-such-*.csv")
    with pytest.raises(SystemExit, match="--two-way-patterns .*no such tables"):
        campaign._two_way_from_sweep(None, campaign.repo_root(), args.two_way_patterns, lambda s: None)


def _train_calls(name: str) -> dict:
    """Per pattern of a committed train table: (mean over ranks, last rank) per call (s), goodput."""
    from moesim.calibrate.tables import _read_raw
    kind, _, df = _read_raw(ROOT / "calibration" / "patterns" / f"train-{name}.csv")
    assert kind == "patterns"
    out = {}
    for pat, g in df.groupby("pattern"):
        calls = int(g["calls"].iloc[0])
        out[pat] = (float(g["release_mean_s"].median()) / calls, float(g["release_last_s"].median()) / calls,
                    float(g["goodput"].median()))
    return out


def test_trains_reproduce_in_step_all_to_alls_and_their_goodput_falls_with_duration():
    """calibration/README.md "What remains" (6), back-to-back All-to-Alls: on 4x1 a train's call costs what a
    step's does (one-round AVX-512 campaign, CDAC top-8, median per rank and call) within 10 %,
    passes no token bucket (96 KiB at 400 Mbit/s: at the rate in a train, far above it alone), and its
    goodput falls with the call's duration on both rates; a link passing the first 15 ms at the
    rate and then 0.55 of it gives every 4x1 train's last rank within 10 %."""
    trains = {n: _train_calls(n) for n in ("4x1-150mbit-393216", "4x1-400mbit-393216", "4x1-150mbit-98304",
                                            "4x1-400mbit-98304")}
    for rate in (150, 400):
        df = pd.read_csv(OLD_DEFAULT / "validation" / f"4x1-{rate}mbit-cdac-k8.csv", comment="#")
        a2a = df[df["phase"].isin(["dispatch", "combine"])]
        step_call = float((a2a["seconds"] / a2a["count"]).median())
        assert trains[f"4x1-{rate}mbit-393216"]["all_to_all_train"][0] == pytest.approx(step_call, rel=0.10)
    small = trains["4x1-400mbit-98304"]
    assert small["all_to_all_train"][2] == pytest.approx(1.0, abs=0.1) and small["all_to_all"][2] > 1.5
    by_duration = sorted((t["all_to_all_train"][1], t["all_to_all_train"][2]) for t in trains.values())
    goodputs = [g for _, g in by_duration]
    assert goodputs == sorted(goodputs, reverse=True) and goodputs[0] - goodputs[-1] > 0.3
    onset, after = 0.015, 0.55
    for name, t in trains.items():
        per_pair, rate = int(name.split("-")[2]), float(name.split("-")[1].removesuffix("mbit")) * 1e6
        d = 3 * per_pair * 8 / rate                      # the bottleneck bytes in time at the rate (s)
        model = d if d <= onset else onset + (d - onset) / after
        assert model == pytest.approx(t["all_to_all_train"][1], rel=0.10), name


def test_trains_fit_the_two_way_loss_that_steps_see():
    """``--two-way trains``: the committed trains (back-to-back All-to-Alls, one table per testbed and
    size) read as one row per table with its calls, and (b, c) fitted on them reproduce every train
    within 6 % (calibration/README.md, pre-registration "Trains set the two-way loss")."""
    from moesim.calibrate.netmodel import TESTBED_TBF_BURST_S
    from moesim.calibrate.profile_io import link_params, raw_profile
    files = sorted(glob.glob(str(ROOT / TRAIN_PATTERNS)))
    sweep = read_size_sweep(files, "all_to_all_train")
    assert len(sweep) == 7 and (sweep["calls"] == 8).all() and set(sweep["hosts"]) == {2, 4}
    with pytest.raises(InputFileError, match="no all_to_all_train rows"):
        read_size_sweep(sorted(glob.glob(str(ROOT / SIZE_SWEEP_PATTERNS)))[:1], "all_to_all_train")
    _, raw = raw_profile(str(OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml"))
    fit = fit_two_way(sweep, link_params(raw), float(raw["network"]["latency_per_message_s"]), TESTBED_TBF_BURST_S,
                      source="trains")
    rec = fit.record()
    assert rec["source"] == "trains" and "back-to-back" in rec["meaning"] and rec["rows"] == 7
    assert rec["max_error"] < 0.06 and fit.peer > 0.05


def test_back_to_back_calls_start_where_the_previous_ended():
    """``simulate_measured(repeat=n)``: without a token bucket n calls take n times one; with it the
    first call passes the bucket and the next ones find it spent (no idle time to refill)."""
    from moesim.calibrate.netmodel import simulate_measured
    plain = {"nic": LinkParams(efficiency=1.0), "stack": LinkParams(max_bandwidth=1e10),
             "loopback": LinkParams(max_bandwidth=1e10)}
    one = simulate_measured("all_to_all", "world", 4, 1, 4 * 393216, 150e6, plain, 0.0, 0.0)
    assert simulate_measured("all_to_all", "world", 4, 1, 4 * 393216, 150e6, plain, 0.0, 0.0, repeat=5) == \
        pytest.approx(5 * one, rel=1e-9)
    bucket = {**plain, "nic": LinkParams(efficiency=1.0, burst_s=0.005)}
    first = simulate_measured("all_to_all", "world", 4, 1, 4 * 393216, 150e6, bucket, 0.0, 0.0)
    train = simulate_measured("all_to_all", "world", 4, 1, 4 * 393216, 150e6, bucket, 0.0, 0.0, repeat=5)
    assert first < one and (train - first) / 4 == pytest.approx(one, rel=1e-6)


def test_a_trains_ranks_arrive_apart_and_each_call_still_takes_an_isolated_call():
    """calibration/README.md "What remains" (6), ``trainskew-*``: per call the ranks of a 4x1 train reach it far apart
    (alone they start within a millisecond), the call ends about one isolated call after the last
    arrival, and a rank's mean time in it is that, not the isolated call's mean."""
    from moesim.calibrate.tables import _read_raw
    for rate in (150, 400):
        kind, _, df = _read_raw(ROOT / "calibration" / "patterns" / f"trainskew-4x1-{rate}mbit-393216.csv")
        med = df.groupby("pattern")[["call_arrival_skew_s", "call_after_last_arrival_s", "call_rank_mean_s"]].median()
        alone, train = med.loc["all_to_all"], med.loc["all_to_all_train"]
        assert alone["call_arrival_skew_s"] < 0.002 and train["call_arrival_skew_s"] > 0.3 * alone["call_after_last_arrival_s"]
        assert train["call_after_last_arrival_s"] == pytest.approx(alone["call_after_last_arrival_s"], rel=0.15)
        assert train["call_rank_mean_s"] == pytest.approx(train["call_after_last_arrival_s"], rel=0.05)
        assert alone["call_rank_mean_s"] < 0.85 * alone["call_after_last_arrival_s"]


def test_an_uneven_all_to_all_costs_what_its_busiest_link_carries():
    """calibration/README.md "What remains" (6), ``uneven-*``: with rank 0 exchanging 25 % more with every peer, the
    4x1 call (last rank, alone and in a train) costs 10-35 % more than the uniform one run just before."""
    from moesim.calibrate.tables import _read_raw

    def last_per_call(name):
        _, _, df = _read_raw(ROOT / "calibration" / "patterns" / f"uneven-{name}.csv")
        g = df.groupby("pattern")
        return g["release_last_s"].median() / g["calls"].first(), df["uneven"].unique()
    for rate in (150, 400):
        flat, f1 = last_per_call(f"4x1-{rate}mbit-393216-x1.0")
        skewed, f2 = last_per_call(f"4x1-{rate}mbit-393216-x1.25")
        assert list(f1) == [1.0] and list(f2) == [1.25]
        for pat in ("all_to_all", "all_to_all_train"):
            assert 1.10 <= skewed[pat] / flat[pat] <= 1.35, (rate, pat, skewed[pat] / flat[pat])


def test_an_onset_scan_finds_the_onset_a_train_was_made_with(capsys):
    """Trains made by the simulator with the loss setting in after 10 ms (b = 0.5, c = 0.1, no bucket)
    fit exactly at that onset and worse at the others, each with its own refitted (b, c)."""
    rows = [{"hosts": h, "ranks_per_host": r, "rate_bits": rate, "bytes_per_pair": 393216.0, "calls": 3,
             "file": f"{h}x{r}-{rate:g}"} for h, r in ((2, 2), (4, 1)) for rate in (150e6, 400e6)]
    sweep = pd.DataFrame(rows)
    sweep = sweep.assign(measured_s=predict(sweep, LINKS, LAT, 0.0, 0.5, 0.1, onset_s=0.01))
    scan = onset_scan(sweep, LINKS, LAT, bursts_s=(0.0,), onset_grid=(0.0, 0.01, 0.03), refine=4)
    best = scan.loc[scan["rms_log_error"].idxmin()]
    assert best["onset_s"] == 0.01 and best["max_error"] < 0.01
    assert best["two_way_penalty"] == pytest.approx(0.5, abs=0.02) and best["peer_penalty"] == pytest.approx(0.1, abs=0.02)
    assert (scan[scan["onset_s"] != 0.01]["max_error"] > 0.02).all()
    assert len(scan.loc[0, "errors"]) == 4
    with pytest.raises(SystemExit):
        main(["--onset-grid", "0,1.5"])
    assert "onsets must lie in [0, 1) s" in capsys.readouterr().err



def test_a_late_ranks_exchange_against_an_all_at_once_one_on_4x1_and_2x2():
    """calibration/README.md ("A late rank's All-to-All"), 384 KiB per rank pair, two rounds of 7
    repetitions. On 4x1 a rank that reaches the All-to-All 150 ms after the others (they have
    exchanged among themselves) moves its bytes at a higher share of the tc rate than every host
    sending at once (median goodput over both rounds 0.90 against 0.78 at 400 Mbit/s, 0.76 against
    0.68 at 150); on 2x2 at a lower one (0.77 against 0.96, 0.61 against 0.96): what a link loses is
    not set by two-way traffic on it alone. The late tables count only the late rank's exchanges on
    its host link (2 remote peers on 2x2)."""
    import pandas as pd

    from real_backend.results import read_table as rb_read

    def both_rounds(name: str) -> pd.DataFrame:
        return pd.concat([rb_read(ROOT / f"calibration/patterns/{name}{r}.csv")[0] for r in ("", "-r2")])
    for layout, sign, margin in (("4x1", 1, 0.05), ("2x2", -1, 0.15)):
        for rate in ("150mbit", "400mbit"):
            late = both_rounds(f"late-{layout}-{rate}-393216")
            together = both_rounds(f"late-{layout}-{rate}-393216-together")
            assert (late["late_s"] == 0.15).all() and (together["late_s"] == 0.0).all()
            assert late["call_arrival_skew_s"].between(0.14, 0.2).all()      # 150 ms, less an early rank's lag
            assert together["call_arrival_skew_s"].median() < 0.005     # together (one rep may lag a slice)
            peers = 3 if layout == "4x1" else 2
            assert (late["bottleneck_bytes"] == peers * 393216).all()
            gap = late["goodput"].median() - together["goodput"].median()
            assert sign * gap > margin, (layout, rate, gap)


def test_a_sweep_made_with_a_loss_that_falls_with_the_rate_gives_its_exponent_back():
    """b and c at the lowest rate (150 Mbit/s) scaled by (rate / 150 Mbit/s) ** -gamma: the fit with
    ``rate_exponent`` recovers all three; without it gamma stays 0; one rate cannot tell gamma."""
    sweep = _synthetic(0.3, 0.1)
    sweep = sweep.assign(measured_s=predict(sweep, LINKS, LAT, BURST, 0.3, 0.1, rate_exponent=1.0,
                                            reference_rate=150e6 / 8))
    fit = fit_two_way(sweep, LINKS, LAT, BURST, rate_exponent=True)
    assert (fit.penalty, fit.peer, fit.rate_exponent) == pytest.approx((0.3, 0.1, 1.0), abs=0.01)
    assert fit.reference_rate == pytest.approx(150e6 / 8)
    rec = fit.record()
    assert rec["two_way_rate_exponent"] == fit.rate_exponent and rec["max_error"] < 0.01
    plain = fit_two_way(sweep, LINKS, LAT, BURST)
    assert plain.rate_exponent == 0.0 and "two_way_rate_exponent" not in plain.record()
    assert plain.record()["max_error"] > 0.05          # one loss at both rates cannot fit it
    with pytest.raises(MoesimError, match="two or more tc rates"):
        fit_two_way(sweep[sweep["rate_bits"] == 150e6], LINKS, LAT, BURST, rate_exponent=True)


def test_the_committed_trains_loss_does_not_fall_with_the_rate(capsys):
    """calibration/README.md (models AK and AL): with the testbed's bucket simulated, the trains at 150
    and 400 Mbit/s want one loss (gamma below 0.25), unlike the late rank's exchange."""
    assert main(["--rate-exponent", "--patterns", str(ROOT / "calibration/patterns/train-*-393216.csv"),
                 "--profile", str(ROOT / "calibration/cpu-testbed.yaml")]) == 0
    out = capsys.readouterr().out
    gamma = float(out.split("gamma = ")[1].split()[0])
    assert 0.0 <= gamma < 0.25 and "4 tables" in out
