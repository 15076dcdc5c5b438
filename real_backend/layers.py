"""CDAC and BigMac (DCCA) MoE layers, a transformer block and a small GPT, with expert parallelism.

Parameter convention (equals ``moesim.analytic.parameter_count(cfg, convention="layers")``):
token embedding v*h tied with the LM head; learned positions seq_len*h; per layer LayerNorm (2h),
attention QKV h->3h and out h->h with biases, LayerNorm (2h), then the MoE: gate
``Linear(h, e, bias=False)`` on the full-dim x; routed experts ``W1 in x inner + b1, GELU,
W2 inner x in + b2`` (in = ``cfg.expert_io_dim``, inner = ``cfg.expert_inner_dim``); ``shared_experts``
experts of the same shape applied to every token (in the d space for DCCA); DCCA adds
``descend Linear(h, d, bias=False)`` before dispatch and ``ascend Linear(d, h, bias=False)`` after
combine; ``dense``: FFN h->ffn_hidden->h with biases; final LayerNorm (2h).

Routing: softmax over experts in fp32 (or the input dtype if wider), top-k, weights = the top-k
probabilities (no renormalisation), Switch load-balancing loss ``e * sum_i f_i * P_i``. Capacity
``ceil(cf * T * k / e)`` token copies per expert per rank's local batch of T tokens; copies are
admitted slot-major (all first choices in token order, then second choices, ...), the rest are
dropped (they contribute zero; the residual keeps the token). ``capacity_factor: null`` = dropless.

Expert j lives on ep rank ``j // (e / ep)``, as local expert ``j % (e / ep)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from moesim.config import Config
from moesim.errors import ConfigError
from real_backend.comm import all_to_all, exchange_counts
from real_backend.parallel import Groups, single
from real_backend.timing import NULL, Recorder

EXPERT_PARAM_NAMES = ("w1", "b1", "w2", "b2")


def is_expert_param(p: torch.nn.Parameter) -> bool:
    return bool(getattr(p, "expert", False))


# ---------------------------------------------------------------------------------------------
# router
# ---------------------------------------------------------------------------------------------
Forced = Union[torch.Tensor, Callable[[int], torch.Tensor], None]


class Router(nn.Module):
    """Top-k gate on the full-dimension x. ``logit_bias`` (a buffer, zeros by default) is added to
    the logits to skew routing deterministically; ``forced`` (a (T, k) long tensor or a callable
    T -> tensor) overrides the choice of experts (weights are still the softmax probabilities)."""

    def __init__(self, hidden: int, experts: int, top_k: int):
        super().__init__()
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.register_buffer("logit_bias", torch.zeros(experts), persistent=False)
        self.experts = experts
        self.top_k = top_k
        self.forced: Forced = None
        self.has_bias = False

    def set_bias(self, bias: torch.Tensor) -> None:
        """Set the logit offsets (e,) that skew routing."""
        self.logit_bias.copy_(bias.to(self.logit_bias.device, self.logit_bias.dtype))
        self.has_bias = bool(bias.abs().sum() > 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dt = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.to(dt), self.gate.weight.to(dt))
            if self.has_bias:
                logits = logits + self.logit_bias.to(dt)
            probs = torch.softmax(logits, dim=-1)
            if self.forced is not None:
                idx = self.forced(x.shape[0]) if callable(self.forced) else self.forced
                idx = idx.to(device=x.device, dtype=torch.long)
                if idx.shape != (x.shape[0], self.top_k):
                    raise ValueError(f"forced routing has shape {tuple(idx.shape)}, expected {(x.shape[0], self.top_k)}")
                weights = probs.gather(1, idx)
            else:
                weights, idx = probs.topk(self.top_k, dim=-1)
            with torch.no_grad():
                frac = torch.bincount(idx.reshape(-1), minlength=self.experts).to(dt) / max(1, idx.numel())
            aux = self.experts * (frac * probs.mean(0)).sum()
        return weights, idx, aux


def routing_bias(cfg: Config) -> torch.Tensor:
    """Logit offsets that realise ``moe.routing``: zeros for uniform; ``log`` of Zipf shares
    (expert i has share proportional to 1/(i+1)^s) for zipf; ``log`` of the file's shares for file."""
    e = cfg.moe.experts
    if cfg.moe.routing == "uniform":
        return torch.zeros(e)
    if cfg.moe.routing == "zipf":
        shares = 1.0 / torch.arange(1, e + 1, dtype=torch.float64) ** cfg.moe.zipf_exponent
    else:
        shares = _read_shares(cfg.moe.routing_file, e)
    shares = shares / shares.sum()
    return torch.log(shares.clamp_min(1e-12)).float()


