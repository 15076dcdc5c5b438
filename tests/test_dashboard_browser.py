"""The dashboard in a real browser: headless Chromium (Debian's chromium package) driven by
Playwright opens the file offline, logs no console errors, renders every figure, survives the
controls, and saves a screenshot. Skipped only when no chromium is installed (CI installs it)."""
import json
import os
from pathlib import Path

import pytest

from moesim.dashboard import write_dashboard
from moesim.dashboard.browser import find_chromium
from moesim.sweep import run_sweep

CHROMIUM = find_chromium()
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Debian's chromium for the dashboard browser test (see .ci/run)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser installed (apt-get install chromium)")

BASE = {"model": "gpt3-medium",
        "set": {"model.layers": 2, "run.global_batch_tokens": 4096, "moe.experts": 8, "run.batch_size": 8,
                "run.prompt_len": 64},
        "topology": {"kind": "cluster", "nodes": 2, "gpus_per_node": 2, "intra": "pcie"},
        "profile": "paper-gpu-48gb", "cost": {"gpu_hour_usd": 2.0}}


def _dashboard(tmp_path, grid, detail=2, **extra) -> Path:
    out = tmp_path / "r.parquet"
    run_sweep({"base": json.loads(json.dumps(BASE)), "grid": grid, **extra}, out, jobs=1, progress=False)
    return write_dashboard(out, tmp_path / "dashboard.html", detail=detail)


def test_dashboard_renders_in_chromium(tmp_path):
    from moesim.dashboard.browser import check_page
    html = _dashboard(tmp_path, {"moe.structure": ["cdac", "dcca"], "moe.top_k": [1, 2],
                                 "run.mode": ["train", "prefill", "decode"]},
                      list=[{"topology.nic_bandwidth": "100 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0},
                            {"topology.nic_bandwidth": "400 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0.3}])
    shot = tmp_path / "dashboard.png"
    res = check_page(html, shot, full_page=True, select={"top_k": "2", "mode": "decode"})
    assert res.console_errors == [] and res.page_errors == []
    assert res.requests_outside == []                       # works offline: nothing fetched from the network
    assert res.figures == 8 and res.unrendered == [] and res.rendered == 8, res.unrendered
    assert res.after_filter_rendered == 8
    assert shot.exists() and shot.stat().st_size > 50_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sparse_dashboard_renders_in_chromium(tmp_path):
    """A sweep without pairs, inference or prices: the message figures render too."""
    from moesim.dashboard.browser import check_page
    html = _dashboard(tmp_path, {"moe.top_k": [1, 2]}, detail=0)
    res = check_page(html, tmp_path / "sparse.png")
    assert res.console_errors == [] and res.page_errors == []
    assert res.figures == 8 and res.rendered == 8, res.unrendered
