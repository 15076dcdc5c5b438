"""Build one step's SPMD operation graph (:class:`~moesim.workload.ops.Program`) from a config.

Per layer, forward: attention (QKV, core, output projection, norms and residuals) [+ tp all-reduce]
-> gate -> DCCA descend -> permute + split-size exchange (each rank's per-expert counts, a small
All-to-All; forward only) + dispatch All-to-All (shared experts run while it is in flight) ->
experts -> combine All-to-All + unpermute -> DCCA ascend [+ tp all-gather]. Backward
runs the layers in reverse with twice the forward GEMM work, the All-to-Alls again (transposed),
and launches data-parallel gradient all-reduces in buckets as layers finish, overlapping the
backward of earlier layers; the optimizer waits for all of them. With tp > 1, MoE work is split
across the tp ranks (sequence-parallel dispatch). Inference (prefill/decode) runs the forward only;
decode reads the KV cache (memory-bound) at the mean context.
"""
from __future__ import annotations

import numpy as np

from moesim.analytic import attention_context
from moesim.config import Config
from moesim.workload import groups as G
from moesim.workload.ops import Compute, Launch, Program, Wait
from moesim.workload.routing import plan_routing

#: bytes the optimizer moves per local parameter (Adam, mixed precision: fp32 master, m, v read and
#: written, gradient read, parameter written)
OPTIMIZER_BYTES_PER_PARAM = 28.0
#: default data-parallel gradient bucket (bytes), as PyTorch DDP
DEFAULT_BUCKET_BYTES = 25e6
#: bytes per expert count in the split-size exchange before a dispatch (int64)
COUNT_BYTES = 8.0


