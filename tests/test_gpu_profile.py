"""The prepared single-GPU run (real_backend.gpu_profile): its dry run here measures real tables
through the same steps, and moesim calibrate fits a profile from them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate import calibrate  # noqa: E402


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
    assert [s["name"] for s in record["steps"]] == ["gemm", "memory", "gpu_check"]
    assert all(s["exit"] == 0 for s in record["steps"])
    check = json.loads((out / "gpu_check.json").read_text())
    assert check["passed"] and len(check["checks"]) == 5
    cal = calibrate([out / "gemm-bf16.csv", out / "memory.csv"], name="dry", peak_flops=1e11)
    dev = cal.profile["device"]
    assert set(dev["peak_flops"]) == {"bf16", "fp16"} and 0 < dev["gemm"]["efficiency_max"] <= 1.0
    assert dev["memory_bandwidth"] > 0
