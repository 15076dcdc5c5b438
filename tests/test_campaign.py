"""The campaign's orchestration: validation runs come in whole rounds with one name per
configuration and round, CDAC next to its DCCA twin, and the fit/held-out split by top-k (the
measurements themselves need root and an hour: ``moesim.calibrate.campaign``)."""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from moesim.calibrate import campaign


def _args(**over) -> argparse.Namespace:
    base = dict(repeats=3, rates=["150mbit", "none"], top_k=[2, 4], fit_top_k={4}, steps=10, warmup=3,
                max_load=0.5, wait_timeout=60.0)
    base.update(over)
    return argparse.Namespace(**base)


def test_validation_runs_come_in_whole_rounds(tmp_path, monkeypatch):
    launched = []

    def run_on_testbed(self, hosts, rph, rate, module, args, out, paired_out=None):
        assert module == "run" and f"moe.top_k={out.name.split('-k')[1][0]}" in args
        launched.append(out.name if paired_out is None else (out.name, paired_out.name))
        out.write_text("table")
        return {"command": "python -m real_backend.testbed ...", "loadavg_before": [0.1, 0.1, 0.1, 0.0],
                "loadavg_after": [0.2, 0.1, 0.1], "finished": "2026-12-01T00:00:00+00:00"}

    monkeypatch.setattr(campaign.Runner, "testbed", run_on_testbed)
    sequential = campaign.validation_runs(_args(paired=False), lambda s: None, tmp_path / "seq")
    per_round = len(campaign.SHAPES) * 2 * 2 * 2          # shapes x rates x top-k x structures
    assert len(sequential) == len(launched) == 3 * per_round and "paired_with" not in sequential[0]
    launched.clear()
    runs = campaign.validation_runs(_args(), lambda s: None, tmp_path)
    # by default a configuration's CDAC and DCCA run as one launch (their steps alternate)
    assert launched == [(a["file"], b["file"]) for a, b in zip(runs[::2], runs[1::2])]
    assert [r["file"] for r in sequential] == [r["file"] for r in runs]
    assert all(a["paired_with"] == b["file"] and b["paired_with"] == a["file"] for a, b in zip(runs[::2], runs[1::2]))
    # round r holds every configuration once, before round r + 1 starts
    for r in range(3):
        block = runs[r * per_round:(r + 1) * per_round]
        assert {x["repeat"] for x in block} == {r + 1}
        assert len({x["config"] for x in block}) == per_round
        assert all(x["file"] == f"{x['config']}-r{r + 1}.csv" for x in block)
    # a configuration's CDAC run is followed by its DCCA twin (a paired ratio)
    for a, b in zip(runs[::2], runs[1::2]):
        assert (a["structure"], b["structure"]) == ("cdac", "dcca")
        assert a["config"].replace("-cdac-", "-dcca-") == b["config"]
    assert {x["role"] for x in runs if x["top_k"] == 4} == {"fit"}
    assert {x["role"] for x in runs if x["top_k"] == 2} == {"heldout"}
    # one round keeps the plain names
    launched.clear()
    single = campaign.validation_runs(_args(repeats=1, paired=False), lambda s: None, tmp_path / "one")
    assert [x["file"] for x in single] == [f"{x['config']}.csv" for x in single] == launched
    assert set(launched) == campaign.validation_table_names(_args(), 1)
    # another campaign's tables in the directory are named, and left alone
    logged = []
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "2x2-150mbit-cdac-k2.csv").write_text("old")
    campaign.validation_runs(_args(), logged.append, tmp_path / "two")
    assert any("1 table(s) this campaign does not write (2x2-150mbit-cdac-k2.csv)" in m for m in logged)
    assert (tmp_path / "two" / "2x2-150mbit-cdac-k2.csv").read_text() == "old"
    assert campaign.warn_stray_tables(_args(), logged.append, tmp_path, 3) == []


