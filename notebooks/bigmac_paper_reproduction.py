# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # BigMac's speed experiments, in simulation
#
# Jin et al., "BigMac: A Communication-Efficient Mixture-of-Experts Model Structure for Fast
# Training and Inference" (AAAI 2025) compare fine-grained MoE (CDAC: All-to-All at the hidden size
# h) with BigMac (DCCA: descend to r·h before the All-to-All, ascend after it) on a real cluster.
# This notebook re-runs their setups in moesim:
#
# * **Cluster**: 4 machines x 8 GPUs (48 GB, ~149.7 TFLOP/s FP16, PCIe 4.0 x16), one 100 Gb/s
#   InfiniBand NIC per machine (`bigmac_paper()`; the PCIe tree inside a machine is an assumption,
#   see its docstring).
# * **Models**: GPT3-Medium, -XL, -2.7B and -6.7B with MoE in every layer, 64 experts, r = 0.25,
#   capacity factor 1.2; global batch 64 x 2048 tokens; pure expert parallelism ep = 32.
# * **Experiments**: training speed for top-4/top-8 on every model; a top-k sweep (1..8); expert x
#   tensor parallelism (ep, tp) = (32/tp, tp); Megatron-style inference (128k tokens a batch, prompts
#   128-1024, ep 16 and 32); DeepSpeed-Inference-style generation (prompt 128, 1-10 new tokens, ep 16).
#
# The paper's measured numbers are not reproduced here; what to compare is the shape: DCCA's
# advantage grows with the All-to-All share (more experts per token, slower network), it shrinks
# when there is little to communicate (decode), and DCCA costs ~4.5% more FLOPs (GPT3-XL).

# %%
import os
from pathlib import Path

import pandas as pd

from moesim.analytic import analyze
from moesim.config import load_config
from moesim.dashboard import write_dashboard
from moesim.economics import StepMeasure, serving_costs
from moesim.sweep import read_table, run_sweep

OUT = Path(os.environ.get("MOESIM_NOTEBOOK_OUT", "notebook-output"))
OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 160)
MODELS = ["gpt3-medium", "gpt3-xl", "gpt3-2.7b", "gpt3-6.7b"]
JOBS = 2  # local worker processes


def sweep(name, spec):
    out = OUT / f"{name}.parquet"
    rep = run_sweep(spec, out, jobs=JOBS, progress=False)
    assert rep.errors == 0, rep.error_messages
    return read_table(out)


def speedup_table(df, index):
    t = df.pivot_table(index=index, columns="structure", values="step_time_s")
    t["speedup"] = t["cdac"] / t["dcca"]
    return t


# %% [markdown]
# ## The analytic side (the paper's Table 3)
#
# DCCA adds the two shared projections (a few % of FLOPs and parameters) and divides the All-to-All
# bytes by 1/r = 4.

# %%
rows = []
for m in MODELS:
    for s in ("cdac", "dcca"):
        a = analyze(load_config(m, [f"moe.structure={s}", "moe.top_k=8"]))
        rows.append({"model": m, "structure": s, "params_G": a["params"] / 1e9,
                     "TFLOP_per_iteration": a["flops_per_iteration"] / 1e12,
                     "a2a_GB_per_iteration": a["a2a_bytes_per_iteration"] / 1e9})
pd.DataFrame(rows).round(3)

# %% [markdown]
# ## 1. Training speed, every model, top-4 and top-8, plus a top-k sweep on GPT3-XL

# %%
train = sweep("paper-train", {
    "base": {"topology": {"kind": "bigmac-paper"}, "cost": {"gpu_hour_usd": 1.5, "train_tokens": "100B"}},
    "list": [{"model": m, "moe.top_k": k} for m in MODELS for k in (4, 8)]
            + [{"model": "gpt3-xl", "moe.top_k": k} for k in (1, 2, 6)],
    "grid": {"moe.structure": ["cdac", "dcca"]},
})
t = speedup_table(train, ["model", "top_k"])
t["cdac_a2a_share_%"] = 100 * train[train.structure == "cdac"].set_index(["model", "top_k"]).eval(
    "(`breakdown_s.dispatch` + `breakdown_s.combine`) / step_time_s")
