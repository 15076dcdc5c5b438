"""The prepared single-GPU run (real_backend.gpu_profile): its dry run here measures real tables
through the same steps, and moesim calibrate fits a profile from them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate import calibrate, read_table  # noqa: E402
from real_backend.gpu_profile import steps  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "real_backend.gpu_profile", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_a_gpu_the_script_refuses_unless_asked_for_a_dry_run(tmp_path):
    res = _run("--out-dir", str(tmp_path / "x"))
    assert res.returncode == 2 and "no CUDA device" in res.stderr and not (tmp_path / "x").exists()


def test_dry_run_measures_every_step_and_its_tables_calibrate(tmp_path):
    out = tmp_path / "gpu"
    res = _run("--allow-cpu", "--quick", "--out-dir", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((out / "commands.json").read_text())
    assert [s["name"] for s in record["steps"]] == ["gemm", "gemm-pipelined", "memory", "memory-pipelined",
                                                    "gpu_check"]
    assert all(s["exit"] == 0 for s in record["steps"])
    assert sum(limit for *_, limit in steps(out, False, out)) < 540   # fits one device call with room
    files = sorted(p.name for p in out.iterdir())   # the dry run times no steps: no gpu_check tables to pack
    assert files == ["commands.json", "gemm-bf16-pipelined.csv", "gemm-bf16.csv", "gpu_check.json",
                     "memory-pipelined.csv", "memory.csv"]   # with gpu_check.tar.gz 7: a lent machine returns 8
    for name, per in (("gemm-bf16.csv", 1), ("gemm-bf16-pipelined.csv", 3), ("memory.csv", 1),
                      ("memory-pipelined.csv", 3)):
        assert read_table(out / name).meta["ops_per_timing"] == per
    piped = calibrate([out / "gemm-bf16-pipelined.csv", out / "memory-pipelined.csv"], name="piped", peak_flops=1e11)
    assert piped.profile["device"]["memory_bandwidth"] > 0
    check = json.loads((out / "gpu_check.json").read_text())
    assert check["passed"] and len(check["checks"]) == 5
    cal = calibrate([out / "gemm-bf16.csv", out / "memory.csv"], name="dry", peak_flops=1e11)
    dev = cal.profile["device"]
    assert set(dev["peak_flops"]) == {"bf16", "fp16"} and 0 < dev["gemm"]["efficiency_max"] <= 1.0
    assert dev["memory_bandwidth"] > 0