def test_repeats_must_be_positive(capsys):
    assert campaign.main(["--only", "calibrate", "--repeats", "0", "--out", "/nonexistent"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_time_slice_must_be_skew_or_seconds(capsys):
    for bad in ("fast", "-0.01", "2", "nan"):
        assert campaign.main(["--only", "calibrate", "--time-slice", bad, "--out", "/nonexistent"]) == 2
        assert "--time-slice must be 'skew' or seconds" in capsys.readouterr().err


def test_fit_command_names_the_options_that_differ_from_the_defaults():
    cmd = campaign.fit_command("calibration/avx2", "cpu-testbed-avx2", campaign.DEFAULT_PATTERNS)
    assert cmd == ("python -m moesim.calibrate.campaign --out calibration/avx2 --name cpu-testbed-avx2  (this fit "
                   "alone: python -m moesim.calibrate.campaign --out calibration/avx2 --name cpu-testbed-avx2 "
                   "--only calibrate)")
    assert "--patterns none" in campaign.fit_command("calibration", "cpu-testbed", "none")
    assert "--name" not in campaign.fit_command("calibration", "cpu-testbed", "none")
    assert campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, "together", "0", "fit").startswith(
        "python -m moesim.calibrate.campaign --out c --a2a-start together --time-slice 0 --burst fit  (")
    # the committed profiles record exactly that command, and the default shared peer accounting
    for path, name in (("calibration/cpu-testbed.yaml", "cpu-testbed"),
                       ("calibration/avx2/cpu-testbed-avx2.yaml", "cpu-testbed-avx2")):
        text = open(path).read()
        assert "release_patterns:" in text and f"name: {name}" in text
        assert "peer_shared: true" in text and "--peer-accounting" not in text
    assert " --peer-accounting all " in campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS,
                                                             peer_accounting="all")
    with pytest.raises(SystemExit):
        campaign.main(["--only", "calibrate", "--peer-accounting", "some"])


def test_nic_efficiency_flag_is_recorded_in_the_fit_command_and_checked(capsys):
    cmd = campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, nic_efficiency="joint")
    assert "--nic-efficiency joint" in cmd and cmd.endswith("--nic-efficiency joint --only calibrate)")
    assert "--nic-efficiency" not in campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS)
    with pytest.raises(SystemExit):
        campaign.main(["--only", "calibrate", "--nic-efficiency", "rings"])
    # `moesim calibrate` spells the same choices and default out (it starts without pandas)
    from moesim.calibrate.fit import NIC_EFFICIENCY_DEFAULT, NIC_EFFICIENCY_FROM
    from moesim.cli import build_parser
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["calibrate"]._actions
                  if a.dest == "nic_efficiency")
    assert tuple(action.choices) == NIC_EFFICIENCY_FROM and action.default == NIC_EFFICIENCY_DEFAULT
    assert "--nic-efficiency: invalid choice: 'rings'" in capsys.readouterr().err


def test_patterns_that_match_nothing_stop_the_fit_before_it_starts(tmp_path):
    args = argparse.Namespace(name="x", patterns="calibration/patterns/no-such-*.csv", tbf_effects=False, out=str(tmp_path))
    with pytest.raises(SystemExit, match="no such tables"):
        campaign.finish(args, lambda s: None, tmp_path, tmp_path / "measurements", tmp_path / "validation")