class _Builder:
    def __init__(self, cfg: Config, bucket_bytes: float, a2a_copies: np.ndarray | None = None):
        self.cfg = cfg
        self.bucket_bytes = bucket_bytes
        m, p = cfg.model, cfg.parallel
        self.h, self.tp, self.ep, self.dp = m.hidden, p.tp, p.ep, p.dp_size
        self.B = float(m.dtype_bytes)
        self.world = cfg.world_size
        self.train = cfg.run.mode == "train"
        self.micro = 1
        per_rank = cfg.tokens_per_dp_rank
        if self.train and cfg.run.micro_batch_tokens:
            self.micro = per_rank // cfg.run.micro_batch_tokens
        self.T = per_rank / self.micro           # tokens per rank per micro-batch (whole tp group)
        self.Tm = self.T / self.tp               # tokens per tp rank in the MoE (sequence-parallel)
        self.ctx = attention_context(cfg)
        self.prog = Program(world=self.world, tokens_per_step=cfg.step_tokens, dtype=m.dtype)
        self._groups = {"tp": G.tp_groups(cfg), "ep": G.ep_groups(cfg), "dp": G.dp_groups(cfg),
                        "edp": G.expert_dp_groups(cfg)}
        if cfg.is_moe:
            plan = plan_routing(cfg, self.Tm)
            pos = (np.arange(self.world) // self.tp) % self.ep     # rank's position in its ep group
            matrix, per_expert = plan.matrix, plan.per_expert
            if a2a_copies is not None:
                matrix, per_expert = _measured_routing(a2a_copies, self.ep, cfg.moe.experts // self.ep)
                self.prog.info["routing"] = "measured token copies per dispatch"
            self.expert_m = per_expert[pos]                         # (world, local experts) copies
            self.a2a_matrix = matrix * cfg.a2a_dim * self.B        # bytes, [src pos, dst pos]
            # the split sizes a forward dispatch exchanges first: int64 counts of the peer's experts
            self.count_matrix = np.full((self.ep, self.ep), COUNT_BYTES * cfg.moe.experts / self.ep)
            self.routed_copies = matrix.sum(axis=1)[pos]           # copies each rank permutes
            self.prog.info["dropped_fraction"] = plan.dropped_fraction if a2a_copies is None else float(
                max(0.0, 1.0 - matrix.sum() / (self.ep * self.Tm * cfg.moe.top_k)))
        self._bucket = {"dp": 0.0, "edp": 0.0}
        self._pending: list[int] = []

    # ---- helpers ---------------------------------------------------------------------------------
    def gemm(self, name, phase, layer, direction, m, n, k, count=1.0):
        scale = 2.0 if direction == "bwd" else 1.0  # dX and dW: two GEMMs of the same size
        self.prog.add(Compute(name, phase, layer, direction, "gemm", m=m, n=n, k=k, count=count * scale))

    def mem(self, name, phase, layer, direction, nbytes):
        scale = 2.0 if direction == "bwd" else 1.0
        self.prog.add(Compute(name, phase, layer, direction, "memory", nbytes=nbytes * scale))

    def coll(self, name, phase, layer, direction, op, channel, nbytes=0.0, matrix=None, control=False) -> int:
        return self.prog.collective(name=name, phase=phase, layer=layer, direction=direction, op=op,
                                    channel=channel, groups=tuple(self._groups[channel]),
                                    nbytes=float(nbytes), matrix=matrix, control=control)

    def blocking(self, name, phase, layer, direction, op, channel, nbytes=0.0, matrix=None, control=False):
        cid = self.coll(name, phase, layer, direction, op, channel, nbytes, matrix, control)
        self.prog.add(Launch(cid))
        self.prog.add(Wait(cid, phase))

    # ---- model pieces ------------------------------------------------------------------------------
    def attention(self, layer, d):
        h, tp, T, B = self.h, self.tp, self.T, self.B
        self.mem("norms_residual", "attention", layer, d, 7.0 * T * h * B)
        self.gemm("qkv", "attention", layer, d, T, 3 * h / tp, h)
        if self.cfg.run.mode == "decode":  # each sequence reads its own K and V cache
            self.mem("attention_core_kv", "attention", layer, d, T * self.ctx * 2 * (h / tp) * B)
        else:
            self.gemm("attention_core", "attention", layer, d, T, self.ctx, h / tp, count=2)
        self.gemm("out_proj", "attention", layer, d, T, h, h / tp)
        if tp > 1:
            self.blocking("attn_allreduce", "tp_comm", layer, d, "all_reduce", "tp", nbytes=T * h * B)

    def dispatch_beside_shared_experts(self, layer, d, matrix):
        """The dispatch All-to-All (or its backward), with the shared experts computed while it is in flight."""
        cfg = self.cfg
        disp = self.coll("dispatch", "dispatch", layer, d, "all_to_all", "ep", matrix=matrix) if self.ep > 1 else None
        if disp is not None:
            self.prog.add(Launch(disp))
        if cfg.moe.shared_experts:
            self.gemm("shared_experts", "shared_experts", layer, d, self.Tm, cfg.expert_inner_dim, cfg.expert_io_dim,
                      count=2 * cfg.moe.shared_experts)
        if disp is not None:
            self.prog.add(Wait(disp, "dispatch"))

    def moe_forward(self, layer, d):
        """Forward order; backward is the mirror image (see moe_backward)."""
        cfg, h, Tm, B = self.cfg, self.h, self.Tm, self.B
        dim = cfg.a2a_dim
        io, inner = cfg.expert_io_dim, cfg.expert_inner_dim
        self.gemm("gate", "gate", layer, d, Tm, cfg.moe.experts, h)
        if cfg.moe.structure == "dcca":
            self.gemm("descend", "descend", layer, d, Tm, cfg.low_dim, h)
        self.mem("permute", "dispatch", layer, d, 2.0 * self.routed_copies * dim * B)
        if self.ep > 1:   # the dispatch sizes its buffers from these; the backward reuses them
            self.blocking("dispatch_counts", "dispatch", layer, d, "all_to_all", "ep", matrix=self.count_matrix,
                          control=True)
        self.dispatch_beside_shared_experts(layer, d, self.a2a_matrix)
        self.gemm("experts", "experts", layer, d, self.expert_m, inner, io, count=2)
        if self.ep > 1:
            self.blocking("combine", "combine", layer, d, "all_to_all", "ep", matrix=self.a2a_matrix.T.copy())
        self.mem("unpermute", "combine", layer, d, 2.0 * self.routed_copies * dim * B + Tm * dim * B)
        if cfg.moe.structure == "dcca":
            self.gemm("ascend", "ascend", layer, d, Tm, h, cfg.low_dim)

    def moe_backward(self, layer):
        cfg, h, Tm, B = self.cfg, self.h, self.Tm, self.B
        dim = cfg.a2a_dim
        io, inner = cfg.expert_io_dim, cfg.expert_inner_dim
        d = "bwd"
        if cfg.moe.structure == "dcca":
            self.gemm("ascend", "ascend", layer, d, Tm, h, cfg.low_dim)
        self.mem("unpermute", "combine", layer, d, 2.0 * self.routed_copies * dim * B + Tm * dim * B)
        if self.ep > 1:  # gradient of combine flows expert-ward: the dispatch direction
            self.blocking("combine", "combine", layer, d, "all_to_all", "ep", matrix=self.a2a_matrix)
        self.gemm("experts", "experts", layer, d, self.expert_m, inner, io, count=2)
        self.dispatch_beside_shared_experts(layer, d, self.a2a_matrix.T.copy())
        self.mem("permute", "dispatch", layer, d, 2.0 * self.routed_copies * dim * B)
        if cfg.moe.structure == "dcca":
            self.gemm("descend", "descend", layer, d, Tm, cfg.low_dim, h)
        self.gemm("gate", "gate", layer, d, Tm, cfg.moe.experts, h)

    def dense_ffn(self, layer, d):
        f = self.cfg.model.dense_ffn
        self.gemm("ffn", "experts", layer, d, self.T, f / self.tp, self.h, count=1)
        self.gemm("ffn_out", "experts", layer, d, self.T, self.h, f / self.tp, count=1)
        if self.tp > 1:
            self.blocking("ffn_allreduce", "tp_comm", layer, d, "all_reduce", "tp", nbytes=self.T * self.h * self.B)

    def tp_moe_gather(self, layer, d):
        if self.tp > 1 and self.cfg.is_moe:
            op = "all_gather" if d == "fwd" else "reduce_scatter"
            per_rank = self.Tm * self.h * self.B if d == "fwd" else self.T * self.h * self.B
            self.blocking(f"moe_{op}", "tp_comm", layer, d, op, "tp", nbytes=per_rank)

    def lm_head(self, d):
        v, h, tp = self.cfg.model.vocab, self.h, self.tp
        rows = self.T  # logits for every token (as real_backend and the analytic model count)
        self.gemm("lm_head", "lm_head", -1, d, rows, v / tp, h)
        self.mem("softmax_loss", "lm_head", -1, d, 2.0 * rows * (v / tp) * 4.0)

    def embedding(self, d):
        self.mem("embedding", "embedding", -1, d, 2.0 * self.T * self.h * self.B)

    # ---- gradients ----------------------------------------------------------------------------------
    def layer_grad_bytes(self) -> tuple[float, float]:
        """(non-expert, expert) gradient bytes per rank per layer."""
        cfg, h, tp, B = self.cfg, self.h, self.tp, self.B
        dense = (4 * h * h + 4 * h) / tp + 4 * h
        expert = 0.0
        if cfg.is_moe:
            io, inner = cfg.expert_io_dim, cfg.expert_inner_dim
            one = 2 * io * inner + io + inner
            dense += h * cfg.moe.experts + cfg.moe.shared_experts * one
            if cfg.moe.structure == "dcca":
                dense += 2 * h * cfg.low_dim
            expert = cfg.moe.experts // self.ep * one
        else:
            f = cfg.model.dense_ffn
            dense += (2 * h * f + f) / tp + h
        return dense * B, expert * B

    def add_grads(self, layer, nbytes, channel, force=False):
        if nbytes <= 0 and not force:
            return
        group_size = self.dp if channel == "dp" else self.dp // self.ep
        if group_size <= 1:
            return
        self._bucket[channel] += nbytes
        if self._bucket[channel] >= self.bucket_bytes or (force and self._bucket[channel] > 0):
            cid = self.coll(f"{channel}_grad_bucket", "grad_allreduce", layer, "bwd", "all_reduce", channel,
                            nbytes=self._bucket[channel])
            self.prog.add(Launch(cid))
            self._pending.append(cid)
            self._bucket[channel] = 0.0

    # ---- the step ------------------------------------------------------------------------------------
    def forward(self):
        L = self.cfg.model.layers
        self.embedding("fwd")
        for layer in range(L):
            self.attention(layer, "fwd")
            if self.cfg.is_moe:
                self.moe_forward(layer, "fwd")
                self.tp_moe_gather(layer, "fwd")
            else:
                self.dense_ffn(layer, "fwd")
        self.lm_head("fwd")

    def backward(self, last_micro: bool):
        L = self.cfg.model.layers
        self.lm_head("bwd")
        dense_bytes, expert_bytes = self.layer_grad_bytes()
        for layer in reversed(range(L)):
            if self.cfg.is_moe:
                self.tp_moe_gather(layer, "bwd")
                self.moe_backward(layer)
            else:
                self.dense_ffn(layer, "bwd")
            if last_micro:
                self.add_grads(layer, expert_bytes, "edp")
            self.attention(layer, "bwd")
            if last_micro:
                self.add_grads(layer, dense_bytes, "dp")
        self.embedding("bwd")
        if last_micro:
            emb = (self.cfg.model.vocab / self.tp + self.cfg.model.seq_len) * self.h * self.B + 2 * self.h * self.B
            self.add_grads(-1, emb, "dp", force=True)
            self.add_grads(-1, 0.0, "edp", force=True)

    def optimizer(self):
        for cid in self._pending:
            self.prog.add(Wait(cid, "grad_allreduce"))
        dense_bytes, expert_bytes = self.layer_grad_bytes()
        cfg = self.cfg
        emb_params = (cfg.model.vocab / self.tp + cfg.model.seq_len) * self.h + 2 * self.h
        params = (dense_bytes + expert_bytes) / self.B * cfg.model.layers + emb_params
        self.prog.info["local_params"] = params
        self.mem("adam", "optimizer", -1, "opt", params * OPTIMIZER_BYTES_PER_PARAM)

    def build(self) -> Program:
        for mb in range(self.micro):
            self.forward()
            if self.train:
                self.backward(last_micro=mb == self.micro - 1)
        if self.train:
            self.optimizer()
        self.prog.info.update(micro_batches=self.micro, tokens_per_rank_micro=self.T, mode=self.cfg.run.mode)
        return self.prog


def _measured_routing(copies: np.ndarray, ep: int, local: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, per_expert) from a measured dispatch matrix of token copies ``[src pos, dst pos]``
    (one ep group); a rank's copies are spread evenly over its local experts."""
    m = np.asarray(copies, dtype=float)
    if m.shape != (ep, ep) or not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError(f"a2a_copies must be a finite, non-negative {ep}x{ep} matrix (ep x ep), got shape {m.shape}")
    per_expert = np.repeat((m.sum(axis=0) / local)[:, None], local, axis=1)
    return m, per_expert


def build_program(cfg: Config, bucket_bytes: float = DEFAULT_BUCKET_BYTES,
                  a2a_copies: np.ndarray | None = None) -> Program:
    """The operation graph of one step of ``cfg`` (train iteration, prefill or decode step).

    ``a2a_copies``: optional measured routing, token copies per forward dispatch ``[src, dst]``
    within one ep group (every ep group and layer alike), in place of ``cfg.moe.routing``."""
    return _Builder(cfg, bucket_bytes, a2a_copies).build()
