"""A deliberately naive single-process MoE (loops over token copies, one expert at a time) used as
the reference the expert-parallel layers are checked against. Same semantics as
``real_backend.layers.MoE`` without its LayerNorm: fp32-or-wider softmax gate, top-k probabilities
as weights, per-rank capacity ``ceil(cf*T*k/e)`` admitted slot-major, Switch aux loss."""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F


def _expert(x: torch.Tensor, p: Mapping[str, torch.Tensor], prefix: str, i: int) -> torch.Tensor:
    hdn = F.gelu(x @ p[f"{prefix}.w1"][i] + p[f"{prefix}.b1"][i])
    return hdn @ p[f"{prefix}.w2"][i] + p[f"{prefix}.b2"][i]


def reference_moe(x: torch.Tensor, p: Mapping[str, torch.Tensor], structure: str, top_k: int,
                  capacity_factor: Optional[float], forced: Optional[torch.Tensor] = None,
                  logit_bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x: (T, h) tokens of one rank. ``p``: the all-experts MoE parameters by name
    (``router.gate.weight``, ``experts.w1`` (e, in, inner), ..., ``shared.*``, ``descend.weight``,
    ``ascend.weight``). Returns (output (T, h), aux loss, dropped copies)."""
    T = x.shape[0]
    wg = p["router.gate.weight"]
    E = wg.shape[0]
    dt = torch.promote_types(x.dtype, torch.float32)
    logits = x.to(dt) @ wg.to(dt).t()
    if logit_bias is not None:
        logits = logits + logit_bias.to(dt)
    probs = torch.softmax(logits, dim=-1)
    if forced is not None:
        idx = forced.long()
    else:
        idx = probs.topk(top_k, dim=-1).indices
    xd = x @ p["descend.weight"].t() if structure == "dcca" else x
    cap = math.inf if capacity_factor is None else math.ceil(capacity_factor * T * top_k / E)
    fill = [0] * E
    rows: list[list[torch.Tensor]] = [[] for _ in range(T)]
    dropped = 0
    for s in range(top_k):          # slot-major admission: first choices first
        for t in range(T):
            e = int(idx[t, s])
            if fill[e] >= cap:
                dropped += 1
                continue
            fill[e] += 1
            rows[t].append(probs[t, e].to(xd.dtype) * _expert(xd[t:t + 1], p, "experts", e)[0])
    zero = xd.new_zeros(xd.shape[1])
    out = torch.stack([sum(r, zero) if r else zero for r in rows])
    if "shared.w1" in p:
        for j in range(p["shared.w1"].shape[0]):
            out = out + _expert(xd, p, "shared", j)
    if structure == "dcca":
        out = out @ p["ascend.weight"].t()
    counts = torch.bincount(idx.reshape(-1), minlength=E).to(dt)
    aux = E * ((counts / idx.numel()) * probs.mean(0)).sum()
    return out, aux, dropped