def _fake_testbed(monkeypatch, fail_after: int | None = None):
    """Runs the campaign's real Runner with the testbed launch replaced: each launch writes its
    tables (a paired launch two) and their topologies, and ``launched`` lists the tables; the launch
    after ``fail_after`` successful launches crashes (exit 1, three tries)."""
    launched = []
    launches = [0]
    real_run = campaign.subprocess.run

    def fake_run(cmd, *a, **kw):
        if cmd[0] == "git":
            return real_run(cmd, *a, **kw)
        outs = [Path(cmd[cmd.index(flag) + 1]) for flag in ("--out", "--paired-out") if flag in cmd]
        if fail_after is not None and launches[0] >= fail_after:
            return subprocess.CompletedProcess(cmd, 1, "", "worker crashed")
        launches[0] += 1
        for out in outs:
            launched.append(out.name)
            out.write_text("table")
            out.with_name(out.stem + ".topology.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(campaign.subprocess, "run", fake_run)
    monkeypatch.setattr(campaign, "wait_quiet", lambda *a, **k: [0.1, 0.1, 0.1, 0.0])
    monkeypatch.setattr(campaign.time, "sleep", lambda s: None)
    return launched


def test_an_interrupted_campaign_resumes_where_it_stopped(tmp_path, monkeypatch):
    launched = _fake_testbed(monkeypatch, fail_after=5)
    with pytest.raises(SystemExit, match="failed 3 times"):
        campaign.validation_runs(_args(), lambda s: None, tmp_path)
    ledger = json.loads((tmp_path / "progress.json").read_text())
    assert sorted(ledger["records"]) == sorted(launched) and len(launched) == 10   # five paired launches
    assert not (tmp_path / "runs.json").exists()
    first = list(launched)
    launched = _fake_testbed(monkeypatch)
    runs = campaign.validation_runs(_args(resume=True), lambda s: None, tmp_path)
    # the five finished launches are kept, the rest run once each, in the campaign's order
    assert not set(first) & set(launched) and len(first) + len(launched) == len(runs)
    assert [r["file"] for r in runs][:10] == first
    assert json.loads((tmp_path / "runs.json").read_text())["runs"] == runs
    assert not (tmp_path / "progress.json").exists()


def test_resume_refuses_another_design_and_a_missing_table_runs_again(tmp_path, monkeypatch):
    _fake_testbed(monkeypatch, fail_after=3)
    with pytest.raises(SystemExit):
        campaign.validation_runs(_args(), lambda s: None, tmp_path)
    launched = _fake_testbed(monkeypatch)
    with pytest.raises(SystemExit, match=r"progress.json.*another design.*steps: 10 then, 20 now"):
        campaign.validation_runs(_args(resume=True, steps=20), lambda s: None, tmp_path)
    assert launched == []                        # nothing was measured under the new design
    gone = json.loads((tmp_path / "progress.json").read_text())["records"]
    assert len(gone) == 6                        # three paired launches
    (tmp_path / sorted(gone)[0]).unlink()        # a recorded table that is no longer there: its pair runs again
    campaign.validation_runs(_args(resume=True), lambda s: None, tmp_path)
    assert sorted(gone)[0] in launched and len(launched) == 3 * 16 - 6 + 2


def test_without_resume_a_campaign_starts_over_and_a_broken_ledger_is_named(tmp_path, monkeypatch):
    _fake_testbed(monkeypatch, fail_after=4)
    with pytest.raises(SystemExit):
        campaign.validation_runs(_args(), lambda s: None, tmp_path)
    launched = _fake_testbed(monkeypatch)
    messages = []
    campaign.validation_runs(_args(), messages.append, tmp_path)
    assert len(launched) == 3 * 16 and any("starting over" in m for m in messages)
    (tmp_path / "progress.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"progress.json: not a campaign progress ledger"):
        campaign.validation_runs(_args(resume=True), lambda s: None, tmp_path)


def test_resume_skips_a_finished_stage_of_the_same_design_only(tmp_path, monkeypatch):
    launched = _fake_testbed(monkeypatch)
    runs = campaign.validation_runs(_args(), lambda s: None, tmp_path)
    assert json.loads((tmp_path / "runs.json").read_text())["design"]["steps"] == 10
    launched.clear()
    assert campaign.validation_runs(_args(resume=True), lambda s: None, tmp_path) == runs
    assert launched == []                        # complete: nothing measured again
    with pytest.raises(SystemExit, match=r"runs.json: this stage was completed under another design.*warmup"):
        campaign.validation_runs(_args(resume=True, warmup=5), lambda s: None, tmp_path)


def test_repeat_compares_with_the_runs_the_manifest_lists(tmp_path, capsys):
    """``--only repeat``'s comparison takes a configuration's committed runs from the validation
    manifest, so a stray table in the directory does not count; the committed repeats of the sequential
    AVX2 campaign's 400 Mbit/s top-8 pairs (calibration/README.md, "The default campaign remade"): 2x2 measured 1.30x
    over its three rounds, 1.51x in the first repeat."""
    import shutil
    top = Path(__file__).resolve().parents[1] / "calibration"
    root = top / "avx2-sequential"
    vdir = tmp_path / "validation"
    shutil.copytree(root / "validation", vdir)
    runs = campaign.committed_runs(vdir, "2x2-400mbit-dcca-k8")
    assert [p.name for p in runs] == [f"2x2-400mbit-dcca-k8-r{i}.csv" for i in (1, 2, 3)]
    shutil.copy(top / "avx512-1r" / "validation" / "2x2-400mbit-dcca-k8.csv", vdir)    # a stray table
    assert campaign.committed_runs(vdir, "2x2-400mbit-dcca-k8") == runs
    (vdir / "manifest.json").unlink()
    (vdir / "runs.json").unlink()
    assert len(campaign.committed_runs(vdir, "2x2-400mbit-dcca-k8")) == 4      # no manifest: every table
    assert campaign.compare_repeat(root / "repeat" / "1", root / "validation") == 0
    out = capsys.readouterr().out
    assert "speedup 2x2-400mbit-k8       committed 1.301x  repeat 1.507x" in out


def test_each_repeat_gets_a_directory_of_its_own(tmp_path):
    """``--only repeat`` writes into ``repeat/<n>``, a new n each time, so that earlier repeats stay;
    ``--resume`` finishes the last one."""
    base = tmp_path / "repeat"
    assert campaign.repeat_dir(base) == base / "1"
    assert campaign.repeat_dir(base, resume=True) == base / "1"      # nothing to resume: the first
    (base / "1").mkdir(parents=True)
    (base / "3").mkdir()
    (base / "notes").mkdir()                                          # not a number: ignored
    (base / "7").write_text("a file, not a repeat")
    assert campaign.repeat_dir(base) == base / "4"
    assert campaign.repeat_dir(base, resume=True) == base / "3"


def test_fit_command_records_the_all_to_all_cpu_option():
    cmd = campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, "together", a2a_cpu="fit")
    assert "--a2a-start together" in cmd and "--a2a-cpu fit" in cmd
    assert "--a2a-cpu" not in campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS)
    cmd = campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, "together", a2a_cpu="last-arriver")
    assert "--a2a-cpu last-arriver" in cmd


