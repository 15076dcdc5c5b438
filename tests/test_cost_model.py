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
