"""Token routing as expected token-copy counts (a deterministic fluid view of the router).

Each token picks ``k`` distinct experts; expert ``e`` is picked by a fraction ``q_e <= 1`` of the
tokens with ``sum(q) = k`` (uniform: ``q = k/E``; Zipf: popularity ``∝ 1/rank^s`` over a seeded
permutation of experts, water-filled so no ``q_e`` exceeds 1; or shares from a file). A capacity
factor caps what each source rank sends to one expert at ``ceil(cf * T * k / E)`` copies (the
rest is dropped), as ``real_backend`` does for its local batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.config import Config
from moesim.errors import InputFileError


def _water_fill(popularity: np.ndarray, k: int) -> np.ndarray:
    """Per-token pick probabilities q (sum k, each <= 1) proportional to ``popularity`` where possible."""
    p = popularity / popularity.sum()
    q = np.zeros_like(p)
    free = np.ones(p.size, dtype=bool)
    budget = float(k)
    while True:
        share = budget * p[free] / p[free].sum()
        over = share > 1.0
        if not over.any():
            q[free] = share
            return q
        idx = np.flatnonzero(free)[over]
        q[idx] = 1.0
        free[idx] = False
        budget -= idx.size


def load_routing_file(path: str | Path, experts: int) -> np.ndarray:
    """Per-expert token shares from a .npy file or a text/CSV file of numbers (one per expert)."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            data = np.load(p, allow_pickle=False)
        else:
            data = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=1)
    except FileNotFoundError:
        raise InputFileError(p, "routing file does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(p, f"cannot read per-expert shares ({exc})") from None
    data = np.asarray(data, dtype=float).ravel()
    if data.size != experts:
        raise InputFileError(p, f"expected {experts} per-expert shares (moe.experts), found {data.size}")
    if not np.all(np.isfinite(data)) or (data < 0).any() or data.sum() <= 0:
        raise InputFileError(p, "shares must be finite, non-negative and not all zero")
    return data


def expert_pick_probability(cfg: Config) -> np.ndarray:
    """q_e: the fraction of tokens that pick expert e (length E, sum top_k, each <= 1)."""
    moe = cfg.moe
    e, k = moe.experts, moe.top_k
    if moe.routing == "uniform":
        return np.full(e, k / e)
    if moe.routing == "zipf":
        rank_of = np.random.default_rng(cfg.run.seed).permutation(e)
        popularity = 1.0 / (rank_of + 1.0) ** moe.zipf_exponent
    else:
        popularity = load_routing_file(moe.routing_file, e)
    return _water_fill(popularity, k)


@dataclass(frozen=True)
class RoutingPlan:
    """Token copies for one expert-parallel group whose ranks each hold ``tokens`` tokens.

    ``sent[i, e]``: copies source rank i sends to expert e (after capacity drops);
    ``matrix[i, j]``: copies from rank i to rank j (experts are block-sharded: rank j holds
    experts ``j*E/ep .. (j+1)*E/ep - 1``); ``per_expert[j, x]``: copies local expert x of rank j
    processes."""

    sent: np.ndarray
    matrix: np.ndarray
    per_expert: np.ndarray
    dropped_fraction: float


def plan_routing(cfg: Config, tokens: float) -> RoutingPlan:
    """Routing of ``tokens`` tokens per rank in one ep group (all groups are alike)."""
    ep, e, k = cfg.parallel.ep, cfg.moe.experts, cfg.moe.top_k
    q = expert_pick_probability(cfg)
    wanted = np.tile(tokens * q, (ep, 1))
    cf = cfg.moe.capacity_factor
    if cf is not None:
        cap = math.ceil(cf * tokens * k / e)
        sent = np.minimum(wanted, cap)
    else:
        sent = wanted
    local = e // ep
    per_dst = sent.reshape(ep, ep, local)  # [src, dst, local expert]
    matrix = per_dst.sum(axis=2)
    per_expert = per_dst.sum(axis=0)
    total = wanted.sum()
    dropped = float(1.0 - sent.sum() / total) if total > 0 else 0.0
    return RoutingPlan(sent=sent, matrix=matrix, per_expert=per_expert, dropped_fraction=dropped)