def _read_shares(path: Optional[str], e: int) -> torch.Tensor:
    p = Path(str(path))
    if not p.is_file():
        raise ConfigError("moe.routing_file", f"routing file '{p}' does not exist")
    if p.suffix == ".npy":
        import numpy as np
        vals = np.load(p).astype("float64").reshape(-1).tolist()
    else:
        vals = []
        for line in p.read_text().splitlines():
            for cell in line.replace(";", ",").split(","):
                cell = cell.strip()
                if not cell:
                    continue
                try:
                    vals.append(float(cell))
                except ValueError:
                    continue  # header cells
    if len(vals) != e or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise ConfigError("moe.routing_file", f"'{p}' must hold {e} non-negative shares (found {len(vals)})")
    return torch.tensor(vals, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# experts
# ---------------------------------------------------------------------------------------------
class Experts(nn.Module):
    """``n`` experts ``x -> GELU(x W1 + b1) W2 + b2`` stored as stacked tensors (n, in, inner) ...
    ``forward(x, counts)`` runs expert i on the i-th block of ``counts[i]`` rows (pad-free grouped
    GEMMs: one addmm pair per local expert, no loop over tokens); ``apply_all(x)`` sums all n
    experts over every row (shared experts)."""

    def __init__(self, n: int, d_in: int, inner: int, expert: bool):
        super().__init__()
        self.n, self.d_in, self.inner = n, d_in, inner
        self.w1 = nn.Parameter(torch.empty(n, d_in, inner))
        self.b1 = nn.Parameter(torch.empty(n, inner))
        self.w2 = nn.Parameter(torch.empty(n, inner, d_in))
        self.b2 = nn.Parameter(torch.empty(n, d_in))
        for p in self.parameters():
            p.expert = expert

    def _weights(self) -> list[tuple[torch.Tensor, ...]]:
        """(w1, b1, w2, b2) of each expert, as views from one ``unbind`` per stacked tensor: its
        backward stacks the n gradients once, where indexing ``w[i]`` per expert would make each
        expert's backward write a zero-filled gradient of the whole stack (n times the work)."""
        return list(zip(*(p.unbind(0) for p in (self.w1, self.b1, self.w2, self.b2))))

    @staticmethod
    def _one(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        return torch.addmm(b2, F.gelu(torch.addmm(b1, x, w1)), w2)

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        weights = self._weights()
        if self.n == 1:
            return self._one(x, *weights[0])
        return torch.cat([self._one(chunk, *w) for chunk, w in zip(x.split(counts), weights)], dim=0)

    def apply_all(self, x: torch.Tensor) -> torch.Tensor:
        weights = self._weights()
        out = self._one(x, *weights[0])
        for w in weights[1:]:
            out = out + self._one(x, *w)
        return out


@dataclass
class DispatchPlan:
    tok: torch.Tensor          # token index of each sent copy, in send order (sorted by expert)
    slot: torch.Tensor         # top-k slot of each sent copy
    in_splits: list[int]       # rows sent to each ep rank
    out_splits: list[int]      # rows received from each ep rank
    gorder: Optional[torch.Tensor]  # received (src rank, local expert) order -> local-expert order
    local_counts: list[int]    # rows per local expert after grouping
    tokens: int
    dropped: int               # token copies dropped by the capacity limit on this rank


class MoE(nn.Module):
    """The MoE layer, structure ``cdac`` or ``dcca``, over the ep group of ``groups``.

    ``forward(h)`` takes the residual stream (..., h) (the layer's LayerNorm is applied inside,
    timed as part of ``gate``) and returns (output (..., h), load-balancing loss)."""

    def __init__(self, cfg: Config, groups: Optional[Groups] = None, rec: Recorder = NULL,
                 with_norm: bool = True, layer_index: int = 0):
        super().__init__()
        if not cfg.is_moe:
            raise ConfigError("moe.structure", "MoE layer needs structure cdac or dcca")
        groups = groups or single()
        h, moe = cfg.model.hidden, cfg.moe
        self.groups = groups
        self.rec = rec
        self.layer_index = layer_index
        self.structure = moe.structure
        self.dcca = moe.structure == "dcca"
        self.num_experts = moe.experts
        self.top_k = moe.top_k
        self.capacity_factor = moe.capacity_factor
        self.ep = groups.ep_size
        self.local = moe.experts // groups.ep_size
        d, inner = cfg.expert_io_dim, cfg.expert_inner_dim
        self.d = d
        self.comm_dtype: Optional[torch.dtype] = None  # payload dtype under autocast
        self.norm = nn.LayerNorm(h) if with_norm else None
        self.router = Router(h, moe.experts, moe.top_k)
        if self.dcca:
            self.descend = nn.Linear(h, d, bias=False)
            self.ascend = nn.Linear(d, h, bias=False)
        self.experts = Experts(self.local, d, inner, expert=True)
        self.shared = Experts(moe.shared_experts, d, inner, expert=False) if moe.shared_experts else None
        self.last_plan: Optional[DispatchPlan] = None

    @property
    def first_expert(self) -> int:
        return self.groups.ep_rank * self.local

    def capacity(self, tokens: int) -> Optional[int]:
        if self.capacity_factor is None:
            return None
        return int(math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))

    # ---- dispatch / combine --------------------------------------------------------------------
    def dispatch(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, DispatchPlan]:
        T, k = idx.shape
        E, L, P = self.num_experts, self.local, self.ep
        dev = x.device
        flat_e = idx.t().reshape(-1)                      # slot-major: n = slot * T + token
        order = torch.argsort(flat_e, stable=True)        # by expert, slot-major within an expert
        counts = torch.bincount(flat_e, minlength=E)
        requested = counts
        cap = self.capacity(T)
        if cap is not None:
            sorted_e = flat_e[order]
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(order.numel(), device=dev) - starts[sorted_e]
            order = order[pos < cap]
            counts = counts.clamp(max=cap)
        tok = order % T
        slot = order // T
        if self.comm_dtype is not None:
            x = x.to(self.comm_dtype)
        send = x.index_select(0, tok)
        group = self.groups.ep_group
        recv_counts = exchange_counts(counts, group, self.rec, "dispatch")
        rc = recv_counts.view(P, L)
        host = torch.cat([counts.view(P, L).sum(1), rc.sum(1), rc.sum(0),
                          (requested - counts).sum().view(1)]).tolist()  # one host sync
        in_splits, out_splits, local_counts = host[:P], host[P:2 * P], host[2 * P:2 * P + L]
        dropped = int(host[-1])
        recv = all_to_all(send, in_splits, out_splits, group, self.rec, "dispatch")
        gorder = None
        if L > 1 and P > 1:
            labels = torch.arange(L, device=dev).repeat(P).repeat_interleave(rc.reshape(-1))
            gorder = torch.argsort(labels, stable=True)
            recv = recv.index_select(0, gorder)
        return recv, DispatchPlan(tok, slot, in_splits, out_splits, gorder, local_counts, T, dropped)

    def combine(self, y: torch.Tensor, weights: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        if self.comm_dtype is not None:
            y = y.to(self.comm_dtype)
        if plan.gorder is not None:
            inv = torch.empty_like(plan.gorder)
            inv[plan.gorder] = torch.arange(plan.gorder.numel(), device=plan.gorder.device)
            y = y.index_select(0, inv)
        back = all_to_all(y, plan.out_splits, plan.in_splits, self.groups.ep_group, self.rec, "combine")
        w = weights[plan.tok, plan.slot].to(back.dtype).unsqueeze(1)
        return back.new_zeros(plan.tokens, back.shape[1]).index_add(0, plan.tok, back * w)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Forward order matters for backward attribution: the autograd engine runs ready nodes in
        # reverse creation order, so shared experts (created last) are differentiated before
        # combine, then experts, dispatch, descend, and the gate (router + LayerNorm) last.
        rec = self.rec
        shape = h.shape
        with rec.fwd("gate"):
            x = rec.mark(h, "gate").reshape(-1, shape[-1])
            if self.norm is not None:
                x = self.norm(x)
            weights, idx, aux = self.router(x)
        if self.dcca:
            with rec.fwd("descend"):
                x = self.descend(rec.mark(x, "descend"))
        with rec.fwd("dispatch"):
            xin, plan = self.dispatch(rec.mark(x, "dispatch"), idx)
        with rec.fwd("experts"):
            y = self.experts(rec.mark(xin, "experts"), plan.local_counts)
        with rec.fwd("combine"):
            out = self.combine(rec.mark(y, "combine"), weights, plan)
        if self.shared is not None:
            with rec.fwd("shared_experts"):
                out = out + self.shared.apply_all(rec.mark(x, "shared_experts")).to(out.dtype)
        if self.dcca:
            with rec.fwd("ascend"):
                out = self.ascend(rec.mark(out, "ascend"))
        self.last_plan = plan
        return out.reshape(*shape[:-1], out.shape[-1]), aux


class DenseFFN(nn.Module):
    """structure ``dense``: LayerNorm, h -> ffn_hidden -> h with biases (timed as ``experts``)."""

    def __init__(self, cfg: Config, rec: Recorder = NULL):
        super().__init__()
        h, f = cfg.model.hidden, cfg.model.dense_ffn
        self.rec = rec
        self.norm = nn.LayerNorm(h)
        self.fc1 = nn.Linear(h, f)
        self.fc2 = nn.Linear(f, h)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.rec.fwd("experts"):
            x = self.norm(self.rec.mark(h, "experts"))
            out = self.fc2(F.gelu(self.fc1(x)))
        return out, h.new_zeros(())


# ---------------------------------------------------------------------------------------------
# attention, block, GPT
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, past: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, S, H = x.shape
        nh = self.heads
        q, k, v = self.qkv(x).view(B, S, 3, nh, H // nh).permute(2, 0, 3, 1, 4)
        if past is not None:  # decode: the new token attends to the cached context and itself
            k = torch.cat([past[0].to(k.dtype), k], dim=2)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(a.transpose(1, 2).reshape(B, S, H))


class Block(nn.Module):
    def __init__(self, cfg: Config, groups: Groups, rec: Recorder, layer_index: int):
        super().__init__()
        h = cfg.model.hidden
        self.rec = rec
        self.ln1 = nn.LayerNorm(h)
        self.attn = Attention(h, cfg.model.heads)
        self.ffn = MoE(cfg, groups, rec, layer_index=layer_index) if cfg.is_moe else DenseFFN(cfg, rec)

    def forward(self, x: torch.Tensor, past=None) -> tuple[torch.Tensor, torch.Tensor]:
        with self.rec.fwd("attention"):
            xm = self.rec.mark(x, "attention")
            h = xm + self.attn(self.ln1(xm), past)
        y, aux = self.ffn(h)
        return h + y.to(h.dtype), aux


class GPT(nn.Module):
    """A GPT with MoE (or dense) FFNs, built from ``cfg`` for this rank's share of the experts."""

    def __init__(self, cfg: Config, groups: Optional[Groups] = None, rec: Recorder = NULL):
        super().__init__()
        groups = groups or single()
        m = cfg.model
        self.cfg = cfg
        self.groups = groups
        self.rec = rec
        self.embed = nn.Embedding(m.vocab, m.hidden)
        self.pos = nn.Embedding(m.seq_len, m.hidden)
        self.layers = nn.ModuleList(Block(cfg, groups, rec, i) for i in range(m.layers))
        self.ln_f = nn.LayerNorm(m.hidden)

    def set_recorder(self, rec: Recorder) -> None:
        for mod in self.modules():
            if hasattr(mod, "rec"):
                mod.rec = rec

    def moe_layers(self) -> list[MoE]:
        return [mod for mod in self.modules() if isinstance(mod, MoE)]

    def set_comm_dtype(self, dtype: Optional[torch.dtype]) -> None:
        for mod in self.moe_layers():
            mod.comm_dtype = dtype

    def set_routing_bias(self, bias: torch.Tensor) -> None:
        for mod in self.moe_layers():
            mod.router.set_bias(bias)

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if is_expert_param(p)]

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if not is_expert_param(p)]

    def forward(self, ids: torch.Tensor, targets: Optional[torch.Tensor] = None,
                past: Optional[list] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, S). Returns (mean cross-entropy if ``targets`` else logits, summed MoE aux loss).
        ``past``: per-layer (k, v) caches (B, heads, C, h/heads) for a decode step (S = 1)."""
        rec = self.rec
        B, S = ids.shape
        with rec.fwd("embedding"):
            start = 0 if past is None else past[0][0].shape[2]
            positions = torch.arange(start, start + S, device=ids.device)
            x = self.embed(ids) + self.pos(positions)
        aux = x.new_zeros(())
        for i, layer in enumerate(self.layers):
            x, a = layer(x, None if past is None else past[i])
            aux = aux + a.to(aux.dtype)
        with rec.fwd("lm_head"):
            xm = rec.mark(x, "lm_head")
            logits = F.linear(self.ln_f(xm), self.embed.weight)
            if targets is None:
                return logits, aux
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, aux


# ---------------------------------------------------------------------------------------------
# initialisation and state exchange
# ---------------------------------------------------------------------------------------------
def _expert_owner_key(name: str) -> Optional[tuple[str, str]]:
    """'layers.3.ffn.experts.w1' -> ('layers.3.ffn.experts', 'w1') for routed expert tensors."""
    parts = name.rsplit(".", 1)
    if len(parts) == 2 and parts[1] in EXPERT_PARAM_NAMES and (parts[0] == "experts" or parts[0].endswith(".experts")):
        return parts[0], parts[1]
    return None


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic GPT-2 style init. Non-expert tensors are drawn in a fixed order from one
    generator (identical on every rank); routed expert j of layer i is drawn from its own generator
    seeded by (seed, i, j), so expert weights do not depend on the ep layout."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            continue
        key = _expert_owner_key(name)
        if key is not None and is_expert_param(p):
            continue
        leaf = name.rsplit(".", 1)[-1]
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if isinstance(model.get_submodule(owner), nn.LayerNorm):
            p.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf.startswith("b"):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std))
    for mod in model.modules():
        if isinstance(mod, MoE):
            E = mod.experts
            for l in range(mod.local):
                gid = mod.first_expert + l
                g = torch.Generator().manual_seed(seed * 1_000_003 + mod.layer_index * 10_007 + gid + 1)
                E.w1[l].copy_(torch.randn(E.w1[l].shape, generator=g).mul_(std))
                E.w2[l].copy_(torch.randn(E.w2[l].shape, generator=g).mul_(std))
                E.b1[l].zero_()
                E.b2[l].zero_()


def expert_slice(name: str, full: torch.Tensor, model_param: torch.Tensor, ep_rank: int) -> torch.Tensor:
    """The rows of a full (all-experts) expert tensor that a rank with ``model_param`` owns."""
    n = model_param.shape[0]
    return full[ep_rank * n:(ep_rank + 1) * n]


@torch.no_grad()
def load_full_state(model: nn.Module, full: dict[str, torch.Tensor], ep_rank: int) -> None:
    """Load a state dict of the all-experts model (ep = 1) into an expert-parallel model."""
    for name, p in model.named_parameters():
        src = full[name]
        if is_expert_param(p) and _expert_owner_key(name) is not None and src.shape != p.shape:
            src = expert_slice(name, src, p, ep_rank)
        p.copy_(src.to(device=p.device, dtype=p.dtype))


def count_parameters(model: nn.Module, ep_size: int = 1) -> int:
    """Parameters of the whole (all-ranks) model: routed expert tensors count ``ep_size`` times."""
    total = 0
    for name, p in model.named_parameters():
        mult = ep_size if (is_expert_param(p) and _expert_owner_key(name) is not None) else 1
        total += p.numel() * mult
    return total


def build_model(cfg: Config, groups: Optional[Groups] = None, rec: Recorder = NULL,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                seed: Optional[int] = None) -> GPT:
    """GPT for ``cfg`` on this rank, initialised deterministically (``seed`` defaults to run.seed)
    with the config's routing skew applied."""
    groups = groups or single()
    device = torch.device(device) if device is not None else groups.device
    model = GPT(cfg, groups, rec)
    init_weights(model, cfg.run.seed if seed is None else seed)
    model.to(device=device, dtype=dtype)
    if cfg.is_moe:
        model.set_routing_bias(routing_bias(cfg))
    return model
