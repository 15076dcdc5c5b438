"""Sweeps on a real Dask distributed cluster (a LocalCluster of 2 worker processes) via --scheduler."""
import json
import subprocess

import pytest

from moesim.sweep import read_table

distributed = pytest.importorskip("distributed", reason="Dask distributed is part of the test extra")

SPEC = {
    "base": {"model": "gpt3-medium",
             "set": {"model.layers": 2, "run.global_batch_tokens": 4096, "moe.experts": 8},
             "topology": {"kind": "cluster", "nodes": 2, "gpus_per_node": 2, "intra": "pcie"},
             "cost": {"gpu_hour_usd": 2.0}},
    "grid": {"moe.structure": ["cdac", "dcca"], "moe.top_k": [1, 2, 16]},   # top-16 > 8 experts fails
}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1", silence_logs=40) as c:
        yield c


def test_sweep_on_dask_cluster(tmp_path, moesim_exe, cluster):
    sweep, out = tmp_path / "s.yaml", tmp_path / "r.parquet"
    sweep.write_text(json.dumps(SPEC))
    p = subprocess.run([moesim_exe, "sweep", str(sweep), "--out", str(out), "--scheduler", cluster.scheduler_address],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "6 scenarios (ran 6) " in p.stdout and "4 ok, 2 error(s)" in p.stdout
    df = read_table(out)
    assert len(df) == 6 and df["scenario_id"].is_unique
    assert set(df.loc[df.status == "error", "top_k"].dropna()) <= {16}
    assert df.loc[df.status == "error", "error"].str.contains("exceeds the number of experts").all()
    assert (df.loc[df.status == "ok", "step_time_s"] > 0).all()
    # the work really went through the scheduler
    prefixes = set(cluster.scheduler.task_prefixes)
    assert any(p.startswith("moesim") for p in prefixes), prefixes
    # resuming against the cluster runs nothing again
    p = subprocess.run([moesim_exe, "sweep", str(sweep), "--out", str(out), "--scheduler", cluster.scheduler_address],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "(ran 0, 6 already finished)" in p.stdout


def test_unreachable_scheduler_is_a_clear_error(tmp_path, moesim_exe):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps(SPEC))
    p = subprocess.run([moesim_exe, "sweep", str(sweep), "--out", str(tmp_path / "r.parquet"),
                        "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "cannot connect to the Dask scheduler at tcp://127.0.0.1:9" in p.stderr and "Traceback" not in p.stderr
