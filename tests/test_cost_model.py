"""Device profiles and the cost model."""
import numpy as np
import pytest

from moesim.cost import CostModel, find_profile, load_profile
from moesim.errors import InputFileError, MoesimError

SHIPPED = ["paper-gpu-48gb", "a100-sxm-80gb", "h100-sxm", "h200-sxm"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_datasheet_profiles_load(name):
    p = find_profile(name)
    assert p.status == "datasheet" and p.provenance["source"]
    assert p.device.peak_flops["fp16"] > 1e14 and p.device.memory_bandwidth > 5e11


def test_paper_gpu_matches_paper():
    p = find_profile("paper-gpu-48gb")
    assert p.device.peak_flops["fp16"] == 149.7e12 and p.device.memory_bytes == 48e9


def test_gemm_roofline_closed_form():
    model = CostModel(find_profile("h100-sxm"))
    dev = model.device
    m = n = k = 16384
    eff = dev.gemm_efficiency_max * (m / (m + dev.gemm_half_size)) ** 3
    expected = 2 * m * n * k / (989e12 * eff) + dev.op_overhead_s
    assert model.gemm_time(m, n, k, "bf16") == pytest.approx(expected, rel=1e-12)
    # a GEMV is memory bound: weights (k*n) dominate the bytes moved
    t = model.gemm_time(1, 8192, 8192, "bf16")
    mem = 2 * (8192 + 8192 * 8192 + 8192) / (dev.memory_bandwidth * dev.memory_efficiency)
    assert t == pytest.approx(mem + dev.op_overhead_s, rel=1e-12)
    # zero-size work costs nothing, count multiplies, arrays broadcast
    assert model.gemm_time(0, 10, 10, "bf16") == 0
    assert model.gemm_time(512, 512, 512, "bf16", count=3) == pytest.approx(3 * model.gemm_time(512, 512, 512, "bf16"))
    ts = model.gemm_time(np.array([64, 128, 0]), 1024, 1024, "bf16")
    assert ts.shape == (3,) and ts[0] < ts[1] and ts[2] == 0
    assert model.memory_time(dev.memory_bandwidth * dev.memory_efficiency) == pytest.approx(1 + dev.op_overhead_s)


def test_efficiency_grows_with_size_and_is_bounded():
    model = CostModel(find_profile("a100-sxm-80gb"))
    sizes = np.array([1, 8, 64, 512, 4096, 65536])
    eff = model.gemm_efficiency(sizes, sizes, sizes)
    assert np.all(np.diff(eff) > 0) and eff[-1] <= model.device.gemm_efficiency_max


GOOD = """name: x
status: measured
provenance: {source: test}
device:
  peak_flops: {fp32: 1.0e11}
  memory_bandwidth: 1.0e10
  gemm: {efficiency_max: 0.5, half_size: 10}
"""


@pytest.mark.parametrize("mutation,needle", [
    (("status: measured", "status: guessed"), "field 'status'"),
    (("provenance: {source: test}", "provenance: {}"), "provenance"),
    (("memory_bandwidth: 1.0e10", "memory_bandwidth: -3"), "device.memory_bandwidth"),
    (("memory_bandwidth: 1.0e10", "memory_bandwidth: .nan"), "device.memory_bandwidth"),
    (("memory_bandwidth: 1.0e10", "memory_bandwidth: fast"), "device.memory_bandwidth"),
    (("efficiency_max: 0.5", "efficiency_max: 1.5"), "device.gemm.efficiency_max"),
    (("fp32: 1.0e11", "int8: 1.0e11"), "device.peak_flops.int8"),
    (("  memory_bandwidth: 1.0e10\n", ""), "missing field 'device.memory_bandwidth'"),
    (("name: x", "name: [x"), "not valid YAML"),
    (("  memory_bandwidth: 1.0e10\n", "  memory_bandwidth: 1.0e10\n  op_overhead_overlaps: sometimes\n"),
     "device.op_overhead_overlaps"),
])
def test_bad_profiles_name_file_and_field(tmp_path, mutation, needle):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.replace(*mutation))
    with pytest.raises(InputFileError) as err:
        load_profile(f)
    assert needle in str(err.value) and str(f) in str(err.value)


