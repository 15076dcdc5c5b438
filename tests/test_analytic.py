"""Closed forms: BigMac Table 3 exactly, independent hand counts, and CDAC/DCCA invariants."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from moesim.analytic import (a2a_bytes_per_step, analyze, flops_per_step, forward_flops_per_token,
                             parameter_count, table3)
from moesim.config import load_config


def cfg_of(preset="gpt3-xl", **kv):
    return load_config(preset, [f"{k.replace('__', '.')}={v}" for k, v in kv.items()])


@pytest.mark.parametrize("preset", ["gpt3-medium", "gpt3-xl", "gpt3-2.7b", "gpt3-6.7b"])
@pytest.mark.parametrize("structure", ["cdac", "dcca"])
@pytest.mark.parametrize("top_k,ep", [(1, 1), (2, 8), (4, 32), (8, 32), (6, 16)])
def test_reproduces_table3_exactly(preset, structure, top_k, ep):
    cfg = cfg_of(preset, moe__structure=structure, moe__top_k=top_k, parallel__ep=ep)
    got, paper = analyze(cfg), table3(cfg)
    for key in ("params", "flops_per_iteration", "a2a_bytes_per_iteration"):
        assert got[key] == pytest.approx(paper[key], rel=1e-12, abs=1e-6), key


def test_hand_count_tiny_cdac_and_dcca():
    """h=8, l=2, v=10, e=4, k=2, r=0.5, s=4, T=16 tokens, ep=2: count every matrix by hand."""
    base = {"model": {"layers": 2, "hidden": 8, "heads": 2, "seq_len": 4, "vocab": 10, "dtype": "fp32"},
            "moe": {"experts": 4, "top_k": 2, "ratio": 0.5},
            "parallel": {"ep": 2}, "run": {"global_batch_tokens": 16}}
    cdac = load_config({**base, "moe": {**base["moe"], "structure": "cdac"}})
    dcca = load_config({**base, "moe": {**base["moe"], "structure": "dcca"}})
    h, l, v, e, f, s, T = 8, 2, 10, 4, 4, 4, 16
    # layers convention: what real_backend builds
    attn = 3 * h * h + 3 * h + h * h + h
    norms = 2 * h + 2 * h
    gate = h * e
    expert_cdac = (h * f + f) + (f * h + h)  # W1+b1, W2+b2 ; h -> f -> h
    expert_dcca = (f * h + h) + (h * f + f)  # d -> h -> d with d = f = 4
    emb = v * h + s * h
    total_cdac = emb + l * (attn + norms + gate + e * expert_cdac) + 2 * h
    total_dcca = emb + l * (attn + norms + gate + e * expert_dcca + 2 * h * f) + 2 * h
    assert parameter_count(cdac, "layers").total == total_cdac == 1440
    assert parameter_count(dcca, "layers").total == total_dcca
    # forward FLOPs per token (layers convention): 2 FLOP per multiply-add
    fwd_cdac = l * (2 * (3 * h * h + h * h) + 2 * 2 * s * h + 2 * h * e + 2 * (2 * h * f + 2 * f * h)) + 2 * v * h
    assert forward_flops_per_token(cdac, "layers").total == fwd_cdac
    assert flops_per_step(cdac, "layers").total == 3 * T * fwd_cdac
    # All-to-All: each token's 2 copies cross to the other rank with probability 1/2, 4 B/elem,
    # dispatch + combine, forward + backward, 2 layers
    assert a2a_bytes_per_step(cdac).total == T * 2 * 0.5 * h * 4 * 2 * 2 * l == 4096
    assert a2a_bytes_per_step(dcca).total == T * 2 * 0.5 * f * 4 * 2 * 2 * l


def test_dense_has_no_all_to_all():
    cfg = cfg_of(moe__structure="dense", parallel__ep=1, parallel__dp=32)
    res = analyze(cfg)
    assert res["a2a_bytes_per_iteration"] == 0
    h, l = 2048, 24
    assert res["params_by_component"]["ffn"] == l * (8 * h * h + 5 * h)


@settings(max_examples=200, deadline=None)
@given(hidden_mult=st.integers(1, 64), log_ep=st.integers(0, 6), top_k=st.integers(1, 8),
       ratio=st.sampled_from([0.125, 0.25, 0.5, 1.0]), layers=st.integers(1, 48),
       dtype=st.sampled_from(["bf16", "fp32"]), shared=st.integers(0, 2),
       mode=st.sampled_from(["train", "prefill", "decode"]), cf=st.sampled_from([None, 0.5, 1.0, 1.25]))
def test_dcca_invariants(hidden_mult, log_ep, top_k, ratio, layers, dtype, shared, mode, cf):
    h, ep = 64 * hidden_mult, 2 ** log_ep
    sets = {"model.hidden": h, "model.heads": 8, "model.layers": layers, "model.dtype": dtype,
            "moe.top_k": top_k, "moe.ratio": ratio, "moe.shared_experts": shared, "parallel.ep": ep,
            "run.mode": mode, "moe.capacity_factor": "null" if cf is None else cf}
    over = [f"{k}={v}" for k, v in sets.items()]
    cdac = load_config("gpt3-medium", over + ["moe.structure=cdac"])
    dcca = load_config("gpt3-medium", over + ["moe.structure=dcca"])
    a_c, a_d = a2a_bytes_per_step(cdac).total, a2a_bytes_per_step(dcca).total
    if ep == 1:
        assert a_c == a_d == 0
    else:
        assert a_d / a_c == pytest.approx(ratio, rel=1e-12)
    d = round(ratio * h)
    for conv in ("paper", "layers"):
        diff = parameter_count(dcca, conv).total - parameter_count(cdac, conv).total
        assert diff == 2 * layers * h * d  # exactly the two shared projections
        fdiff = flops_per_step(dcca, conv).total - flops_per_step(cdac, conv).total
        mult = 3 if mode == "train" else 1
        assert fdiff == pytest.approx(mult * cdac.step_tokens * layers * 4 * h * d, rel=1e-12)
    # dtype scales bytes linearly; training passes twice (fwd + bwd)
    assert a_c == pytest.approx(
        (2 if mode == "train" else 1) * 2 * cdac.step_tokens * top_k * min(1.0, cf or 1.0) * h
        * cdac.model.dtype_bytes * (ep - 1) / ep * layers, rel=1e-12)


def test_breakdowns_sum_to_totals():
    cfg = cfg_of(moe__structure="dcca", moe__shared_experts=2, run__mode="prefill")
    for conv in ("paper", "layers"):
        res = analyze(cfg, conv)
        assert math.isclose(sum(res["params_by_component"].values()), res["params"])
        assert math.isclose(sum(res["flops_by_phase"].values()), res["flops_per_iteration"])
    assert math.isclose(sum(res["a2a_bytes_by_phase"].values()), res["a2a_bytes_per_iteration"])


def test_inference_modes():
    train = cfg_of(moe__top_k=8)
    prefill = cfg_of(moe__top_k=8, run__mode="prefill", run__batch_size=64, run__prompt_len=512)
    decode = cfg_of(moe__top_k=8, run__mode="decode", run__batch_size=64, run__prompt_len=512, run__gen_len=9)
    # prefill passes the All-to-Alls once per layer: half of training's bytes per token
    per_tok = lambda c: a2a_bytes_per_step(c).total / c.step_tokens  # noqa: E731
    assert per_tok(prefill) == pytest.approx(per_tok(train) / 2)
    assert decode.step_tokens == 64 and per_tok(decode) == pytest.approx(per_tok(prefill))
    # decode attends to the mean context 512 + (9+1)/2 = 517 tokens
    h, l = 2048, 24
    attn = forward_flops_per_token(decode).parts["attention"]
    assert attn == l * (8 * h * h + 4 * 517 * h)
