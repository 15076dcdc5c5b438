"""The cost model's arithmetic in closed form, its validation, and `moesim cost` end to end."""
import json
import math
import subprocess

import pytest

from moesim.config import load_config
from moesim.economics import CostInputs, StepMeasure, compare, internode_bytes, parse_count, serving_costs, step_costs
from moesim.errors import ConfigError


def train_step(**kw):
    base = dict(mode="train", step_time_s=2.0, tokens_per_step=1_000_000, gpus=8,
                bytes_by_link_class={"nic": 4e9, "pcie": 10e9}, internode_bytes=2e9)
    base.update(kw)
    return StepMeasure(**base)


def test_training_closed_form():
    c = step_costs(train_step(), CostInputs(gpu_hour_usd=3.6, train_tokens=1e9))
    gpu_h = 8 * 2.0 / 3600
    assert c["gpu_hours_per_step"] == pytest.approx(gpu_h)
    assert c["usd_per_step"] == pytest.approx(3.6 * gpu_h) == pytest.approx(0.016)
    assert c["train_steps"] == 1000
    assert c["train_time_s"] == pytest.approx(2000.0)
    assert c["train_gpu_hours"] == pytest.approx(1000 * gpu_h)
    assert c["train_usd"] == pytest.approx(16.0)
    assert c["usd_per_1b_tokens"] == pytest.approx(16.0)
    assert c["tokens_per_s"] == pytest.approx(500_000)
    assert c["train_bytes.nic"] == pytest.approx(4e12) and c["train_bytes.pcie"] == pytest.approx(1e13)
    assert c["train_internode_bytes"] == pytest.approx(2e12)


def test_training_steps_round_up():
    c = step_costs(train_step(tokens_per_step=300_000), CostInputs(gpu_hour_usd=1.0, train_tokens=1e6))
    assert c["train_steps"] == 4 and c["train_time_s"] == pytest.approx(8.0)


def test_upgrade_and_traffic_charges():
    inp = CostInputs(gpu_hour_usd=2.0, upgrade_usd_per_gpu_hour=0.5, upgrade_usd=1000.0, internode_usd_per_gb=0.01,
                     train_tokens=1e9)
    c = step_costs(train_step(), inp)
    gpu_h = 8 * 2.0 / 3600
    assert c["usd_per_gpu_hour"] == pytest.approx(2.5)
    assert c["compute_usd_per_step"] == pytest.approx(2.5 * gpu_h)
    assert c["traffic_usd_per_step"] == pytest.approx(2e9 / 1e9 * 0.01)
    per_step = 2.5 * gpu_h + 0.02
    assert c["usd_per_step"] == pytest.approx(per_step)
    assert c["train_usd"] == pytest.approx(1000 * per_step + 1000.0)
    assert c["usd_per_1b_tokens"] == pytest.approx(1000 * per_step + 1000.0)   # run of exactly 1B tokens


def test_no_price_no_dollars_but_times():
    c = step_costs(train_step(), CostInputs())
    assert c["usd_per_step"] is None and c["train_usd"] is None and c["usd_per_1b_tokens"] is None
    assert c["train_steps"] == math.ceil(100e9 / 1e6) and c["train_time_s"] == pytest.approx(2.0 * 100_000)


def test_inference_closed_form():
    inp = CostInputs(gpu_hour_usd=3.6)
    pre = StepMeasure(mode="prefill", step_time_s=0.4, tokens_per_step=64 * 512, gpus=8, batch_size=64, gen_len=8)
    dec = StepMeasure(mode="decode", step_time_s=0.01, tokens_per_step=64, gpus=8, batch_size=64, gen_len=8)
    p, d = step_costs(pre, inp), step_costs(dec, inp)
    assert p["ttft_s"] == 0.4 and p["prefill_tokens_per_s"] == pytest.approx(64 * 512 / 0.4)
    assert d["per_token_latency_s"] == 0.01 and d["decode_tokens_per_s"] == pytest.approx(6400)
    usd_dec = 3.6 * 8 * 0.01 / 3600
    assert d["usd_per_million_generated_tokens"] == pytest.approx(usd_dec / 64 * 1e6)
    assert d["usd_per_1b_tokens"] == pytest.approx(usd_dec / 64 * 1e9)
    s = serving_costs(pre, dec, inp)
    assert s["gen_len"] == 8 and s["batch_size"] == 64
    assert s["response_time_s"] == pytest.approx(0.4 + 7 * 0.01)
    assert s["generated_tokens_per_s"] == pytest.approx(64 * 8 / 0.47)
    usd_pre = 3.6 * 8 * 0.4 / 3600
    assert s["usd_per_million_generated_tokens"] == pytest.approx((usd_pre + 7 * usd_dec) / (64 * 8) * 1e6)
    # a one-off upgrade is amortised over the tokens served, when given
    amort = serving_costs(pre, dec, CostInputs(gpu_hour_usd=3.6, upgrade_usd=1e4, serve_tokens=1e9))
    assert amort["usd_per_million_generated_tokens"] == pytest.approx(s["usd_per_million_generated_tokens"] + 1e4 / 1e9 * 1e6)
    with pytest.raises(ValueError):
        serving_costs(dec, pre, inp)