t.round(3)

# %%
xl = t.xs("gpt3-xl", level="model")
print("GPT3-XL, DCCA speedup over CDAC by top-k:", ", ".join(f"k={k}: {v:.2f}x" for k, v in xl["speedup"].items()))

# %% [markdown]
# ## 2. Expert x tensor parallelism: (ep, tp) = (32/tp, tp), GPT3-XL top-4
#
# With tensor parallelism the tp ranks of a group split the token copies, the All-to-All spans
# fewer ranks, and tensor-parallel collectives appear (`tp_comm`).

# %%
eptp = sweep("paper-ep-tp", {
    "base": {"model": "gpt3-xl", "topology": {"kind": "bigmac-paper"}},
    "grid": {"parallel.tp": [1, 2, 4], "moe.structure": ["cdac", "dcca"]},
})
t = speedup_table(eptp, ["tp", "ep"])
t["cdac_tp_comm_s"] = eptp[eptp.structure == "cdac"].set_index(["tp", "ep"])["breakdown_s.tp_comm"]
t.round(3)

# %% [markdown]
# ## 3. Megatron-style inference: 128k tokens a batch, prompts 128-1024, ep 16 and 32
#
# One prefill step over 131072 prompt tokens (batch = 131072 / prompt length); ep = 16 uses two of
# the four machines, ep = 32 all four.

# %%
prefill = sweep("paper-prefill", {
    "base": {"model": "gpt3-xl", "topology": {"kind": "bigmac-paper"}, "run.mode": "prefill"},
    "list": [{"run.prompt_len": p, "run.batch_size": 131072 // p, "topology.nodes": n}
             for p in (128, 256, 512, 1024) for n in (2, 4)],
    "grid": {"moe.structure": ["cdac", "dcca"]},
})
t = speedup_table(prefill, ["ep", "prompt_len"])
t.round(3)

# %% [markdown]
# ## 4. DeepSpeed-Inference-style generation: prompt 128, 1-10 new tokens, ep 16
#
# Response time = time to first token (the prefill) + (n - 1) decode steps, each decode step at the
# mean context of an n-token generation.

# %%
gen = sweep("paper-generate", {
    "base": {"model": "gpt3-xl", "topology": {"kind": "bigmac-paper", "nodes": 2},
             "set": {"run.prompt_len": 128, "run.batch_size": 64}},
    "grid": {"run.gen_len": [1, 2, 4, 6, 8, 10], "run.mode": ["prefill", "decode"],
             "moe.structure": ["cdac", "dcca"]},
})
rows = []
for (s, g), grp in gen.groupby(["structure", "gen_len"]):
    step = {r["mode"]: StepMeasure(mode=r["mode"], step_time_s=r["step_time_s"], tokens_per_step=r["tokens_per_step"],
                                   gpus=int(r["gpus"]), gen_len=int(g)) for _, r in grp.iterrows()}
    sv = serving_costs(step["prefill"], step["decode"])
    rows.append({"structure": s, "new_tokens": g, "ttft_ms": 1e3 * sv["ttft_s"],
                 "per_token_ms": 1e3 * sv["per_token_latency_s"], "response_ms": 1e3 * sv["response_time_s"]})
resp = pd.DataFrame(rows).pivot_table(index="new_tokens", columns="structure", values="response_ms")
resp["speedup"] = resp["cdac"] / resp["dcca"]
resp.round(2)

# %% [markdown]
# The first token carries a whole prompt's All-to-All, where DCCA helps most; every further token
# moves one token per sequence, a small, latency-bound All-to-All where r·h instead of h barely
# matters. So the end-to-end gain of DCCA falls as more tokens are generated.
#
# ## All of it in one dashboard

# %%
allrows = pd.concat([train, eptp, prefill, gen], ignore_index=True)
allrows["index"] = range(len(allrows))
html = write_dashboard(allrows, OUT / "paper-speed.html", detail=2)
print(f"{len(allrows)} simulated scenarios; dashboard {html} ({html.stat().st_size / 1e6:.1f} MB)")
