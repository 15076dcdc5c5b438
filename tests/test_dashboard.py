"""The dashboard HTML: self-contained, every figure present with filterable data, and graceful when
a sweep lacks a dimension (no inference, no pairs, no prices, only failures)."""
import json
import re
import subprocess

import pytest

from moesim.dashboard import build_dashboard, write_dashboard
from moesim.dashboard.data import prepare
from moesim.sweep import read_table, run_sweep

BASE = {"model": "gpt3-medium",
        "set": {"model.layers": 2, "run.global_batch_tokens": 4096, "moe.experts": 8, "run.batch_size": 8,
                "run.prompt_len": 64},
        "topology": {"kind": "cluster", "nodes": 2, "gpus_per_node": 2, "intra": "pcie"},
        "profile": "paper-gpu-48gb"}
PANELS = ["breakdown", "speedup", "cost", "volume", "inference", "linkclass", "timeline", "links"]


def results(tmp_path, name, grid, cost=True, **extra):
    base = json.loads(json.dumps(BASE))
    if cost:
        base["cost"] = {"gpu_hour_usd": 2.0}
    out = tmp_path / f"{name}.parquet"
    run_sweep({"base": base, "grid": grid, **extra}, out, jobs=1, progress=False)
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    return results(tmp, "full", {"moe.structure": ["cdac", "dcca"], "moe.top_k": [1, 2],
                                 "run.mode": ["train", "prefill", "decode"]},
                   list=[{"topology.nic_bandwidth": "100 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0},
                         {"topology.nic_bandwidth": "400 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0.3}])


def payload(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="moesim-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_self_contained_page_with_every_figure(full):
    html = build_dashboard(full)
    assert "<script src" not in html
    assert not re.search(r'<script[^>]+src=', html) and not re.search(r'<link[^>]+href=["\']https?:', html)
    assert "Plotly" in html and len(html) > 3_000_000      # plotly.js inlined
    data = payload(html)
    assert [p["id"] for p in data["panels"]] == PANELS
    kinds = {p["id"]: p["kind"] for p in data["panels"]}
    assert kinds == {"breakdown": "points", "speedup": "points", "volume": "points", "inference": "points",
                     "cost": "points", "timeline": "groups", "links": "groups", "linkclass": "points"}
    for ctl in ("model", "top_k", "ratio", "mode"):
        assert f'id="ctl-{ctl}"' in html
    assert data["initial"] == {"mode": "train"}
    for p in data["panels"]:
        for t in p["figure"]["data"]:
            if p["kind"] == "points":
                sel = t["meta"]["sel"]
                xs = t["x"][0] if isinstance(t["x"][0], list) else t["x"]
                assert len(sel) == len(xs) == len(t["y"]) > 0
                assert all(k.count("|") == 3 for k in sel)
            else:
                assert isinstance(t["meta"]["group"], int)
        assert "bdata" not in json.dumps(p["figure"]["data"])   # plain arrays: the page filters them


def test_figures_carry_the_right_numbers(full):
    df = read_table(full)
    data = payload(build_dashboard(df))
    panels = {p["id"]: p for p in data["panels"]}
    # speedup = CDAC time / DCCA time at each NIC rate
    ok = df[df.status == "ok"]
    tr = ok[(ok["mode"] == "train") & (ok["top_k"] == 2)]
    c = tr[tr.structure == "cdac"].set_index("nic_gbps")["step_time_s"]
    d = tr[tr.structure == "dcca"].set_index("nic_gbps")["step_time_s"]
    line = next(t for t in panels["speedup"]["figure"]["data"] if t["name"] == "train k=2")
    assert line["x"] == [100.0, 400.0]
    assert line["y"] == pytest.approx([c[100.0] / d[100.0], c[400.0] / d[400.0]])
    # stacked breakdown sums to the step time of each bar
    bars = panels["breakdown"]["figure"]["data"]
    totals = [sum(t["y"][i] for t in bars) for i in range(len(bars[0]["y"]))]
    assert totals == pytest.approx(list(ok.sort_values("index")["step_time_s"]), rel=1e-9)
    # cost: one line per structure and top-k, over the NIC options
    names = sorted(t["name"] for t in panels["cost"]["figure"]["data"])
    assert names == ["CDAC k=1", "CDAC k=2", "DCCA k=1", "DCCA k=2"]
    # two detail groups (top-1 and top-2 training), CDAC and DCCA lanes in each
    groups = panels["timeline"]["groups"]
    assert len(groups) >= 2 and all(g["gsel"].endswith("|train") for g in groups[:2])
    lanes = {y for t in panels["timeline"]["figure"]["data"] if t["meta"]["group"] == 0 for y in t["y"]}
    assert any(lane.startswith("CDAC") for lane in lanes) and any(lane.startswith("DCCA") for lane in lanes)


def test_labels_leave_out_tied_cost_inputs(full):
    p = prepare(read_table(full))
    assert "in.cost.upgrade_usd_per_gpu_hour" in p.varying
    assert not any("GPU-h" in lab for lab in p.ok["label"])       # tied to the NIC rate: not needed
    assert p.sel_values == {"model": ["gpt3-medium"], "top_k": ["1", "2"], "ratio": ["0.25"],
                            "mode": ["decode", "prefill", "train"]}


def _messages(html):
    out = {}
    for p in payload(html)["panels"]:
        ann = p["figure"]["layout"].get("annotations") or []
        out[p["id"]] = (p["kind"], " ".join(a["text"] for a in ann))
    return out


def test_missing_dimensions_render_as_messages(tmp_path):
    only = results(tmp_path, "one", {"moe.top_k": [1, 2]}, cost=False)   # CDAC only, training only, no prices
    msgs = _messages(build_dashboard(only, detail=1))
    assert msgs["speedup"][0] == "static" and "no CDAC/DCCA pairs" in msgs["speedup"][1]
    assert msgs["inference"][0] == "static" and "no inference scenarios" in msgs["inference"][1]
    assert msgs["cost"][0] == "static" and "cost.gpu_hour_usd" in msgs["cost"][1]
    assert msgs["breakdown"][0] == "points" and msgs["timeline"][0] == "groups"
    inf = results(tmp_path, "inf", {"moe.structure": ["cdac", "dcca"], "run.mode": ["decode"]})
    msgs = _messages(build_dashboard(inf, detail=0))
    assert "no training scenarios" in msgs["cost"][1]
    assert msgs["timeline"][0] == "static"                       # detail=0: nothing re-simulated


def test_all_failed_sweep_still_renders(tmp_path):
    bad = results(tmp_path, "bad", {"moe.top_k": [16, 32]})     # more than 8 experts: every scenario fails
    html = build_dashboard(bad)
    msgs = _messages(html)
    assert all(kind == "static" for kind, _ in msgs.values())
    assert "2 scenario(s) failed" in html and "exceeds the number of experts" in html


def test_cli_writes_dashboard_and_reads_csv(tmp_path, full, moesim_exe):
    out = tmp_path / "d.html"
    p = subprocess.run([moesim_exe, "dashboard", str(full), "-o", str(out), "--detail", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size > 3_000_000 and "self-contained" in p.stdout
    csv = tmp_path / "r.csv"
    read_table(full).to_csv(csv, index=False)
    write_dashboard(csv, tmp_path / "c.html", detail=0)
    assert len(payload((tmp_path / "c.html").read_text())["panels"]) == len(PANELS)
    p = subprocess.run([moesim_exe, "dashboard", str(tmp_path / "missing.parquet")], capture_output=True, text=True)
    assert p.returncode == 2 and "no such results file" in p.stderr
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    p = subprocess.run([moesim_exe, "dashboard", str(junk)], capture_output=True, text=True)
    assert p.returncode == 2 and "cannot read results table" in p.stderr and "Traceback" not in p.stderr
