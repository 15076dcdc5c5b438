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
# # What does a network upgrade buy? CDAC vs BigMac's DCCA
#
# A what-if study with `moesim.sweep`: the BigMac paper's 32-GPU cluster (4 machines x 8 PCIe GPUs,
# one InfiniBand NIC per machine) runs the GPT3-XL MoE (64 experts, top-k, r = 0.25). Today its NICs
# run at 100 Gb/s. Upgrading to 200, 400 or 800 Gb/s costs more per GPU-hour. For fine-grained MoE
# with All-to-All at the hidden size (CDAC) and for BigMac (DCCA, All-to-All at r·h):
#
# * how much faster is a training step, and where does the time go?
# * what does 1B training tokens cost, upgrade included: is the upgrade worth it?
# * what happens to time to first token and per-token latency at inference?
#
# Everything here is simulated (flow-level network with link contention, datasheet GPU profile);
# the whole notebook runs in well under a minute on two CPU cores.

# %%
import os
from pathlib import Path

import pandas as pd

from moesim.dashboard import write_dashboard
from moesim.sweep import load_sweep, read_table, run_sweep

OUT = Path(os.environ.get("MOESIM_NOTEBOOK_OUT", "notebook-output"))
OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 160)

# %% [markdown]
# ## The sweep
#
# A sweep is a mapping (or a YAML file, see `examples/network-upgrade.yaml`): a `base` every scenario
# starts from, a `list` of explicit scenarios (here: one per network option, with what it costs) and a
# `grid` crossed with each of them. Keys are config fields (`moe.top_k`), topology parameters
# (`topology.nic_bandwidth`, with units) and cost inputs (`cost.*`). No `parallel.*` is set, so each
# scenario uses pure expert parallelism over all 32 GPUs (ep = 32).

# %%
sweep = {
    "name": "network-upgrade",
    "base": {
        "model": "gpt3-xl",
        "set": {"run.batch_size": 64, "run.prompt_len": 512, "run.gen_len": 8},
        "topology": {"kind": "bigmac-paper"},
        "cost": {"gpu_hour_usd": 1.50, "train_tokens": "100B"},
    },
    "list": [
        {"topology.nic_bandwidth": "100 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0.00},
        {"topology.nic_bandwidth": "200 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0.05},
        {"topology.nic_bandwidth": "400 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0.12},
        {"topology.nic_bandwidth": "800 Gbit/s", "cost.upgrade_usd_per_gpu_hour": 0.25},
    ],
    "grid": {"moe.structure": ["cdac", "dcca"], "moe.top_k": [4, 8], "run.mode": ["train", "prefill", "decode"]},
}
spec = load_sweep(sweep)
print(f"{len(spec.scenarios)} scenarios, e.g. {dict(spec.scenarios[0].inputs)}")

# %% [markdown]
# Run it. Finished scenarios are journalled next to the output, so running this cell again (or after
# an interruption) only runs what is missing. `jobs=1` runs in this process; the CLI
# (`moesim sweep FILE --out results.parquet`) uses every core, or a Dask cluster with `--scheduler`.

# %%
results = OUT / "network-upgrade.parquet"
report = run_sweep(spec, results, jobs=1, progress=False)
print(f"{report.ok} ok, {report.errors} errors, {report.elapsed_s:.1f} s")
df = read_table(results)
df[["structure", "top_k", "mode", "nic_gbps", "step_time_s", "tokens_per_s", "cost.usd_per_1b_tokens"]].head(8)

# %% [markdown]
# ## Training: speedup and where the time goes

# %%
train = df[(df["mode"] == "train") & (df["status"] == "ok")]
steps = train.pivot_table(index=["top_k", "nic_gbps"], columns="structure", values="step_time_s")
steps["DCCA speedup"] = steps["cdac"] / steps["dcca"]
steps.round(3)

# %%
phases = ["attention", "dispatch", "experts", "combine", "grad_allreduce"]
share = train.set_index(["structure", "top_k", "nic_gbps"])[[f"breakdown_s.{p}" for p in phases]]
share = share.div(train.set_index(["structure", "top_k", "nic_gbps"])["step_time_s"], axis=0)
share.columns = phases
(100 * share).round(1).sort_index()

# %% [markdown]
# On this cluster the All-to-All (dispatch + combine) dominates a CDAC step. The faster NIC helps,
# but only up to the point where the PCIe tree inside each machine (25 GB/s per x16 link, shared
# by the GPUs behind a switch) becomes the bottleneck: beyond 200 Gb/s a NIC upgrade buys little.
# DCCA sends a quarter of the bytes, so it gains less from the network and starts faster.

# %% [markdown]
# ## Cost per 1B training tokens, upgrade included

# %%
cost = train.pivot_table(index=["top_k", "nic_gbps"], columns="structure", values="cost.usd_per_1b_tokens")
cost.round(0)

# %%
for s in ("cdac", "dcca"):
    for k in (4, 8):
        c = cost[s].xs(k, level="top_k")
        best = c.idxmin()
        print(f"{s.upper()} top-{k}: ${c.loc[100.0]:,.0f} per 1B tokens at 100 Gb/s; cheapest at {best:g} Gb/s "
              f"(${c.min():,.0f}, {100 * (1 - c.min() / c.loc[100.0]):.0f}% less)")
print(f"A 100B-token GPT3-XL run at 100 Gb/s: CDAC {train[(train.structure == 'cdac') & (train.top_k == 8)]['cost.train_time_s'].iloc[0] / 86400:.1f} days, "
      f"DCCA {train[(train.structure == 'dcca') & (train.top_k == 8)]['cost.train_time_s'].iloc[0] / 86400:.1f} days (top-8)")

# %% [markdown]
# ## Inference: time to first token, per-token latency, throughput

# %%
inf = df[df["mode"].isin(["prefill", "decode"]) & (df["status"] == "ok")]
lat = inf.pivot_table(index=["mode", "top_k", "nic_gbps"], columns="structure", values="step_time_s") * 1e3
lat["DCCA speedup"] = lat["cdac"] / lat["dcca"]
lat.round(2)

# %% [markdown]
# Prefill moves many tokens per All-to-All and behaves like training; a decode step sends one token
# per sequence, so its All-to-All is latency-bound and the structures (and NIC rates) barely differ.
#
# ## The dashboard
#
# One self-contained HTML file (works offline) with all of this, interactive, filterable by model,
# top-k, r and mode: `moesim dashboard results.parquet -o dashboard.html` does the same.

# %%
html = write_dashboard(results, OUT / "network-upgrade.html", detail=2)
print(f"wrote {html} ({html.stat().st_size / 1e6:.1f} MB)")
