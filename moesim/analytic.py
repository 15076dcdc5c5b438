"""Closed-form counts for a config: parameters, FLOPs per step, All-to-All bytes per step.

Two parameter/FLOP conventions:

* ``paper`` (default) generalises BigMac's Table 3 term by term and reproduces it exactly for
  its setting (no shared experts, 2-byte activations, dropless/uniform routing): attention
  ``4h^2+8h`` per layer with its norms, expert biases ``2*min(in, inner)``, a gate ``e*h`` counted
  once, tied embeddings; FLOPs count the GEMMs (attention, experts, projections, LM head) only.
* ``layers`` counts exactly what ``real_backend`` builds: a gate per layer, expert biases
  ``inner + in``, learned position embeddings, and the gate's FLOPs.

All-to-All bytes are convention-free: summed over all ranks, only bytes that leave a rank,
forward and (for training) backward, ``dtype`` bytes per element.

Units: parameters in elements, FLOP, bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moesim.config import Config

Convention = Literal["paper", "layers"]
CONVENTIONS = ("paper", "layers")

#: training = forward + backward (2x forward FLOPs for input and weight gradients)
TRAIN_FLOP_MULTIPLIER = 3


@dataclass(frozen=True)
class Breakdown:
    """A total with its parts (``parts`` sum to ``total``)."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)


def _k_effective(cfg: Config) -> float:
    """Expected token copies per token that are processed: top_k, times the capacity factor when
    that is below 1 (uniform routing drops the excess); dropless or cf >= 1 drops nothing."""
    cf = cfg.moe.capacity_factor
    return cfg.moe.top_k * (min(1.0, cf) if cf is not None else 1.0)


def attention_context(cfg: Config) -> float:
    """Tokens each query attends to (keys), as the paper counts it (no causal halving):
    train: seq_len; prefill: prompt_len; decode: mean context over the generation."""
    run = cfg.run
    if run.mode == "train":
        return float(cfg.model.seq_len)
    if run.mode == "prefill":
        return float(run.prompt_len)
    return run.prompt_len + (run.gen_len + 1) / 2.0


def _expert_params(cfg: Config, convention: Convention) -> int:
    d_in, inner = cfg.expert_io_dim, cfg.expert_inner_dim
    bias = 2 * min(d_in, inner) if convention == "paper" else inner + d_in
    return 2 * d_in * inner + bias


def parameter_count(cfg: Config, convention: Convention = "paper") -> Breakdown:
    """Parameters (elements) of the whole model by component."""
    _check_convention(convention)
    m, moe = cfg.model, cfg.moe
    h, l, v, e = m.hidden, m.layers, m.vocab, moe.experts
    parts: dict[str, float] = {}
    parts["embedding"] = v * h + (m.seq_len * h if convention == "layers" else 0)
    parts["attention"] = l * (4 * h * h + 4 * h)
    parts["norms"] = l * 4 * h + 2 * h
    if cfg.is_moe:
        parts["gate"] = e * h * (l if convention == "layers" else 1)
        parts["experts"] = l * e * _expert_params(cfg, convention)
        parts["shared_experts"] = l * moe.shared_experts * _expert_params(cfg, convention)
        if moe.structure == "dcca":
            parts["descend"] = l * h * cfg.low_dim
            parts["ascend"] = l * cfg.low_dim * h
    else:
        f = m.dense_ffn
        parts["ffn"] = l * (2 * h * f + f + h)
    parts = {k: float(x) for k, x in parts.items() if x}
    return Breakdown(sum(parts.values()), parts)


def forward_flops_per_token(cfg: Config, convention: Convention = "paper") -> Breakdown:
    """Forward FLOP per token, by phase (vocabulary of DESIGN.md), for the config's mode."""
    _check_convention(convention)
    m, moe = cfg.model, cfg.moe
    h, l = m.hidden, m.layers
    ctx = attention_context(cfg)
    parts: dict[str, float] = {"attention": l * (8.0 * h * h + 4.0 * ctx * h)}
    if cfg.is_moe:
        if convention == "layers":
            parts["gate"] = l * 2.0 * h * moe.experts
        per_expert = 4.0 * cfg.expert_io_dim * cfg.expert_inner_dim
        parts["experts"] = l * _k_effective(cfg) * per_expert
        parts["shared_experts"] = l * moe.shared_experts * per_expert
        if moe.structure == "dcca":
            parts["descend"] = l * 2.0 * h * cfg.low_dim
            parts["ascend"] = l * 2.0 * cfg.low_dim * h
    else:
        parts["experts"] = l * 4.0 * h * m.dense_ffn
    parts["lm_head"] = 2.0 * m.vocab * h
    parts = {k: x for k, x in parts.items() if x}
    return Breakdown(sum(parts.values()), parts)