def test_compare_ratios():
    assert compare({"a": 2.0, "b": 0, "c": "x"}, {"a": 1.0, "b": 3}) == {"a": 0.5, "b": None}


@pytest.mark.parametrize("text, value", [("100B", 1e11), ("2.5M", 2.5e6), ("1T", 1e12), ("250k", 2.5e5),
                                         ("1e9", 1e9), (7, 7.0), ("1_000", 1000.0)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("data, field", [({"gpu_hour_usd": -1}, "cost.gpu_hour_usd"),
                                         ({"train_tokens": 0}, "cost.train_tokens"),
                                         ({"internode_usd_per_gb": "cheap"}, "cost.internode_usd_per_gb"),
                                         ({"gpu_hours": 1}, "cost.gpu_hours")])
def test_inputs_validation_names_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        CostInputs.from_mapping(data)
    assert e.value.field == field


def test_internode_bytes_counts_each_byte_once():
    """On a one-switch testbed every inter-node byte crosses two NIC links (out and in)."""
    from moesim.engine import simulate
    from moesim.topology.generators import emulated_testbed
    cfg = load_config("gpt3-medium", ["model.layers=2", "moe.experts=8", "parallel.ep=4", "run.global_batch_tokens=4096"])
    res = simulate(cfg, emulated_testbed(2, 2), "paper-gpu-48gb")
    nic = res.bytes_by_link_class()["nic"]
    assert nic > 0 and internode_bytes(res) == pytest.approx(nic / 2)
    m = StepMeasure.from_result(res)
    assert (m.mode, m.gpus, m.tokens_per_step) == ("train", 4, 4096)


def test_cost_cli_cdac_vs_dcca(moesim_exe):
    p = subprocess.run([moesim_exe, "cost", "--model", "gpt3-medium", "--set", "model.layers=4",
                        "--topo", "kind=cluster", "--topo", "nodes=2", "--topo", "gpus_per_node=4",
                        "--topo", "nic_bandwidth=100 Gbit/s", "--gpu-hour-usd", "2", "--internode-usd-per-gb", "0.01",
                        "--train-tokens", "10B", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    est = json.loads(p.stdout)
    assert est["setup"]["gpus"] == 8 and est["setup"]["parallel"]["ep"] == 8
    for s in ("cdac", "dcca"):
        tr = est[s]["train"]
        assert tr["train_steps"] == math.ceil(10e9 / tr["tokens_per_step"])
        assert tr["usd_per_step"] == pytest.approx(8 * tr["step_time_s"] / 3600 * 2 + tr["internode_bytes_per_step"] / 1e9 * 0.01)
        assert tr["usd_per_1b_tokens"] == pytest.approx(tr["train_usd"] / 10)
        assert set(tr["bytes_by_link_class"]) >= {"nic", "nvlink"}
        assert est[s]["prefill"]["ttft_s"] > 0 and est[s]["decode"]["per_token_latency_s"] > 0
        assert est[s]["serving"]["usd_per_million_generated_tokens"] > 0
    ratio = est["dcca_over_cdac"]
    assert ratio["train"]["a2a_bytes_per_step"] == pytest.approx(0.25)    # BigMac: All-to-All at r*h
    assert ratio["train"]["step_time_s"] < 1                               # DCCA is faster on a 100G network
    p = subprocess.run([moesim_exe, "cost", "--model", "gpt3-medium", "--set", "model.layers=2", "--modes", "train",
                        "--gpu-hour-usd", "2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "dollars per 1B tokens" in p.stdout and "DCCA/CDAC" in p.stdout and "training time" in p.stdout


@pytest.mark.parametrize("args, words", [(["--gpu-hour-usd", "-3"], "cost.gpu_hour_usd"),
                                         (["--topo", "intra=pcie"], "topology.intra"),
                                         (["--modes", "serve"], "unknown mode 'serve'"),
                                         (["--topology", "nope.json"], "no such file")])
def test_cost_cli_errors(moesim_exe, args, words):
    p = subprocess.run([moesim_exe, "cost", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr
