"""Process groups of a Megatron-style layout: rank = dp_index * tp + tp_index (tp innermost);
expert-parallel groups are blocks of ``ep`` consecutive dp indices."""
from __future__ import annotations

from moesim.config import Config


def tp_groups(cfg: Config) -> list[tuple[int, ...]]:
    tp, dp = cfg.parallel.tp, cfg.parallel.dp_size
    return [tuple(d * tp + t for t in range(tp)) for d in range(dp)]


def ep_groups(cfg: Config) -> list[tuple[int, ...]]:
    tp, dp, ep = cfg.parallel.tp, cfg.parallel.dp_size, cfg.parallel.ep
    return [tuple((g * ep + j) * tp + t for j in range(ep)) for t in range(tp) for g in range(dp // ep)]


def dp_groups(cfg: Config) -> list[tuple[int, ...]]:
    """Groups that all-reduce non-expert gradients (all dp replicas of one tp index)."""
    tp, dp = cfg.parallel.tp, cfg.parallel.dp_size
    return [tuple(d * tp + t for d in range(dp)) for t in range(tp)]


def expert_dp_groups(cfg: Config) -> list[tuple[int, ...]]:
    """Groups that all-reduce expert gradients: ranks holding the same experts (dp/ep replicas)."""
    tp, dp, ep = cfg.parallel.tp, cfg.parallel.dp_size, cfg.parallel.ep
    return [tuple((g * ep + j) * tp + t for g in range(dp // ep)) for t in range(tp) for j in range(ep)]
