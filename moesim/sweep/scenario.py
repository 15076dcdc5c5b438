"""Run one scenario: build its topology and config, simulate, and flatten the result (with cost
estimates) into one tidy row. Never raises for a scenario's own failure: the row says ``error``.

Default parallel layout: the ``parallel.*`` fields a scenario does not set are derived from the
topology's GPU count G, whatever the base config says: ``tp = 1``, ``dp = G / tp`` and
``ep = gcd(dp, experts)`` (pure expert parallelism over all GPUs: ``min(G, experts)`` whenever one
divides the other; 1 for dense layers).
"""
from __future__ import annotations

import json
import math
import time
import traceback
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from moesim.errors import MoesimError
from moesim.sweep.spec import DEFAULT_TOPOLOGY_KIND, TOPOLOGY_ALIASES, Scenario

_TOPO_CACHE: "OrderedDict[str, Any]" = OrderedDict()
_TOPO_CACHE_SIZE = 16

# columns every row has, in this order (outputs may add link-class columns)
ID_COLUMNS = ("scenario_id", "index", "status", "error", "label")
RESOLVED_COLUMNS = ("model", "structure", "mode", "top_k", "ratio", "experts", "dp", "tp", "ep", "gpus", "nodes",
                    "topology", "intra", "nic_bandwidth", "nic_gbps", "profile", "a2a_algorithm", "tokens_per_step",
                    "batch_size", "prompt_len", "gen_len")


def build_topology(params: Mapping[str, Any]):
    """A Topology from sweep topology parameters (``kind`` + generator arguments, or ``file``); cached
    per process."""
    key = json.dumps(dict(params), sort_keys=True, default=str)
    if "file" in params:
        p = Path(params["file"])
        key += f"|{p.stat().st_mtime_ns if p.exists() else 0}"
    if key in _TOPO_CACHE:
        _TOPO_CACHE.move_to_end(key)
        return _TOPO_CACHE[key]
    if "file" in params:
        from moesim.topology import load_topology
        topo = load_topology(params["file"])
    else:
        from moesim.topology.generators import GENERATORS
        kind = params.get("kind", DEFAULT_TOPOLOGY_KIND)
        alias = TOPOLOGY_ALIASES[kind]
        kwargs = {alias.get(k, k): v for k, v in params.items() if k != "kind"}
        topo = GENERATORS[kind](**kwargs)
    _TOPO_CACHE[key] = topo
    while len(_TOPO_CACHE) > _TOPO_CACHE_SIZE:
        _TOPO_CACHE.popitem(last=False)
    return topo


@lru_cache(maxsize=32)
def _base_config(model: str):
    from moesim.config import load_config
    return load_config(model)


def default_layout(overrides: Mapping[str, Any], gpus: int, experts: int, structure: str) -> dict[str, int]:
    """The ``parallel.*`` values to add for the fields ``overrides`` does not set (see module doc)."""
    tp = int(overrides.get("parallel.tp", 1))
    out: dict[str, int] = {}
    if "parallel.tp" not in overrides:
        out["parallel.tp"] = 1
    dp = overrides.get("parallel.dp")
    if dp is None:
        if gpus % tp:
            raise MoesimError(f"parallel.tp ({tp}) does not divide the topology's {gpus} GPUs")
        dp = gpus // tp
        out["parallel.dp"] = dp
    if "parallel.ep" not in overrides:
        out["parallel.ep"] = 1 if structure == "dense" else math.gcd(int(dp), int(experts))
    return out


def build_config(model: str, overrides: Mapping[str, Any], gpus: int):
    """The scenario's Config: ``model`` + ``overrides`` + the default parallel layout for ``gpus``."""
    from moesim.config import load_config
    base = _base_config(model)
    experts = overrides.get("moe.experts", base.moe.experts)
    structure = overrides.get("moe.structure", base.moe.structure)
    full = {**overrides, **default_layout(overrides, gpus, experts, structure)}
    return load_config(model, [f"{k}={json.dumps(v)}" for k, v in full.items()])


def _topology_facts(topo) -> dict:
    classes = set(topo.link_classes)
    kinds = set(topo.kind_counts())
    intra = "nvswitch" if "nvswitch" in kinds or "nvlink" in classes else "pcie" if "pcie" in classes else \
        next(iter(sorted(classes - {"nic", "fabric"})), "none")
    nic = topo.link_capacity[[topo.link_classes[i] == "nic" for i in topo.link_class_id]] if topo.num_links else []
    nic_bw = float(np.median(nic)) if len(nic) else math.nan
    return {"gpus": topo.num_gpus, "nodes": len(topo.hosts), "topology": topo.name, "intra": intra,
            "nic_bandwidth": nic_bw, "nic_gbps": nic_bw * 8 / 1e9}


def _config_facts(cfg) -> dict:
    return {"model": cfg.model.name, "structure": cfg.moe.structure, "mode": cfg.run.mode, "top_k": cfg.moe.top_k,
            "ratio": cfg.moe.ratio, "experts": cfg.moe.experts, "dp": cfg.parallel.dp_size, "tp": cfg.parallel.tp,
            "ep": cfg.parallel.ep, "tokens_per_step": cfg.step_tokens, "batch_size": cfg.run.batch_size,
            "prompt_len": cfg.run.prompt_len, "gen_len": cfg.run.gen_len}


def result_columns(res) -> dict:
    """Outputs of one SimResult as flat columns (SI units)."""
    from moesim.economics import internode_bytes
    row: dict[str, Any] = {
        "step_time_s": res.step_time_s,
        "tokens_per_s": res.tokens_per_s,
        "exposed_comm_s": res.exposed_comm_s,
        "overlapped_comm_s": res.overlapped_comm_s,
        "a2a_bytes_per_step": float(res.a2a_bytes),
        "internode_bytes_per_step": internode_bytes(res),
        "dropped_fraction": float(res.program.info.get("dropped_fraction", 0.0)),
    }
    for ph, sec in res.breakdown_s.items():
        row[f"breakdown_s.{ph}"] = float(sec)
    for cls_, b in sorted(res.bytes_by_link_class().items()):
        row[f"bytes.{cls_}"] = float(b)
    links = res.links()
    if len(links) and "utilisation" in links:
        g = links.groupby("link_class")["utilisation"]
        for cls_, v in g.max().items():
            row[f"util_max.{cls_}"] = float(v)
        for cls_, v in g.mean().items():
            row[f"util_mean.{cls_}"] = float(v)
    return row


def _cost_columns(res, cost: Mapping[str, Any]) -> dict:
    from moesim.economics import CostInputs, StepMeasure, step_costs
    out = step_costs(StepMeasure.from_result(res), CostInputs.from_mapping(cost))
    return {f"cost.{k}": (math.nan if v is None else v) for k, v in out.items()
            if k not in ("tokens_per_s", "internode_bytes_per_step")}  # already columns of their own


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MoesimError):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def prepare(sc: Scenario):
    """(topology, config) of a scenario, or raise."""
    r = sc.resolved
    topo = build_topology(sc.topology_params())
    cfg = build_config(r.get("model", "gpt3-xl"), sc.config_overrides(), topo.num_gpus)
    return topo, cfg


def simulate_scenario(sc: Scenario):
    """The SimResult of a scenario (raises on failure); used by the dashboard for detail views."""
    from moesim.engine import SimOptions, simulate
    topo, cfg = prepare(sc)
    return simulate(cfg, topo, sc.resolved.get("profile"), SimOptions(a2a_algorithm=sc.resolved.get("a2a_algorithm", "direct")))


def check_scenario(sc: Scenario) -> str | None:
    """Build the scenario's topology and config without simulating; the error text or None."""
    try:
        topo, cfg = prepare(sc)
        if sc.resolved.get("profile"):
            from moesim.cost import find_profile
            find_profile(sc.resolved["profile"])
        if sc.cost_inputs():
            from moesim.economics import CostInputs
            CostInputs.from_mapping(sc.cost_inputs())
    except Exception as exc:  # noqa: BLE001 - reported per scenario
        return _error_text(exc)
    return None


def run_scenario(sc: Scenario) -> dict:
    """Simulate one scenario and return its row (status ``ok`` or ``error``)."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"scenario_id": sc.id, "index": sc.index, "status": "ok", "error": None,
                           "label": sc.inputs.get("label")}
    row.update({c: None for c in RESOLVED_COLUMNS})
    row["model"] = sc.inputs.get("model", "gpt3-xl")
    row["profile"] = sc.inputs.get("profile")
    row["a2a_algorithm"] = sc.inputs.get("a2a_algorithm", "direct")
    for k, v in sc.inputs.items():
        row[f"in.{k}"] = v
    row["inputs_json"] = json.dumps(dict(sc.inputs), sort_keys=True)
    row["resolved_json"] = json.dumps(dict(sc.resolved), sort_keys=True)
    try:
        from moesim.engine import SimOptions, simulate
        topo = build_topology(sc.topology_params())
        row.update(_topology_facts(topo))
        cfg = build_config(sc.resolved.get("model", "gpt3-xl"), sc.config_overrides(), topo.num_gpus)
        row.update(_config_facts(cfg))
        res = simulate(cfg, topo, sc.resolved.get("profile"), SimOptions(a2a_algorithm=row["a2a_algorithm"]))
        row["profile"] = res.profile.name
        row.update(result_columns(res))
        row.update(_cost_columns(res, sc.cost_inputs()))
    except Exception as exc:  # noqa: BLE001 - a failing scenario records its error, the sweep goes on
        row["status"] = "error"
        row["error"] = _error_text(exc)
    row["sim_wall_s"] = time.perf_counter() - t0
    return row
