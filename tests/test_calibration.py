"""Calibration: fits recover known parameters from tables made by the cost model's own formulas,
bad measurement files fail with one clear message and write nothing, a real tiny microbenchmark
calibrates, and the CLI works through the installed entry point."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moesim.calibrate import calibrate, read_table
from moesim.calibrate.fit import fit_compute, fit_network
from moesim.calibrate.netmodel import LinkParams, collective_features, simulate_measured
from moesim.calibrate.tables import collective_medians, gemm_medians, memory_medians
from moesim.cli import main
from moesim.cost import load_profile
from moesim.errors import InputFileError

COLUMNS = ("kind", "group", "group_size", "m", "n", "k", "size_bytes", "dtype", "rank", "rep", "seconds", "bytes",
           "bytes_remote", "flop", "run_id", "host", "backend", "world_size")

# ground truth of the synthetic tables (one core)
PEAK = 100e9
TRUE = {"efficiency_max": 0.8, "half_size": 24.0, "memory_bandwidth": 20e9, "op_overhead_s": 4e-6}
SHAPES = [(m, n, k) for m in (8, 64, 256, 1024) for n in (16, 256, 1024) for k in (32, 256, 1024)]
MEM_SIZES = [2 ** p for p in range(14, 28, 2)]


def write_table(path: Path, rows: list[dict], meta: dict, columns=COLUMNS, kind="microbench") -> Path:
    buf = io.StringIO()
    buf.write(f"# moesim-real-backend v1 {kind}\n# meta {json.dumps(meta)}\n")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    path.write_text(buf.getvalue())
    return path


def gemm_seconds(m, n, k, p=TRUE, peak=PEAK):
    g = lambda x: x / (x + p["half_size"])  # noqa: E731
    return p["op_overhead_s"] + 2 * m * n * k / (peak * p["efficiency_max"] * g(m) * g(n) * g(k))


def synthetic_compute(tmp: Path, world: int = 1, share: float = 1.0, shapes=SHAPES, name="gemm.csv") -> Path:
    rows = []
    for (m, n, k) in shapes:
        for rank in range(world):
            rows.append({"kind": "gemm", "group": "local", "group_size": 1, "m": m, "n": n, "k": k, "dtype": "fp32",
                         "rank": rank, "rep": 0, "seconds": gemm_seconds(m, n, k) / share,
                         "bytes": 4 * (m * k + k * n + m * n), "flop": 2 * m * n * k, "world_size": world})
    if world == 1:
        for s in MEM_SIZES:
            rows.append({"kind": "memory", "group": "local", "group_size": 1, "size_bytes": s, "dtype": "fp32", "rank": 0,
                         "rep": 0, "seconds": TRUE["op_overhead_s"] + s / TRUE["memory_bandwidth"], "bytes": s,
                         "flop": 0, "world_size": 1})
    return write_table(tmp / name, rows, {"kind": "microbench", "world_size": world, "cpu_count": 2,
                                          "host": "synthetic", "torch_version": "synthetic"})


NET_TRUE = {"links": {"nic": LinkParams(efficiency=0.9, latency_s=40e-6),
                      "stack": LinkParams(efficiency=None, max_bandwidth=8e8, latency_s=0.0),
                      "loopback": LinkParams(efficiency=None, max_bandwidth=2.5e9, latency_s=0.0)},
            "latency_per_message_s": 60e-6, "collective_overhead_s": 150e-6}
NET_SIZES = [16 << 10, 256 << 10, 1 << 20, 4 << 20]


def synthetic_network(tmp: Path, hosts: int, rph: int, rate_bits: float, use_simulator: bool = False) -> Path:
    rows = []
    nominal = rate_bits / 8 if rate_bits else None
    bw = {c: NET_TRUE["links"][c].bandwidth(nominal if c == "nic" else None) for c in ("nic", "stack", "loopback")}
    groups = ["world"] + (["intra_node", "inter_node"] if hosts > 1 and rph > 1 else [])
    for kind in ("all_to_all", "all_reduce"):
        for group in groups:
            gsize = hosts * rph if group == "world" else rph if group == "intra_node" else hosts
            for size in NET_SIZES:
                if use_simulator:
                    t = simulate_measured(kind, group, hosts, rph, size, rate_bits or None, NET_TRUE["links"],
                                          NET_TRUE["latency_per_message_s"], NET_TRUE["collective_overhead_s"])
                else:
                    t = collective_features(kind, group, hosts, rph, size).predict(
                        bw, NET_TRUE["latency_per_message_s"], NET_TRUE["collective_overhead_s"],
                        NET_TRUE["links"]["nic"].latency_s)
                for rank in range(hosts * rph):
                    rows.append({"kind": kind, "group": group, "group_size": gsize, "size_bytes": size, "dtype": "fp32",
                                 "rank": rank, "rep": 0, "seconds": t, "bytes": size, "flop": 0})
    meta = {"kind": "microbench", "world_size": hosts * rph, "cpu_count": 2, "host": "synthetic",
            "testbed": {"hosts": hosts, "ranks_per_host": rph, "rate_bits": rate_bits}}
    return write_table(tmp / f"net-{hosts}x{rph}-{int(rate_bits / 1e6)}.csv", rows, meta)


# ---------------------------------------------------------------------------------------------
# recovery of known parameters
# ---------------------------------------------------------------------------------------------
def test_compute_fit_recovers_cost_model_parameters(tmp_path):
    t = read_table(synthetic_compute(tmp_path))
    fit = fit_compute(gemm_medians([t]), memory_medians([t]), PEAK)
    assert fit.efficiency_max == pytest.approx(TRUE["efficiency_max"], rel=1e-3)
    assert fit.half_size == pytest.approx(TRUE["half_size"], rel=1e-3)
    assert fit.memory_bandwidth == pytest.approx(TRUE["memory_bandwidth"], rel=1e-3)
    assert fit.op_overhead_s == pytest.approx(TRUE["op_overhead_s"], rel=1e-2)
    assert fit.residuals["gemm"]["mape"] < 1e-3 and fit.residuals["memory"]["mape"] < 1e-3


def test_compute_fit_keeps_efficiency_at_most_one_against_a_datasheet_peak(tmp_path):
    """GEMMs that beat the reference peak (a curve with efficiency_max 1.3): against an estimated peak
    the fit is free and recovers 1.3 (the profile caps it); against a datasheet peak (bounded) the fit
    is the best curve with efficiency_max exactly 1, so the half size moves to absorb the excess, and it
    beats every other efficiency_max <= 1 at its own best half size."""
    over = dict(TRUE, efficiency_max=1.3)
    rows = [{"m": m, "n": n, "k": k, "seconds": gemm_seconds(m, n, k, over)} for (m, n, k) in SHAPES]
    import pandas as pd
    from moesim.calibrate.fit import ComputeFit
    g = pd.DataFrame(rows)
    free = fit_compute(g, None, PEAK)
    assert free.efficiency_max == pytest.approx(1.3, rel=1e-3) and "beat the reference peak" in free.residuals["note"]
    bound = fit_compute(g, None, PEAK, bounded=True)
    assert bound.efficiency_max == 1.0 and "bound 1" in bound.residuals["note"]
    assert bound.half_size < over["half_size"]            # a steeper curve stands in for the excess
    meas = g["seconds"].to_numpy()

    def sse(fit):
        return float((((fit.gemm_seconds(g.m, g.n, g.k) - meas) / meas) ** 2).sum())
    for eff in (0.9, 0.99):       # the bounded optimum beats interior points at their best half size
        best = min(sse(ComputeFit(PEAK, eff, h, None, bound.op_overhead_s)) for h in (5, 10, 15, 20, 24, 30))
        assert sse(bound) < best
    within = fit_compute(pd.DataFrame([{"m": m, "n": n, "k": k, "seconds": gemm_seconds(m, n, k)}
                                       for (m, n, k) in SHAPES]), None, PEAK, bounded=True)
    assert within.efficiency_max == pytest.approx(TRUE["efficiency_max"], rel=1e-3)   # bound not active
    assert "note" not in within.residuals


def test_queued_gpu_tables_fit_an_overlapping_overhead(tmp_path):
    """GPU tables timed with ops in a queue (ops_per_timing > 1) hold max(issue, kernel) per op: the
    fit recovers a curve, bandwidth and overhead of that form, and the profile says the overhead
    overlaps; tables that mix queued and isolated timings are refused, naming both."""
    truth = dict(TRUE, op_overhead_s=2e-5)
    g = lambda x: x / (x + truth["half_size"])  # noqa: E731
    rows = [{"kind": "gemm", "group": "local", "group_size": 1, "m": m, "n": n, "k": k, "dtype": "bf16", "rank": 0,
             "rep": 0, "seconds": max(truth["op_overhead_s"], 2 * m * n * k / (PEAK * truth["efficiency_max"] * g(m) * g(n) * g(k))),
             "flop": 2 * m * n * k, "world_size": 1} for (m, n, k) in SHAPES]
    rows += [{"kind": "memory", "group": "local", "group_size": 1, "size_bytes": b, "dtype": "fp32", "rank": 0, "rep": 0,
              "seconds": max(truth["op_overhead_s"], b / truth["memory_bandwidth"]), "bytes": b, "flop": 0,
              "world_size": 1} for b in MEM_SIZES]
    meta = {"kind": "microbench", "world_size": 1, "host": "gpu", "gpu_name": "NVIDIA H200", "cuda": "13.0",
            "gpu_memory_bytes": 150e9}
    queued = write_table(tmp_path / "queued.csv", rows, dict(meta, ops_per_timing=20))
    cal = calibrate([queued], name="q", peak_flops=PEAK)
    dev = cal.profile["device"]
    assert dev["op_overhead_overlaps"] is True
    assert dev["gemm"]["efficiency_max"] == pytest.approx(truth["efficiency_max"], rel=1e-2)
    assert dev["gemm"]["half_size"] == pytest.approx(truth["half_size"], rel=2e-2)
    assert dev["memory_bandwidth"] == pytest.approx(truth["memory_bandwidth"], rel=1e-2)
    assert dev["op_overhead_s"] == pytest.approx(truth["op_overhead_s"], rel=1e-2)
    assert cal.residuals["gemm"]["max_error"] < 0.02 and cal.residuals["memory"]["max_error"] < 0.02
    alone = write_table(tmp_path / "alone.csv", rows, dict(meta, ops_per_timing=1))
    assert "op_overhead_overlaps" not in calibrate([alone], name="a", peak_flops=PEAK).profile["device"]
    with pytest.raises(Exception, match=r"alone\.csv 1.*queued\.csv 20"):
        calibrate([alone, queued], name="mixed", peak_flops=PEAK)


def test_contention_and_profile_scaling(tmp_path):
    """4 ranks on 2 cores: GEMMs long enough to be time-sliced run at the measured share of a core,
    and the profile scales peak, bandwidth and overhead by it."""
    big = [(1024, 1024, 1024), (2048, 512, 512), (512, 1024, 1024)]
    synthetic_compute(tmp_path, 1, shapes=SHAPES + big[1:])
    synthetic_compute(tmp_path, 4, share=0.45, shapes=big + [(64, 256, 256)], name="gemm4.csv")
    cal = calibrate([tmp_path], name="syn", peak_flops=PEAK)
    assert cal.contention.factor == pytest.approx(0.45, rel=1e-6)
    assert cal.contention.rows_used == 3          # the short GEMM is not used
    d = cal.profile["device"]
    assert d["peak_flops"]["fp32"] == pytest.approx(0.45 * PEAK)
    assert d["memory_bandwidth"] == pytest.approx(0.45 * TRUE["memory_bandwidth"], rel=1e-3)
    assert d["op_overhead_s"] == pytest.approx(TRUE["op_overhead_s"] / 0.45, rel=1e-2)
    assert d["gemm"]["efficiency_max"] == pytest.approx(0.8, rel=1e-3)


@pytest.mark.parametrize("use_simulator", [False, True])
def test_network_fit_recovers_alpha_beta(tmp_path, use_simulator):
    """Tables from the closed form (and from the simulator's fluid network itself) at two rates and
    unshaped, two testbed shapes: per-class bandwidths, latencies and overhead come back; an
    unshaped veth stays unlimited (its copies are the stack links')."""
    for hosts, rph in ((2, 2), (4, 1)):
        for rate in (100e6, 300e6, 0.0):
            synthetic_network(tmp_path, hosts, rph, rate, use_simulator)
    tables = [read_table(p) for p in sorted(tmp_path.glob("net-*.csv"))]
    fit = fit_network(collective_medians(tables))
    nic, st, lo = fit.links["nic"], fit.links["stack"], fit.links["loopback"]
    tn, ts, tl = NET_TRUE["links"]["nic"], NET_TRUE["links"]["stack"], NET_TRUE["links"]["loopback"]
    assert nic.efficiency == pytest.approx(tn.efficiency, rel=0.02) and math.isinf(nic.max_bandwidth)
    assert st.max_bandwidth == pytest.approx(ts.max_bandwidth, rel=0.05)
    assert lo.max_bandwidth == pytest.approx(tl.max_bandwidth, rel=0.05)
    assert fit.latency_per_message_s == pytest.approx(NET_TRUE["latency_per_message_s"], rel=0.1, abs=3e-6)
    assert nic.latency_s == pytest.approx(tn.latency_s, rel=0.1, abs=3e-6)
    assert fit.collective_overhead_s == pytest.approx(NET_TRUE["collective_overhead_s"], rel=0.1, abs=5e-6)
    assert fit.residuals["network"]["mape"] < 0.01


def test_closed_form_matches_simulator():
    for kind in ("all_to_all", "all_reduce"):
        for group in ("world", "intra_node", "inter_node"):
            f = collective_features(kind, group, 2, 2, 3 << 20)
            bw = {"nic": NET_TRUE["links"]["nic"].bandwidth(100e6 / 8), "stack": 8e8, "loopback": 2.5e9}
            a = f.predict(bw, 60e-6, 150e-6, 40e-6)
            b = simulate_measured(kind, group, 2, 2, 3 << 20, 100e6, NET_TRUE["links"], 60e-6, 150e-6)
            assert a == pytest.approx(b, rel=1e-9)


def test_step_links_are_the_microbenchmark_fit_not_scaled_by_the_core_share(tmp_path):
    """4 ranks on 2 cores: the microbenchmarks time collectives with every rank copying, as a step's
    All-to-All does, so the profile's copy rates are the fit's even though compute gets 0.45 of a core."""
    synthetic_compute(tmp_path, 1, shapes=SHAPES + [(2048, 512, 512), (512, 1024, 1024)])
    synthetic_compute(tmp_path, 4, share=0.45, shapes=[(1024, 1024, 1024), (2048, 512, 512), (512, 1024, 1024)],
                      name="gemm4.csv")
    for hosts, rph in ((2, 2), (4, 1)):
        for rate in (100e6, 0.0):
            synthetic_network(tmp_path, hosts, rph, rate)
    cal = calibrate([tmp_path], name="syn", peak_flops=PEAK)
    assert cal.contention.factor == pytest.approx(0.45, rel=1e-6)
    links = cal.profile["calibration"]["links"]
    assert links["stack"]["max_bandwidth"] == pytest.approx(8e8, rel=0.05)
    assert links["loopback"]["max_bandwidth"] == pytest.approx(2.5e9, rel=0.05)
    assert links["nic"]["max_bandwidth"] is None and links["nic"]["efficiency"] == pytest.approx(0.9, rel=0.02)


def test_calibrate_cli_writes_measured_profile_with_provenance(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    synthetic_compute(d, 1)
    for hosts, rph in ((2, 2), (4, 1)):
        for rate in (100e6, 0.0):
            synthetic_network(d, hosts, rph, rate)
    out = tmp_path / "prof" / "syn.yaml"
    assert main(["calibrate", str(d), "--out", str(out), "--peak-flops", str(PEAK)]) == 0
    text = capsys.readouterr().out
    assert "residuals" in text and "gemm" in text and "all_to_all:world" in text and "MAPE" in text
    prof = load_profile(out)
    assert prof.status == "measured" and prof.name == "syn"
    assert prof.device.gemm_half_size == pytest.approx(TRUE["half_size"], rel=1e-3)
    raw = yaml.safe_load(out.read_text())
    srcs = raw["provenance"]["sources"]
    assert {s["file"] for s in srcs} == {p.name for p in d.glob("*.csv")}
    assert all(len(s["sha256"]) == 64 for s in srcs)
    for key in ("machine", "date", "torch_version", "command"):
        assert key in raw["provenance"]
    assert {"hostname", "cpu_model", "cores"} <= set(raw["provenance"]["machine"])
    assert raw["calibration"]["residuals"]["gemm"]["mape"] < 1e-3
    assert raw["calibration"]["links"]["nic"]["efficiency"] == pytest.approx(0.9, rel=0.02)
    # the profile drives the simulator
    from moesim.config import load_config
    from moesim.engine import simulate
    from moesim.topology.generators import emulated_testbed
    cfg = load_config("gpt3-medium", ["parallel.ep=4", "model.layers=2", "run.global_batch_tokens=4096"])
    assert simulate(cfg, emulated_testbed(2, 2), out).step_time_s > 0


def test_calibrate_cli_one_way_efficiency_on_a_committed_campaign(tmp_path, capsys):
    """The replication's joint fit let its All-to-Alls' two-way loss into the tbf efficiency (0.907);
    its 4 MiB rings alone give a rate close to the other campaigns' (0.95-0.97)."""
    root = Path(__file__).resolve().parents[1] / "calibration" / "avx512-replication"
    out = tmp_path / "oneway.yaml"
    assert main(["calibrate", str(root / "measurements"), "--out", str(out)]) == 0      # one-way: the default
    text = capsys.readouterr().out
    assert "(from 4 one-way rows; joint fit 0.907)" in text and "network_one_way_rows" in text
    raw = yaml.safe_load(out.read_text())
    committed = yaml.safe_load((root / "cpu-testbed-avx512-replication.yaml").read_text())
    src = raw["calibration"]["nic_efficiency_from"]
    assert src["rows"] == "one-way" and src["rows_used"] == 4
    # the committed profile (the campaign's fit: this one, then the in-situ fit, which keeps the efficiency)
    assert committed["calibration"]["nic_efficiency_from"]["rows"] == "one-way"
    assert src["joint_efficiency"] == pytest.approx(committed["calibration"]["nic_efficiency_from"]["joint_efficiency"],
                                                    rel=1e-4)
    assert src["joint_efficiency"] == pytest.approx(0.907, abs=0.001)
    assert raw["calibration"]["links"]["nic"]["efficiency"] == pytest.approx(
        committed["calibration"]["links"]["nic"]["efficiency"], rel=1e-4)
    assert raw["calibration"]["links"]["nic"]["efficiency"] == pytest.approx(0.961, abs=0.005)
    assert raw["network"]["link_efficiency"]["nic"] == raw["calibration"]["links"]["nic"]["efficiency"]
    assert raw["calibration"]["residuals"]["network_one_way_rows"]["max_error"] < 0.02


# ---------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------
def _good_rows():
    return [{"kind": "gemm", "group": "local", "group_size": 1, "m": 64, "n": 64, "k": 64, "dtype": "fp32", "rank": 0,
             "rep": r, "seconds": 1e-4, "bytes": 3 * 64 * 64 * 4, "flop": 2 * 64 ** 3} for r in range(3)]


def _bad_cases(tmp: Path):
    meta = {"kind": "microbench", "world_size": 1}
    cases = {}
    rows = _good_rows()
    cases["missing column 'seconds'"] = write_table(tmp / "nosec.csv", rows, meta,
                                                    [c for c in COLUMNS if c != "seconds"])
    cases["column 'time_ms' is in milliseconds"] = write_table(
        tmp / "ms.csv", [dict(r, time_ms=r["seconds"] * 1e3) for r in rows], meta,
        [c if c != "seconds" else "time_ms" for c in COLUMNS])
    cases["column 'seconds' has 120000"] = write_table(tmp / "big.csv", [dict(r, seconds=120000.0) for r in rows], meta)
    cases["column 'flop' must be 2*m*n*k"] = write_table(tmp / "flop.csv", [dict(r, flop=r["flop"] / 1e9) for r in rows],
                                                         meta)
    cases["column 'seconds' must be numeric"] = write_table(tmp / "text.csv", [dict(rows[0], seconds="fast")] + rows[1:],
                                                            meta)
    cases["column 'seconds' has an empty or NaN"] = write_table(tmp / "nan.csv", [dict(rows[0], seconds="nan")] + rows[1:],
                                                               meta)
    cases["column 'seconds' must not be negative"] = write_table(tmp / "neg.csv", [dict(rows[0], seconds=-1e-4)] + rows[1:],
                                                                 meta)
    cases["column 'm' must be positive"] = write_table(tmp / "zero.csv", [dict(rows[0], m=0)] + rows[1:], meta)
    cases["empty table: a header but no rows"] = write_table(tmp / "header.csv", [], meta)
    (tmp / "empty.csv").write_text("")
    cases["empty file"] = tmp / "empty.csv"
    (tmp / "plain.csv").write_text("a,b\n1,2\n")
    cases["not a moesim real_backend table"] = tmp / "plain.csv"
    cases["column 'kind' has unknown value"] = write_table(tmp / "kind.csv", [dict(r, kind="matmul") for r in rows], meta)
    return cases


def test_bad_files_fail_clearly_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out.yaml"
    for expected, path in _bad_cases(tmp_path).items():
        with pytest.raises(InputFileError) as err:
            read_table(path)
        msg = str(err.value)
        assert path.name in msg and expected in msg, (expected, msg)
        assert "\n" not in msg
        assert main(["calibrate", str(path), "--out", str(out)]) == 2
        cli_err = capsys.readouterr().err.strip()
        assert cli_err.count("\n") == 0 and path.name in cli_err and expected in cli_err
        assert not out.exists() and not list(tmp_path.glob(".out.yaml.*"))


def test_existing_profile_untouched_on_failure(tmp_path):
    out = tmp_path / "keep.yaml"
    out.write_text("original\n")
    bad = write_table(tmp_path / "bad.csv", [dict(_good_rows()[0], seconds="x")], {"world_size": 1})
    assert main(["calibrate", str(bad), "--out", str(out)]) == 2
    assert out.read_text() == "original\n"


# ---------------------------------------------------------------------------------------------
# a real tiny microbenchmark, through the installed entry point
# ---------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_real_tiny_microbench_calibrates_through_entry_point(tmp_path, moesim_exe):
    pytest.importorskip("torch")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    gemm = tmp_path / "gemm.csv"
    shapes = sum((["--gemm", s] for s in ("32,64,64", "64,256,256", "128,256,512", "256,512,512", "512,512,512")), [])
    subprocess.run([sys.executable, "-m", "real_backend.microbench", "--kinds", "gemm", "--threads", "1", *shapes,
                    "--reps", "5", "--warmup", "2", "--out", str(gemm), "--quiet"], check=True, env=env, timeout=120)
    mem = tmp_path / "mem.csv"
    subprocess.run([sys.executable, "-m", "moesim.calibrate.membench", "--sizes", "64KiB,1MiB,8MiB", "--reps", "5",
                    "--out", str(mem)], check=True, env=env, timeout=120, capture_output=True)
    out = tmp_path / "tiny.yaml"
    res = subprocess.run([moesim_exe, "calibrate", str(gemm), str(mem), "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    prof = load_profile(out)
    assert prof.status == "measured"
    assert 0 < prof.device.gemm_efficiency_max <= 1
    assert prof.device.peak_flops["fp32"] > 1e9 and prof.device.memory_bandwidth > 1e8
    # a fitted curve explains real GEMMs to within tens of percent (noise on a shared machine)
    assert rep["residuals"]["gemm"]["mape"] < 0.5
    assert math.isfinite(rep["residuals"]["memory"]["mape"])


def test_old_testbed_topology_files_are_rebuilt_in_the_current_layout(tmp_path):
    """Files real_backend.testbed wrote before ranks had a stack link (one per-rank loopback link to
    the host carried every flow) are rebuilt from what they record; others come back as they are."""
    import networkx as nx
    from moesim.calibrate.netmodel import upgrade_testbed_topology
    from moesim.network.routing import Router
    from moesim.topology import load_topology
    from moesim.topology.generators import cluster, emulated_testbed
    g = nx.Graph(name="testbed-2x2", source="real_backend.testbed", testbed_id="abc123", tc_rate_bits=150e6,
                 shared_cpu_cores=2)
    g.add_node("bridge", kind="switch")
    for h in range(2):
        g.add_node(f"host{h}", kind="cpu")
        g.add_edge(f"host{h}", "bridge", bandwidth=18.75e6, latency=0.0, link_class="nic")
        for k in range(2):
            g.add_node(f"host{h}/rank{k}", kind="gpu", rank=2 * h + k, host=f"host{h}")
            g.add_edge(f"host{h}/rank{k}", f"host{h}", bandwidth=2e9, latency=0.0, link_class="loopback")
    path = tmp_path / "old.topology.json"
    path.write_text(json.dumps(nx.node_link_data(g, edges="edges")))
    old = load_topology(path)
    new = upgrade_testbed_topology(old)
    assert old.link_classes == ["loopback", "nic"] and new.link_classes == ["loopback", "nic", "stack"]
    assert new.graph.graph["testbed_id"] == "abc123" and new.graph.graph["shared_cpu_cores"] == 2
    assert new.num_gpus == 4 and new.hosts == old.hosts
    nic = new.links[new.links["link_class"] == "nic"]
    assert (nic["capacity"] == 18.75e6).all()
    cls = new.links["link_class"]
    assert list(cls.iloc[Router(new).routes([0], [1]).links]) == ["loopback", "loopback"]
    other = cluster(2, 4)
    assert upgrade_testbed_topology(other) is other
    current = emulated_testbed(2, 2)
    assert upgrade_testbed_topology(current) is current
    assert upgrade_testbed_topology(new) is new


def test_gpu_tables_need_a_given_peak_and_record_the_gpu(tmp_path):
    """Tables that real_backend.gpu_profile writes on a CUDA GPU record the GPU (name, memory): the fit
    refuses to borrow this machine's CPU peak for them, and with a given peak the profile takes the
    GPU's memory and names the GPU in its provenance; the curve is recovered as for a CPU."""
    path = synthetic_compute(tmp_path)
    text = path.read_text().splitlines()
    meta = json.loads(text[1][len("# meta "):])
    meta.update({"gpu_name": "NVIDIA H200", "gpu_memory_bytes": 150_000_000_000, "cuda": "13.0", "device": "cuda:0"})
    text[1] = "# meta " + json.dumps(meta)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(Exception, match=r"gemm\.csv.*NVIDIA H200.*--peak-flops"):
        calibrate([path], name="gpu")
    cal = calibrate([path], name="gpu", peak_flops=PEAK)
    dev, prov = cal.profile["device"], cal.profile["provenance"]
    assert dev["memory_bytes"] == 150e9
    assert dev["gemm"]["efficiency_max"] == pytest.approx(TRUE["efficiency_max"], rel=1e-3)
    assert dev["memory_bandwidth"] == pytest.approx(TRUE["memory_bandwidth"], rel=1e-3)
    assert prov["gpu"]["name"] == "NVIDIA H200" and "NVIDIA H200" in prov["source"]


def test_gpu_summary_names_the_gpu_and_the_fit_note_reaches_the_profile(tmp_path, capsys):
    """GEMMs faster than the given peak: the bounded fit's note (efficiency at its bound) is written
    into the profile (calibration.fit_notes) and printed; the summary names the GPU, not the cores of
    the host that drove it. A fit whose efficiency stays inside the bound carries no note."""
    over = dict(TRUE, efficiency_max=1.3)
    rows = [{"kind": "gemm", "group": "local", "group_size": 1, "m": m, "n": n, "k": k, "dtype": "bf16", "rank": 0,
             "rep": 0, "seconds": gemm_seconds(m, n, k, over), "flop": 2 * m * n * k, "world_size": 1}
            for (m, n, k) in SHAPES]
    meta = {"kind": "microbench", "world_size": 1, "host": "gpu", "gpu_name": "NVIDIA H200", "cuda": "13.0",
            "gpu_memory_bytes": 150e9}
    path = write_table(tmp_path / "fast.csv", rows, meta)
    out = tmp_path / "gpu.yaml"
    assert main(["calibrate", str(path), "--out", str(out), "--peak-flops", str(PEAK)]) == 0
    text = capsys.readouterr().out
    assert "compute (one NVIDIA H200 per rank)" in text and "cores" not in text.split("\n")[1]
    assert "note: efficiency_max at its bound 1" in text
    prof = yaml.safe_load(out.read_text())
    assert prof["device"]["gemm"]["efficiency_max"] == 1.0
    assert any("bound 1" in n for n in prof["calibration"]["fit_notes"])
    inside = write_table(tmp_path / "inside.csv", [dict(r, seconds=gemm_seconds(r["m"], r["n"], r["k"])) for r in rows],
                         meta)
    assert "fit_notes" not in calibrate([inside], name="in", peak_flops=PEAK).profile["calibration"]