def test_campaign_refuses_an_unknown_all_to_all_cpu_mode(capsys):
    for bad, why in (("guess", "expected none, fit, last-arriver or seconds"), ("-0.001", "in [0, 0.5] s"),
                     ("0.6", "in [0, 0.5] s")):
        with pytest.raises(SystemExit):
            campaign.main(["--out", "x", "--only", "calibrate", "--a2a-cpu", bad])
        err = capsys.readouterr().err
        assert "--a2a-cpu" in err and why in err
    assert campaign.a2a_cpu_mode("0.00135") == "0.00135" and campaign.a2a_cpu_mode("fit") == "fit"
    cmd = campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, "together", a2a_cpu="0.00135")
    assert "--a2a-cpu 0.00135" in cmd
    from moesim.calibrate.insitu import A2A_CPU_GRID_S
    assert campaign.a2a_cpu_fit_args("none") == {}
    assert campaign.a2a_cpu_fit_args("fit") == {"a2a_cpu_grid": A2A_CPU_GRID_S}
    assert campaign.a2a_cpu_fit_args("0.00135") == {"a2a_cpu_grid": (0.00135,)}     # a one-value grid: held
    assert list(campaign.a2a_cpu_fit_args("last-arriver")) == ["a2a_cpu_last_arriver_grid"]


def test_campaign_release_spread_option(capsys):
    """--release-spread: patterns (default) or a step release spread, held and recorded in the command."""
    assert campaign.release_spread_mode("patterns") == "patterns" and campaign.release_spread_mode("0.772") == "0.772"
    for bad, why in (("wide", "expected patterns or a fraction"), ("1", "in [0, 1)"), ("-0.1", "in [0, 1)")):
        with pytest.raises(SystemExit):
            campaign.main(["--out", "x", "--only", "calibrate", "--release-spread", bad])
        err = capsys.readouterr().err
        assert "--release-spread" in err and why in err
    cmd = campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS, release="0.772")
    assert cmd.startswith("python -m moesim.calibrate.campaign --out c --release-spread 0.772")
    assert "--release-spread" not in campaign.fit_command("c", "cpu-testbed", campaign.DEFAULT_PATTERNS)


def test_failure_tail_keeps_the_testbeds_cause_else_the_last_lines():
    tb = ("real_backend.testbed: host 0 (ranks 0..0) exited with status -9\n\n"
          "real_backend.testbed: host 1 (ranks 1..1) exited with status 1\n"
          "real_backend.testbed: host 1 failed first; its last lines:\n"
          "real_backend.testbed:   [h1] real_backend.run: rank 1 failed: RuntimeError: boom\n"
          "real_backend.testbed:   [h1] exitcode  : 1 (pid: 7)\n")
    tail = campaign.failure_tail(tb)
    assert tail.startswith("real_backend.testbed: host 1 failed first") and "RuntimeError: boom" in tail
    assert "status -9" not in tail and tail.count(" | ") == 2
    assert campaign.failure_tail("a\nb\n\nc\nd\n") == "b | c | d"
    assert campaign.failure_tail("") == ""
