"""Sweep files: parsing, validation, expansion, default layout, the tidy table, resume and errors."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from moesim.errors import ConfigError, MoesimError
from moesim.sweep import (SweepSpecError, build_config, default_layout, load_sweep, parse_spec, read_table,
                          run_scenario, run_sweep)
from moesim.sweep.store import journal_dir

# a small model on a 2 x 2 PCIe cluster: each scenario simulates in ~10-30 ms
SMALL = {
    "model": "gpt3-medium",
    "set": {"model.layers": 2, "run.global_batch_tokens": 4096, "moe.experts": 8},
    "topology": {"kind": "cluster", "nodes": 2, "gpus_per_node": 2, "intra": "pcie"},
    "profile": "paper-gpu-48gb",
    "cost": {"gpu_hour_usd": 2.0, "train_tokens": "1B"},
}


def small_spec(**grid):
    return {"base": json.loads(json.dumps(SMALL)), "grid": grid or {"moe.structure": ["cdac", "dcca"]}}


# ---- parsing and validation ------------------------------------------------------------------------------
def test_grid_list_product_and_canonical_values():
    spec = parse_spec({
        "base": {"model": "gpt3-medium"},
        "list": [{"topology.nic_bandwidth": "100 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0},
                 {"topology.nic_bandwidth": "400Gbps", "cost.upgrade_usd_per_gpu_hour": 0.2}],
        "grid": {"moe.structure": ["cdac", "dcca"], "moe.top_k": [2, 4, 8]},
    })
    assert len(spec.scenarios) == 2 * 2 * 3
    first = spec.scenarios[0].inputs
    assert first["topology.nic_bandwidth"] == 12.5e9 and first["model"] == "gpt3-medium"
    assert spec.scenarios[-1].inputs["topology.nic_bandwidth"] == 50e9
    assert [s.index for s in spec.scenarios] == list(range(12))
    assert len({s.id for s in spec.scenarios}) == 12


def test_ids_are_stable_hashes_of_canonical_inputs():
    a = parse_spec({"base": {"model": "gpt3-xl"}, "grid": {"topology.nic_bandwidth": ["100 Gbit/s"]}}).scenarios[0]
    b = parse_spec({"list": [{"model": "gpt3-xl", "topology.nic_bandwidth": 12.5e9}]}).scenarios[0]
    c = parse_spec({"list": [{"model": "gpt3-xl", "topology.nic_bandwidth": "200 Gbit/s"}]}).scenarios[0]
    assert a.id == b.id != c.id
    assert len(a.id) == 16


def test_duplicate_scenarios_are_merged():
    spec = parse_spec({"list": [{"moe.top_k": 4}, {"moe.top_k": 4}, {"moe.top_k": 8}]})
    assert len(spec.scenarios) == 2 and spec.duplicates == 1


@pytest.mark.parametrize("data, key, words", [
    ({"grid": {"moe.topk": [1]}}, "moe.topk", "unknown config field"),
    ({"grid": {"moe.top_k": ["four"]}}, "moe.top_k", "integer"),
    ({"grid": {"moe.top_k": 4}}, "grid.moe.top_k", "non-empty list"),
    ({"grid": {"topology.nic_bandwidth": ["fast"]}}, "topology.nic_bandwidth", "cannot parse bandwidth"),
    ({"grid": {"topology.intra": ["nvlink"]}}, "topology.intra", "nvswitch, pcie"),
    ({"grid": {"topology.intra": ["pcie"]}}, "topology.intra", "not a parameter of the 'bigmac-paper'"),
    ({"grid": {"topology.warp": [1]}}, "topology.warp", "unknown topology parameter"),
    ({"base": {"topology": {"file": "x.json", "nodes": 2}}, "list": [{}]}, "topology.nodes", "topology.file"),
    ({"grid": {"a2a_algorithm": ["ring"]}}, "a2a_algorithm", "direct, 2d"),
    ({"grid": {"cost.gpu_hour": [1]}}, "cost.gpu_hour", "unknown cost input"),
    ({"grid": {"cost.gpu_hour_usd": [-1]}}, "cost.gpu_hour_usd", "non-negative"),
    ({"grid": {"speed": [1]}}, "speed", "unknown sweep key"),
    ({"grids": {}}, "grids", "unknown top-level key"),
    ({"base": {"sett": {}}, "list": [{}]}, "base.sett", "unknown key"),
    ({"list": [{"moe.top_k": 2}], "grid": {"moe.top_k": [4]}}, "moe.top_k", "grid also varies"),
    ({"list": [3]}, "list[0]", "mapping"),
    ({"grid": {"topology.nodes": [0]}, "base": {"topology": {"kind": "cluster"}}}, "topology.nodes", ">= 1"),
])
def test_validation_names_the_key(data, key, words):
    with pytest.raises(SweepSpecError) as e:
        parse_spec(data)
    assert e.value.field == key
    assert words in str(e.value)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, MoesimError)


def test_sweep_file_paths_are_relative_to_the_file(tmp_path):
    model = tmp_path / "tiny.yaml"
    model.write_text("preset: gpt3-medium\nmodel: {layers: 2}\n")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {model: tiny.yaml}\ngrid: {moe.structure: [cdac]}\n")
    spec = load_sweep(sweep)
    sc = spec.scenarios[0]
    assert sc.inputs["model"] == "tiny.yaml" and sc.resolved["model"] == str(model.resolve())
    # the id covers the file's contents: editing the model file changes it
    model.write_text("preset: gpt3-medium\nmodel: {layers: 4}\n")
    assert load_sweep(sweep).scenarios[0].id != sc.id


def test_bad_sweep_file_errors(tmp_path):
    with pytest.raises(MoesimError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [1, 2\n")
    with pytest.raises(MoesimError, match="not valid YAML"):
        load_sweep(bad)
    bad.write_text("grid: {moe.top_k: [0]}\n")
    with pytest.raises(MoesimError, match=r"bad.yaml: sweep key 'moe.top_k'"):
        load_sweep(bad)


# ---- default parallel layout -----------------------------------------------------------------------------
def test_default_layout_is_pure_expert_parallelism():
    assert default_layout({}, 32, 64, "cdac") == {"parallel.tp": 1, "parallel.dp": 32, "parallel.ep": 32}
    assert default_layout({}, 128, 64, "dcca") == {"parallel.tp": 1, "parallel.dp": 128, "parallel.ep": 64}
    assert default_layout({}, 48, 64, "cdac")["parallel.ep"] == 16          # gcd: ep must divide both
    assert default_layout({}, 8, 64, "dense")["parallel.ep"] == 1
    assert default_layout({"parallel.ep": 8}, 32, 64, "cdac") == {"parallel.tp": 1, "parallel.dp": 32}
    assert default_layout({"parallel.tp": 2}, 32, 64, "cdac") == {"parallel.dp": 16, "parallel.ep": 16}
    with pytest.raises(MoesimError, match="does not divide"):
        default_layout({"parallel.tp": 3}, 32, 64, "cdac")


def test_build_config_overrides_the_presets_layout():
    cfg = build_config("gpt3-xl", {"moe.top_k": 8}, 8)   # the preset says ep=32
    assert (cfg.parallel.dp_size, cfg.parallel.ep, cfg.world_size, cfg.moe.top_k) == (8, 8, 8, 8)


# ---- running --------------------------------------------------------------------------------------------
def test_run_scenario_row_columns():
    sc = parse_spec(small_spec()).scenarios[1]
    row = run_scenario(sc)
    assert row["status"] == "ok", row["error"]
    assert row["structure"] == "dcca" and row["gpus"] == 4 and row["ep"] == 4 and row["dp"] == 4
    assert row["step_time_s"] > 0 and row["tokens_per_s"] == pytest.approx(4096 / row["step_time_s"])
    bd = {k: v for k, v in row.items() if k.startswith("breakdown_s.")}
    assert {"breakdown_s.dispatch", "breakdown_s.combine", "breakdown_s.descend"} <= set(bd)
    assert sum(bd.values()) == pytest.approx(row["step_time_s"], rel=1e-6)
    assert row["bytes.nic"] > 0 and row["internode_bytes_per_step"] > 0
    assert row["nic_gbps"] == pytest.approx(400.0)       # the cluster generator's default NIC
    assert row["cost.usd_per_step"] == pytest.approx(4 * row["step_time_s"] / 3600 * 2.0)
    assert row["in.moe.structure"] == "dcca" and json.loads(row["inputs_json"])["moe.structure"] == "dcca"


def test_failing_scenario_records_error_and_sweep_goes_on(tmp_path):
    data = small_spec(**{"moe.top_k": [2, 16]})          # 16 > 8 experts: invalid config
    out = tmp_path / "r.parquet"
    rep = run_sweep(data, out, jobs=1, progress=False)
    assert (rep.total, rep.ok, rep.errors, rep.missing) == (2, 1, 1, 0)
    df = read_table(out)
    bad = df[df["status"] == "error"].iloc[0]
    assert "moe.top_k" in bad["error"] and "exceeds the number of experts" in bad["error"]
    assert bad["in.moe.top_k"] == 16 and pd.isna(bad["step_time_s"])
    # resume: nothing to do; --retry-errors runs only the failed one again
    assert run_sweep(data, out, jobs=1, progress=False).ran == 0
    assert run_sweep(data, out, jobs=1, progress=False, retry_errors=True).ran == 1
    assert run_sweep(data, out, jobs=1, progress=False, fresh=True).ran == 2


def test_table_is_tidy_one_row_per_scenario(tmp_path):
    data = small_spec(**{"moe.structure": ["cdac", "dcca"], "topology.nic_bandwidth": ["100 Gbit/s", "400 Gbit/s"]})
    out = tmp_path / "r.parquet"
    run_sweep(data, out, jobs=1, progress=False)
    df = read_table(out)
    assert len(df) == 4 and df["scenario_id"].is_unique and (df["status"] == "ok").all()
    assert list(df["index"]) == [0, 1, 2, 3]
    for col in ("model", "structure", "top_k", "ratio", "mode", "step_time_s", "tokens_per_s", "a2a_bytes_per_step",
                "breakdown_s.dispatch", "bytes.nic", "bytes.pcie", "cost.usd_per_1b_tokens", "cost.train_time_s",
                "in.topology.nic_bandwidth", "error"):
        assert col in df, col
    assert df["step_time_s"].dtype.kind == "f" and df["top_k"].dtype.kind == "i"
    c, d = df[df.structure == "cdac"], df[df.structure == "dcca"]
    assert (d["a2a_bytes_per_step"].values / c["a2a_bytes_per_step"].values == pytest.approx(0.25))
    slow, fast = c.sort_values("nic_gbps")["step_time_s"].values
    assert slow > fast  # a faster NIC helps CDAC
    # the same sweep to CSV gives the same numbers
    run_sweep(data, tmp_path / "r.csv", jobs=1, progress=False)
    csv = read_table(tmp_path / "r.csv")
    assert list(csv["step_time_s"]) == pytest.approx(list(df["step_time_s"]))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from moesim.cli import main\n"
            f"sys.exit(main(['sweep', {str(tmp_path / 's.yaml')!r}, '--out', {str(tmp_path / 'r.parquet')!r}]))")
    (tmp_path / "s.yaml").write_text(json.dumps(small_spec()))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "needs pyarrow" in p.stderr and ".csv" in p.stderr
    assert not (tmp_path / "r.parquet").exists() and not journal_dir(tmp_path / "r.parquet").exists()


def test_cli_check_and_run(tmp_path, moesim_exe):
    spec = small_spec(**{"moe.top_k": [2, 16]})
    f = tmp_path / "s.yaml"
    f.write_text(json.dumps(spec))
    p = subprocess.run([moesim_exe, "sweep", str(f), "--check"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "2 scenarios, 1 invalid" in p.stdout and "exceeds the number of experts" in p.stdout
    out = tmp_path / "r.parquet"
    p = subprocess.run([moesim_exe, "sweep", str(f), "--out", str(out), "--jobs", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "1 ok, 1 error(s)" in p.stdout and "exceeds the number of experts" in p.stdout
    # progress bar with rate and ETA on stderr
    assert "scenario/s" in p.stderr or "s/scenario" in p.stderr
    assert "100%" in p.stderr and "<" in p.stderr
    f.write_text("grid: {moe.top_k: [1]}\nbase: {topology: {kind: cluster, intra: nvlink}}\n")
    p = subprocess.run([moesim_exe, "sweep", str(f), "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "sweep key 'topology.intra'" in p.stderr and "Traceback" not in p.stderr


def test_examples_are_valid():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "examples"
    files = sorted(root.glob("*.yaml"))
    assert files, "examples/*.yaml missing"
    from moesim.sweep import check_sweep
    for f in files:
        spec = load_sweep(f)
        assert spec.scenarios, f
        assert check_sweep(spec) == [], f


def test_topology_file_algorithm_and_ratio_keys(tmp_path):
    from moesim.topology import save_topology
    from moesim.topology.generators import emulated_testbed
    save_topology(emulated_testbed(2, 2, link_bandwidth=125e6), tmp_path / "tb.json")
    base = json.loads(json.dumps(SMALL))
    del base["topology"]
    base["topology"] = {"file": "tb.json"}
    (tmp_path / "s.yaml").write_text(json.dumps({
        "base": base, "grid": {"a2a_algorithm": ["direct", "2d"], "moe.ratio": [0.125, 0.25],
                               "moe.structure": ["dcca"]}}))
    spec = load_sweep(tmp_path / "s.yaml")
    assert spec.scenarios[0].resolved["topology.file"] == str((tmp_path / "tb.json").resolve())
    out = tmp_path / "r.parquet"
    rep = run_sweep(spec, out, jobs=1, progress=False)
    assert rep.ok == 4, rep.error_messages
    df = read_table(out)
    assert set(df["a2a_algorithm"]) == {"direct", "2d"} and set(df["ratio"]) == {0.125, 0.25}
    assert (df["gpus"] == 4).all() and (df["nodes"] == 2).all() and list(df["nic_gbps"]) == pytest.approx([1.0] * 4)
    a2a = df.set_index(["a2a_algorithm", "ratio"])["a2a_bytes_per_step"]
    assert a2a[("direct", 0.125)] == pytest.approx(a2a[("direct", 0.25)] / 2)