def flops_per_step(cfg: Config, convention: Convention = "paper") -> Breakdown:
    """FLOP of one step over all ranks: a training iteration (3x forward) or an inference step."""
    per_token = forward_flops_per_token(cfg, convention)
    scale = cfg.step_tokens * (TRAIN_FLOP_MULTIPLIER if cfg.run.mode == "train" else 1)
    return Breakdown(per_token.total * scale, {k: x * scale for k, x in per_token.parts.items()})


def a2a_passes(cfg: Config) -> int:
    """Passes through each MoE layer's All-to-Alls per step: 2 for training (fwd, bwd), else 1."""
    return 2 if cfg.run.mode == "train" else 1


def a2a_bytes_per_step(cfg: Config) -> Breakdown:
    """All-to-All bytes per step summed over ranks, counting only bytes that leave a rank, with
    uniform routing: per layer and pass, dispatch = combine = tokens * k * dim * dtype * (ep-1)/ep.
    Tensor-parallel ranks split the token copies (sequence-parallel dispatch), so tp does not change it."""
    if not cfg.is_moe:
        return Breakdown(0.0, {"dispatch": 0.0, "combine": 0.0})
    ep = cfg.parallel.ep
    one = (cfg.step_tokens * _k_effective(cfg) * cfg.a2a_dim * cfg.model.dtype_bytes * (ep - 1) / ep
           * cfg.model.layers * a2a_passes(cfg))
    return Breakdown(2 * one, {"dispatch": one, "combine": one})


def analyze(cfg: Config, convention: Convention = "paper") -> dict:
    """Everything above as one JSON-able dict (SI units). Public keys: ``params``,
    ``flops_per_iteration`` (per step of the config's mode), ``a2a_bytes_per_iteration``."""
    params = parameter_count(cfg, convention)
    flops = flops_per_step(cfg, convention)
    a2a = a2a_bytes_per_step(cfg)
    layers = cfg.model.layers
    world = cfg.world_size
    return {
        "model": cfg.model.name,
        "structure": cfg.moe.structure,
        "mode": cfg.run.mode,
        "convention": convention,
        "world_size": world,
        "tokens_per_step": cfg.step_tokens,
        "params": params.total,
        "params_by_component": params.parts,
        "flops_per_iteration": flops.total,
        "flops_by_phase": flops.parts,
        "flops_per_token": flops.total / cfg.step_tokens,
        "a2a_bytes_per_iteration": a2a.total,
        "a2a_bytes_per_layer": a2a.total / layers,
        "a2a_bytes_by_phase": a2a.parts,
        "a2a_bytes_per_rank_per_iteration": a2a.total / world,
        "a2a_dim": cfg.a2a_dim,
    }


def table3(cfg: Config) -> dict:
    """BigMac's Table 3 closed forms, verbatim, for cross-checks (paper setting only:
    b*s = global_batch_tokens, s = seq_len, 2-byte activations)."""
    m, moe = cfg.model, cfg.moe
    h, l, v, e, s = m.hidden, m.layers, m.vocab, moe.experts, m.seq_len
    r, k, ep = moe.ratio, moe.top_k, cfg.parallel.ep
    bs = cfg.run.global_batch_tokens
    params = (4 * h * h + 8 * h + (2 * r * h * h + 2 * r * h) * e) * l + (v + e + 2) * h
    flops = 12 * bs * l * h * h * (2 + s / h + v / (2 * l * h) + r * k)
    a2a = 8 * bs * l * h * k * (ep - 1) / ep
    if moe.structure == "dcca":
        params += 2 * r * l * h * h
        flops += 12 * r * bs * l * h * h
        a2a *= r
    return {"params": params, "flops_per_iteration": flops, "a2a_bytes_per_iteration": a2a}


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} (expected one of {CONVENTIONS})")