def test_good_profile_and_unknown_name(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    p = load_profile(f)
    assert p.device.op_overhead_s == 0 and p.device.memory_efficiency == 1.0
    with pytest.raises(MoesimError, match="no device profile named 'nope'"):
        find_profile("nope")


def test_overlapping_overhead_prices_the_larger_of_issue_and_work(tmp_path):
    """``op_overhead_overlaps``: an op costs max(overhead, work) (a queued GPU stream), not the sum."""
    base = GOOD.replace("  memory_bandwidth: 1.0e10\n", "  memory_bandwidth: 1.0e10\n  op_overhead_s: 1.0e-3\n")
    (tmp_path / "over.yaml").write_text(base.replace("op_overhead_s: 1.0e-3\n",
                                                     "op_overhead_s: 1.0e-3\n  op_overhead_overlaps: true\n"))
    (tmp_path / "added.yaml").write_text(base)
    over, added = CostModel(load_profile(tmp_path / "over.yaml")), CostModel(load_profile(tmp_path / "added.yaml"))
    assert over.device.op_overhead_overlaps and not added.device.op_overhead_overlaps
    assert over.memory_time(1e6) == pytest.approx(1e-3)               # 0.1 ms of work hides under 1 ms
    assert added.memory_time(1e6) == pytest.approx(1.1e-3)
    assert over.memory_time(1e8) == pytest.approx(1e-2)               # 10 ms of work hides the overhead
    assert added.memory_time(1e8) == pytest.approx(1.1e-2)
    m = n = k = 2000
    work = 2 * m * n * k / (1e11 * 0.5 * (m / (m + 10)) ** 3)         # 0.32 s, compute bound
    assert over.gemm_time(m, n, k, "fp32", count=2) == pytest.approx(2 * work, rel=1e-12)
    assert added.gemm_time(m, n, k, "fp32") == pytest.approx(work + 1e-3, rel=1e-12)
    assert over.gemm_time(4, 4, 4, "fp32") == pytest.approx(1e-3) and over.gemm_time(0, 4, 4, "fp32") == 0


def test_committed_h200_profile_is_reproduced_by_its_command(tmp_path):
    """calibration/h200-sxm-measured.yaml is what its recorded command fits from the committed H200
    tables (ops timed in a queue: the overhead overlaps), and its numbers are physical: efficiency
    below 1, memory bandwidth below the H200's 4.8 TB/s datasheet."""
    import shlex
    import yaml
    from pathlib import Path
    from moesim.calibrate import calibrate
    root = Path(__file__).resolve().parents[1]
    prof = find_profile("h200-sxm-measured")
    assert prof.status == "measured" and prof.device.op_overhead_overlaps
    assert prof.device.gemm_efficiency_max < 1 and prof.device.memory_bandwidth < find_profile("h200-sxm").device.memory_bandwidth
    committed = yaml.safe_load((root / "calibration/h200-sxm-measured.yaml").read_text())
    argv = shlex.split(committed["provenance"]["command"])
    tables = [root / a for a in argv[2:] if a.endswith(".csv")]
    peak = float(argv[argv.index("--peak-flops") + 1])
    cal = calibrate(tables, name="h200-sxm-measured", peak_flops=peak)
    for key in ("memory_bandwidth", "op_overhead_s"):
        assert cal.profile["device"][key] == pytest.approx(committed["device"][key], rel=1e-4)
    for key in ("efficiency_max", "half_size"):
        assert cal.profile["device"]["gemm"][key] == pytest.approx(committed["device"]["gemm"][key], rel=1e-4)
    assert cal.profile["device"]["op_overhead_overlaps"] is True
