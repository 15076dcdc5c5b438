"""Interrupting a real sweep process (SIGINT = Ctrl-C, SIGKILL) mid-way and running it again
finishes only the missing scenarios: no row lost, none duplicated, the same numbers."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from moesim.sweep import load_sweep, read_table, run_scenario
from moesim.sweep.store import journal_dir

# ~0.15-0.5 s per scenario here: 24 scenarios on 2 workers take a few seconds, long enough to interrupt
SPEC = {
    "name": "interrupt-me",
    "base": {"model": "gpt3-medium", "set": {"run.global_batch_tokens": 32768}},
    "grid": {"moe.structure": ["cdac", "dcca"], "moe.top_k": [1, 2, 4],
             "topology.nic_bandwidth": ["50 Gbit/s", "100 Gbit/s", "200 Gbit/s", "400 Gbit/s"]},
}
N = 24


def _parts(out: Path) -> list[Path]:
    d = journal_dir(out)
    return sorted(d.glob("*.json")) if d.exists() else []


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _start(moesim_exe, sweep: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([moesim_exe, "sweep", str(sweep), "--out", str(out), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_parts(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 90) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = len(_parts(out))
        if n >= at_least:
            return n
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before it could be interrupted: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("sweep made no progress")


def _resume_and_check(moesim_exe, sweep: Path, out: Path, done_before: int) -> None:
    p = subprocess.run([moesim_exe, "sweep", str(sweep), "--out", str(out), "--jobs", "2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resuming: {done_before} of {N} scenarios already finished, {N - done_before} to run" in p.stderr
    assert f"(ran {N - done_before}, {done_before} already finished)" in p.stdout
    df = read_table(out)
    spec = load_sweep(sweep)
    assert len(df) == N and df["scenario_id"].is_unique
    assert list(df["scenario_id"]) == [sc.id for sc in spec.scenarios]
    assert (df["status"] == "ok").all()
    # rows from before and after the interruption are the numbers a clean run gives
    for i in (0, N - 1):
        assert df["step_time_s"].iloc[i] == pytest.approx(run_scenario(spec.scenarios[i])["step_time_s"], rel=1e-12)


def test_sigint_midway_then_resume(tmp_path, moesim_exe):
    sweep, out = tmp_path / "s.yaml", tmp_path / "r.parquet"
    sweep.write_text(json.dumps(SPEC))
    proc = _start(moesim_exe, sweep, out)
    _wait_for_parts(proc, out, 3)
    proc.send_signal(signal.SIGINT)          # Ctrl-C
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()                  # the table appears only when complete
    done = len(_parts(out))
    assert 3 <= done < N
    time.sleep(0.5)
    assert len(_parts(out)) == done          # nothing kept running after the interrupt
    _resume_and_check(moesim_exe, sweep, out, done)


def test_sigkill_midway_then_resume(tmp_path, moesim_exe):
    sweep, out = tmp_path / "s.yaml", tmp_path / "r.parquet"
    sweep.write_text(json.dumps(SPEC))
    proc = _start(moesim_exe, sweep, out)
    _wait_for_parts(proc, out, 2)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)        # the sweep process only: its workers must not linger
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    while any(_alive(w) for w in workers) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "worker processes outlived the killed sweep"
    assert not out.exists()
    done = len(_parts(out))
    assert 2 <= done < N
    for part in _parts(out):                 # every journal part is whole
        assert json.loads(part.read_text())["scenario_id"] == part.stem
    _resume_and_check(moesim_exe, sweep, out, done)
    assert not list(journal_dir(out).glob(".part-*"))


def test_one_sweep_at_a_time(tmp_path, moesim_exe):
    sweep, out = tmp_path / "s.yaml", tmp_path / "r.parquet"
    sweep.write_text(json.dumps(SPEC))
    proc = _start(moesim_exe, sweep, out)
    try:
        _wait_for_parts(proc, out, 1)
        p = subprocess.run([moesim_exe, "sweep", str(sweep), "--out", str(out), "--jobs", "1"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "another sweep is writing" in p.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
