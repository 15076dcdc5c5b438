"""The scheduler probe (real_backend.schedprobe): closed-form summaries of scheduler samples, the
/proc parsing, its errors, and one real run on a two-host testbed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real_backend.schedprobe import (TASK_COUNTERS, ProbeError, _task_counters, parse_config, runnable_summary,
                                     schedstat_summary, stat_fractions, stat_state, switch_summary, task_deltas,
                                     thread_table, comm_cpu_per_block)

REPO = Path(__file__).resolve().parents[1]


def test_parse_config():
    assert parse_config("4x1-150mbit-k8") == (4, 1, "150mbit", 8)
    assert parse_config(" 2x2-none-k2 ") == (2, 2, "none", 2)
    for bad in ("4x1-150mbit", "4-150mbit-k8", "1x4-none-k2", "4x1-fast-k8"):
        with pytest.raises(ProbeError, match="configuration"):
            parse_config(bad)


def test_stat_state_survives_odd_command_names():
    assert stat_state(b"4242 (python) R 1 4242 4242 0 -1") == b"R"
    assert stat_state(b"4242 (pt (main) thr) S 1 4242") == b"S"


def test_runnable_summary_closed_form():
    # 4 ranks on 2 cores: 2 samples all runnable, 2 samples one runnable, 4 samples none
    a = np.array([[1, 1, 1, 1]] * 2 + [[1, 0, 0, 0]] * 2 + [[0, 0, 0, 0]] * 4, dtype=bool)
    s = runnable_summary(a, cores=2)
    assert s["samples"] == 8
    assert s["time_by_runnable"] == pytest.approx([0.5, 0.25, 0.0, 0.0, 0.25])
    # rank-samples: 8 with n = 4, 2 with n = 1
    assert s["rank_runnable_by_n"] == pytest.approx([0.0, 0.2, 0.0, 0.0, 0.8])
    assert s["fair_core_share"] == pytest.approx((8 * 0.5 + 2 * 1.0) / 10)
    assert s["runnable_fraction"] == pytest.approx(10 / 32)


def test_runnable_summary_refuses_empty():
    with pytest.raises(ProbeError, match="no scheduler samples"):
        runnable_summary(np.zeros((0, 4), dtype=bool), cores=2)
    with pytest.raises(ProbeError, match="cores"):
        runnable_summary(np.ones((3, 4), dtype=bool), cores=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.lists(st.integers(0, 63), min_size=1, max_size=50))
def test_runnable_summary_properties(ranks, cores, rows):
    a = np.array([[(r >> i) & 1 for i in range(ranks)] for r in rows], dtype=bool)
    s = runnable_summary(a, cores)
    assert sum(s["time_by_runnable"]) == pytest.approx(1.0)
    if a.any():
        assert sum(s["rank_runnable_by_n"]) == pytest.approx(1.0)
        # a runnable rank gets at least the share of all ranks runnable, at most a whole core
        assert min(1.0, cores / ranks) - 1e-12 <= s["fair_core_share"] <= 1.0 + 1e-12
    else:
        assert np.isnan(s["fair_core_share"])


def test_schedstat_summary_closed_form():
    s = schedstat_summary(np.array([1e9, 1e9]), np.array([1e9, 3e9]), seconds=10.0, step_s=1.0)
    assert s["steps_in_window"] == pytest.approx(10.0)
    assert s["cpu_s_per_step"] == pytest.approx([0.1, 0.1])
    assert s["runqueue_wait_s_per_step"] == pytest.approx([0.1, 0.3])
    assert s["core_share"] == pytest.approx(2 / 6)
    with pytest.raises(ProbeError, match="empty window"):
        schedstat_summary(np.ones(2), np.ones(2), seconds=0.0, step_s=1.0)


def test_task_deltas_split_main_and_other_threads():
    pid = 100
    before = {100: [10, 5, 3, 1, 2], 101: [4, 4, 4, 4, 4], 102: [7, 0, 1, 1, 0]}
    # 101 advanced, 102 ended in the window (left out), 103 was born in it (counts from zero)
    after = {100: [20, 9, 6, 2, 4], 101: [5, 8, 6, 5, 4], 103: [3, 1, 2, 2, 0]}
    main, other, n_other = task_deltas(before, after, pid)
    assert main.tolist() == [10, 4, 3, 1, 2]
    assert other.tolist() == [1 + 3, 4 + 1, 2 + 2, 1 + 2, 0]
    assert n_other == 2 and len(main) == len(TASK_COUNTERS)
    with pytest.raises(ProbeError, match="thread 101: a scheduler counter went backwards"):
        task_deltas(before, {100: [20, 9, 6, 2, 4], 101: [3, 8, 6, 5, 4]}, pid)
    with pytest.raises(ProbeError, match="rank process 100: its main thread"):
        task_deltas(before, {101: [5, 8, 6, 5, 4]}, pid)


def test_switch_summary_closed_form():
    # two ranks over 4 steps; counters: cpu ns, wait ns, timeslices, voluntary, involuntary
    main = np.array([[4e8, 2e8, 40, 12, 28], [8e8, 0, 20, 20, 0]])
    other = np.array([[4e7, 8e7, 400, 300, 100], [0, 0, 0, 0, 0]])
    s = switch_summary(main, other, steps=4.0)
    m, o = s["main_thread"], s["other_threads"]
    assert m["cpu_s_per_step"] == pytest.approx([0.1, 0.2])
    assert m["runqueue_wait_s_per_step"] == pytest.approx([0.05, 0.0])
    assert m["timeslices_per_step"] == pytest.approx([10, 5])
    assert m["voluntary_switches_per_step"] == pytest.approx([3, 5])
    assert m["involuntary_switches_per_step"] == pytest.approx([7, 0])
    assert m["wait_per_timeslice_s"] == pytest.approx(0.2 / 60)          # all ranks' wait over all their slices
    assert o["wait_per_timeslice_s"] == pytest.approx(0.08 / 400)
    assert np.isnan(switch_summary(main, np.zeros((2, 5)), 4.0)["other_threads"]["wait_per_timeslice_s"])
    with pytest.raises(ProbeError, match="no steps"):
        switch_summary(main, other, steps=0.0)


def test_thread_table_closed_form_and_old_files():
    side = {"cpu_s_per_step": [0.05, 0.07], "runqueue_wait_s_per_step": [0.03, 0.05], "timeslices_per_step": [300, 100],
            "voluntary_switches_per_step": [10, 12], "involuntary_switches_per_step": [20, 40],
            "wait_per_timeslice_s": 0.0002}
    run = {"testbed": "4x1", "rate": "400mbit", "top_k": 2, "structure": "dcca", "step_s": 0.2804,
           "threads": {"main_thread": side, "other_threads": side, "other_thread_count": [4, 4]}}
    head, rule, row, _, last = thread_table([run]).splitlines()
    # others' CPU 60 ms per step over 11 blocks
    assert last == "gloo's threads' CPU per main-thread block: median 5.45 ms (range 5.45-5.45 ms over 1 runs)"
    assert comm_cpu_per_block([run]) == pytest.approx([0.06 / 11])
    assert head.count("|") == rule.count("|") == row.count("|") == 14
    cells = [c.strip() for c in row.strip("|").split("|")]
    # means over the two ranks; the last column is 40 ms of waiting over 11 blocks
    assert cells == ["4x1 400mbit", "2", "DCCA", "280 ms", "60 ms", "40 ms", "11.0", "30", "60 ms", "40 ms", "200",
                     "0.20 ms", "3.6 ms"]
    with pytest.raises(ProbeError, match=r"old\.json: runs\[0\] has no per-thread numbers"):
        thread_table([{k: v for k, v in run.items() if k != "threads"}], "old.json")


def test_show_prints_the_table_or_names_the_bad_file(tmp_path):
    side = {"cpu_s_per_step": [0.05], "runqueue_wait_s_per_step": [0.03], "timeslices_per_step": [300],
            "voluntary_switches_per_step": [10], "involuntary_switches_per_step": [20], "wait_per_timeslice_s": 0.0001}
    run = {"testbed": "2x1", "rate": "none", "top_k": 2, "structure": "cdac", "step_s": 0.1, "compute_phases_s": 0.05,
           "schedstat": {"cpu_s_per_step": [0.08]}, "threads": {"main_thread": side, "other_threads": side}}
    good = tmp_path / "probe.json"
    good.write_text(json.dumps({"runs": [run]}))
    res = _run(["--show", str(good)])
    assert res.returncode == 0 and "| 2x1 none | 2 | CDAC | 100 ms |" in res.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = _run(["--show", str(bad)])
    assert res.returncode == 2 and "bad.json" in res.stderr and "malformed JSON" in res.stderr


def test_task_counters_read_this_process():
    import threading
    import time
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [stop.wait(0.001) for _ in range(20)])
    worker.start()
    a = _task_counters(os.getpid())
    time.sleep(0.02)                                   # the main thread blocks (a voluntary switch)
    worker.join()
    b = _task_counters(os.getpid())
    assert os.getpid() in a and os.getpid() in b
    main, other, _ = task_deltas(a, b, os.getpid())
    assert main[3] >= 1                                # it slept: at least one voluntary switch
    assert main[2] >= 1 and all(v >= 0 for v in (*main, *other))
    assert all(len(v) == len(TASK_COUNTERS) for v in b.values())


def test_stat_fractions():
    f = stat_fractions([0, 0, 10, 50, 0, 0, 5, 5], [30, 0, 20, 100, 0, 0, 10, 10])
    assert f["user"] == pytest.approx(0.3) and f["idle"] == pytest.approx(0.5)
    assert f["system"] == pytest.approx(0.1) and f["softirq"] + f["steal"] == pytest.approx(0.1)
    with pytest.raises(ProbeError, match="did not advance"):
        stat_fractions([1, 2, 3], [1, 2, 3])


def _run(args, timeout=60):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "real_backend.schedprobe", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_bad_configuration_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "p.json"
    res = _run(["--configs", "4x1-fast-k8", "--out", str(out)])
    assert res.returncode == 2 and "4x1-fast-k8" in res.stderr and "HOSTSxRANKS" in res.stderr
    assert not out.exists()


def test_a_failed_testbed_run_is_tried_again_and_its_cause_logged():
    from real_backend.schedprobe import ProbeError, TestbedRunFailed, with_tries
    calls, logged = [], []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise TestbedRunFailed("x.csv: the testbed run failed (exit 1): host 1 failed first | boom")
        return {"ok": True}
    assert with_tries(flaky, 2, logged.append) == {"ok": True} and len(calls) == 2
    assert len(logged) == 1 and "try 1 of 2 failed" in logged[0] and "boom" in logged[0]

    def always():
        calls.append(1)
        raise TestbedRunFailed("x.csv: the testbed run failed (exit 1): boom")
    calls.clear()
    with pytest.raises(TestbedRunFailed, match=r"boom \(try 3 of 3\)"):
        with_tries(always, 3, logged.append)
    assert len(calls) == 3

    def broken():      # the probe's own errors (not a failed launch) are not tried again
        calls.append(1)
        raise ProbeError("the measured window is too short")
    calls.clear()
    with pytest.raises(ProbeError, match="too short"):
        with_tries(broken, 3, logged.append)
    assert len(calls) == 1


HAVE_NET = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_NET, reason="the testbed needs root and iproute2 (ip, tc)")
def test_probe_on_a_real_testbed(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "probe.json"
    res = _run(["--configs", "2x1-none-k2", "--structures", "dcca", "--steps", "8", "--no-wait", "--out", str(out)],
               timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert (run["testbed"], run["structure"], run["top_k"]) == ("2x1", "dcca", 2)
    assert run["samples"] > 20 and len(run["time_by_runnable"]) == 3
    assert sum(run["time_by_runnable"]) == pytest.approx(1.0)
    sched = run["schedstat"]
    # two ranks on this machine's cores: they ran (CPU time), and got a real share of a core
    assert all(c > 0 for c in sched["cpu_s_per_step"]) and 0 < sched["core_share"] <= 1
    # the schedstat window lies inside the 8 measured steps, between two of the probe's coarse samples
    # (every 0.2 s), so it is up to 0.4 s shorter than the steps (steps vary by up to ~20 %)
    assert 8 * 0.8 - 0.4 / run["step_s"] <= sched["steps_in_window"] <= 8 * 1.2
    assert 0 <= run["machine"]["idle"] < 1 and run["step_s"] > 0   # 0: other work kept every core busy
    # per rank, the main thread blocks in most of a step's collectives (10 All-to-All calls and the
    # gradient all-reduce), which gloo's worker threads run: they are put on a core many times more
    threads = run["threads"]
    blocks = threads["main_thread"]["voluntary_switches_per_step"]
    assert len(blocks) == 2 and all(5 <= b <= 40 for b in blocks)
    assert all(n >= 1 for n in threads["other_thread_count"])
    assert all(o > b for o, b in zip(threads["other_threads"]["timeslices_per_step"], blocks))
    cpu = np.add(threads["main_thread"]["cpu_s_per_step"], threads["other_threads"]["cpu_s_per_step"])
    assert cpu == pytest.approx(sched["cpu_s_per_step"])


def test_committed_probe_gives_the_pre_registered_all_to_all_cpu():
    """The record's refit M holds the All-to-All CPU at the median of gloo's threads' CPU per main-thread
    block in the committed probe (calibration/README.md, "gloo's threads measured"); each main thread
    blocks about once per collective of a step (10 All-to-All calls and the gradient all-reduce)."""
    from moesim.calibrate.cpuwork import load_probe
    runs = load_probe(REPO / "calibration/avx512/schedprobe.json")
    assert round(float(np.median(comm_cpu_per_block(runs))), 5) == 0.00142
    for r in runs:
        blocks = r["threads"]["main_thread"]["voluntary_switches_per_step"]
        assert all(10 <= b <= 12 for b in blocks), (r["testbed"], r["rate"], r["structure"], blocks)
