"""`moesim simulate` and `moesim demo` through the real entry point."""
import json
import subprocess

import pytest

from moesim.cli import main

EXACT = ["simulate", "--model", "gpt3-xl", "--set", "moe.structure=dcca", "--set", "moe.top_k=8",
         "--set", "parallel.ep=32", "--topology", "topologies/bigmac-paper.json", "--json"]


def test_exact_public_command(moesim_exe, repo_root, tmp_path):
    trace = tmp_path / "trace.json"
    out = subprocess.run([moesim_exe, *EXACT, "--trace", str(trace)], cwd=repo_root, capture_output=True,
                         text=True, check=True, timeout=120)
    res = json.loads(out.stdout)
    assert res["step_time_s"] > 0 and res["tokens_per_s"] == pytest.approx(131072 / res["step_time_s"])
    bd = res["breakdown_s"]
    assert {"dispatch", "combine", "experts", "descend", "ascend", "attention"} <= set(bd)
    assert bd["dispatch"] > 0 and bd["combine"] > 0
    assert sum(bd.values()) == pytest.approx(res["step_time_s"], rel=1e-9)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("cat") == "combine" for e in events)


def test_compare_reports_speedup(capsys, repo_root):
    assert main(["simulate", "--model", "gpt3-medium", "--set", "moe.top_k=8", "--compare", "--json",
                 "--topology", str(repo_root / "topologies" / "bigmac-paper.json")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["cdac"]["structure"] == "cdac" and res["dcca"]["structure"] == "dcca"
    assert res["speedup"] == pytest.approx(res["cdac"]["step_time_s"] / res["dcca"]["step_time_s"])
    assert res["speedup"] > 1.5


def test_timeline_and_links_csv(tmp_path, capsys):
    tl, links = tmp_path / "tl.csv", tmp_path / "links.csv"
    assert main(["simulate", "--model", "gpt3-medium", "--set", "run.mode=prefill", "--timeline", str(tl),
                 "--links", str(links)]) == 0
    assert "step time" in capsys.readouterr().out
    import pandas as pd
    assert {"phase", "start_s", "end_s"} <= set(pd.read_csv(tl).columns)
    assert (pd.read_csv(links)["utilisation"] <= 1 + 1e-9).all()


@pytest.mark.parametrize("argv,needle", [
    (["simulate", "--set", "parallel.ep=8"], "needs 8 GPUs"),
    (["simulate", "--topology", "no/such.json"], "no/such.json"),
    (["simulate", "--profile", "tpu-v9"], "no device profile named 'tpu-v9'"),
    (["simulate", "--set", "moe.routing=file", "--set", "moe.routing_file=missing.csv"], "missing.csv"),
])
def test_bad_input_one_line(moesim_exe, argv, needle, tmp_path):
    out = subprocess.run([moesim_exe, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_demo_writes_table_and_report(moesim_exe, tmp_path):
    report = tmp_path / "demo.html"
    out = subprocess.run([moesim_exe, "demo", "--models", "gpt3-medium", "--top-k", "4,8", "--modes", "train",
                          "--out", str(report)], capture_output=True, text=True, check=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("gpt3-medium")]
    assert len(lines) == 2 and all(ln.split()[-3].endswith("x") for ln in lines)
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "plotly" in html and "CDAC vs DCCA" in html
    assert not list(tmp_path.glob(".*.tmp"))
