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
# # Calibrating moesim against your own cluster
#
# moesim's predictions are only as good as two inputs: the **topology** (what is connected to what,
# at which rate) and the **device profile** (how fast a GPU really runs the GEMMs and memory-bound
# ops of a MoE layer, and the per-message and per-collective overheads). Shipped profiles in
# `calibration/` are `datasheet` numbers; this walk-through replaces them with `measured` ones.
#
# 1. Describe your cluster as a topology file.
# 2. Measure compute on one device and fit the profile's efficiency curve (done here for real, on
#    the CPU this notebook runs on, with NumPy, so it runs anywhere in seconds).
# 3. Write a `measured` profile with provenance and check it against the measurements.
# 4. Measure the network: the All-to-All and all-reduce microbenchmarks, per link class.
# 5. Predict with the calibrated profile, and validate against real step times.
#
# On a real GPU cluster steps 2 and 4 use the `real_backend` microbenchmarks (PyTorch, NCCL) and
# `moesim calibrate`; the commands are given where they apply.

# %%
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from moesim.config import load_config
from moesim.cost import CostModel, find_profile, load_profile
from moesim.engine import simulate
from moesim.topology import load_topology, save_topology, summarize
from moesim.topology.generators import cluster

OUT = Path(os.environ.get("MOESIM_NOTEBOOK_OUT", "notebook-output"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. Describe the cluster
#
# The generators cover the common shapes; pass your numbers (per direction, bytes/s or strings such as
# "200 Gbit/s" in sweep files). Here: 2 nodes x 4 GPUs on PCIe, one 200 Gb/s NIC per GPU pair, a
# leaf-spine fabric. Save it as a file (node-link JSON, or GraphML) and edit it by hand if your
# machines differ: every node has a `kind`, every edge a `bandwidth`, `latency` and `link_class`.

# %%
topo = cluster(nodes=2, gpus_per_node=4, intra="pcie", nics_per_node=2, nic_bandwidth=200e9 / 8,
               fabric="leafspine", leaf_ports=4, spines=2, device=None, name="my-cluster")
topo_file = OUT / "my-cluster.json"
save_topology(topo, topo_file)
topo = load_topology(topo_file)
print(topo)
{k: v for k, v in summarize(topo).items() if k in ("gpus", "hosts", "gpus_per_host", "link_classes")}

# %% [markdown]
# ## 2. Measure compute and fit the efficiency curve
#
# The cost model prices a GEMM (M x K) @ (K x N) as
# `overhead + max(2MNK / (peak * eff), bytes / (memory_bw * mem_eff))` with
# `eff = efficiency_max * g(M) g(N) g(K)`, `g(x) = x / (x + half_size)`: small dimensions leave the
# units idle, large ones saturate. We time GEMMs of several shapes (median of repetitions), then fit
# `efficiency_max` and `half_size`. On a GPU node the same table comes from
#
# ```bash
# torchrun --nproc_per_node=8 -m real_backend.microbench --kinds gemm --dtype bf16 --model gpt3-xl --out gemm.csv
# ```
#
# (every rank measures at once, so the numbers include the contention of a full node).

# %%
def time_gemm(m, n, k, reps=5, dtype=np.float32):
    a = np.random.default_rng(0).standard_normal((m, k)).astype(dtype)
    b = np.random.default_rng(1).standard_normal((k, n)).astype(dtype)
    a @ b  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


shapes = [(m, n, k) for m in (16, 64, 256) for (n, k) in ((64, 64), (256, 256), (512, 512))]
shapes += [(512, 512, 512), (1024, 512, 512)]
rows = []
for m, n, k in shapes:
    t = time_gemm(m, n, k)
    rows.append({"m": m, "n": n, "k": k, "seconds": t, "flop": 2 * m * n * k, "gflops": 2 * m * n * k / t / 1e9})
gemm = pd.DataFrame(rows)
gemm.round(6)

# %% [markdown]
# Peak: the best rate seen on the largest shapes stands in for the datasheet peak (on a GPU use the
# datasheet tensor-core peak and let `efficiency_max` absorb the rest). Memory bandwidth: time a large
# copy. Overhead: the time of the smallest GEMM the curve cannot explain.

# %%
def time_copy(nbytes=32 * 2**20, reps=5):
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        ts.append(time.perf_counter() - t0)
    return 2 * src.nbytes / min(ts)          # bytes read + written per second


# the fit `moesim calibrate` runs: relative least squares over (overhead, 1/efficiency_max,
# 1/memory bandwidth) for each candidate half_size, refined on a log grid
from moesim.calibrate.fit import fit_compute

copy_bytes = 32 * 2**20
memory = pd.DataFrame({"size_bytes": [2 * copy_bytes], "seconds": [2 * copy_bytes / time_copy(copy_bytes)]})
peak = float(gemm["gflops"].max() * 1e9)
fit = fit_compute(gemm, memory, peak)
eff_max, half, overhead = float(min(fit.efficiency_max, 1.0)), float(fit.half_size), float(fit.op_overhead_s)
mem_bw = float(fit.memory_bandwidth or 2 * copy_bytes / memory["seconds"].iloc[0])
gemm["predicted_s"] = fit.gemm_seconds(gemm.m, gemm.n, gemm.k)
gemm["error_%"] = 100 * (gemm["predicted_s"] / gemm["seconds"] - 1)
print(f"peak {peak / 1e9:.1f} GFLOP/s, memory {mem_bw / 1e9:.1f} GB/s, efficiency_max {eff_max:.2f}, "
      f"half_size {half:.1f}, overhead {overhead * 1e6:.1f} us")
print(f"fit residuals: median |error| {gemm['error_%'].abs().median():.1f}%, max {gemm['error_%'].abs().max():.1f}%")
gemm[["m", "n", "k", "seconds", "predicted_s", "error_%"]].round(6)

# %% [markdown]
# ## 3. Write a `measured` profile
#
# Profiles are YAML files with provenance. Put yours in `./calibration/` (or a directory on
# `$MOESIM_PROFILE_PATH`) and name it with `--profile NAME`, `profile: NAME` in a sweep, or the
# `device` attribute of the GPUs in your topology.

# %%
profile = {
    "name": "my-cpu",
    "status": "measured",
    "provenance": {"source": "notebooks/calibrate_your_cluster.py (numpy GEMM and copy timings)",
                   "machine": platform.node() or "unknown", "processor": platform.processor() or platform.machine(),
                   "date": datetime.date.today().isoformat(), "numpy": np.__version__},
    "device": {
        "peak_flops": {"fp32": peak, "fp16": peak, "bf16": peak},
        "memory_bandwidth": mem_bw,
        "memory_bytes": 16e9,
        "gemm": {"efficiency_max": round(float(eff_max), 4), "half_size": round(float(half), 2)},
        "memory_efficiency": 1.0,
        "op_overhead_s": overhead,
    },
    "network": {"latency_per_message_s": 5e-6, "collective_overhead_s": 20e-6},
}
prof_dir = OUT / "calibration"
prof_dir.mkdir(exist_ok=True)
prof_file = prof_dir / "my-cpu.yaml"
prof_file.write_text(yaml.safe_dump(profile, sort_keys=False))
mine = load_profile(prof_file)            # validated: a bad field names itself
cm = CostModel(mine)
check = cm.gemm_time(gemm.m.values, gemm.n.values, gemm.k.values, "fp32")
print(mine.name, mine.status, f"cost model vs measurement: max {np.max(np.abs(check / gemm.seconds - 1)) * 100:.1f}% off")

# %% [markdown]
# ## 4. The network
#
# Per link class (NVLink/PCIe inside a node, NIC/fabric between nodes) the network model needs an
# effective bandwidth (the topology's rate times `network.link_efficiency[class]`), a per-message
# latency and a per-collective overhead. Measure them with the All-to-All and all-reduce
# microbenchmarks over the whole world, within a node and across nodes:
#
# ```bash
# torchrun --nnodes=2 --nproc_per_node=4 ... -m real_backend.microbench --kinds all_to_all,all_reduce --out net.csv
# moesim calibrate gemm.csv net.csv --out calibration/my-cluster.yaml    # fits alpha/beta per link class
# ```
#
# A fit gives, e.g., "inter-node All-to-All reaches 85% of the NIC rate": that is
# `link_efficiency: {nic: 0.85}`. Below, the factors are placeholders that show the effect;
# put your fitted values in their place.

# %%
profile["network"]["link_efficiency"] = {"nic": 0.85, "pcie": 0.9}   # placeholders: use your fitted values
prof_file.write_text(yaml.safe_dump(profile, sort_keys=False))
mine = load_profile(prof_file)
mine.network

# %% [markdown]
# ## 5. Predict with your profile, then validate
#
# The same workload on the same topology, priced with the datasheet profile of a GPU and with the
# profile just measured. (A CPU is of course far slower than a GPU: the point is that every
# prediction now rests on numbers from your hardware.)

# %%
rows = []
for label, prof in (("datasheet paper-gpu-48gb", find_profile("paper-gpu-48gb")), ("measured my-cpu", mine)):
    for s in ("cdac", "dcca"):
        cfg = load_config("gpt3-medium", ["model.layers=2", "moe.experts=8", "parallel.ep=8",
                                          "run.global_batch_tokens=8192", f"moe.structure={s}"])
        res = simulate(cfg, topo, prof)
        rows.append({"profile": label, "structure": s, "step_time_s": res.step_time_s,
                     "a2a_share": (res.breakdown_s["dispatch"] + res.breakdown_s["combine"]) / res.step_time_s})
pd.DataFrame(rows).round(4)

# %% [markdown]
# Validation closes the loop: run real steps with `real_backend.run` on your cluster (configurations
# *not* used for the fit), then compare predicted and measured step and phase times:
#
# ```bash
# torchrun --nnodes=2 --nproc_per_node=4 ... -m real_backend.run --model my-config.yaml --steps 5 --out steps.csv
# moesim validate steps.csv --profile calibration/my-cluster.yaml --topology my-cluster.json
# ```
#
# which reports the absolute percentage error per configuration and MAPE / max error overall.
# Operator-profiled simulators reach a few percent on step time; if yours is far off, look at what
# the fit cannot see (compute contention between ranks, the collective algorithm your library picks,
# a shaper or switch that behaves unlike its datasheet) before trusting what-if answers.
