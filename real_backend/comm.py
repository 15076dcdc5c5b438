"""Collectives used by the layers, with byte accounting from the tensors actually passed.

``all_to_all`` is autograd-aware: its backward is the reverse All-to-All (split sizes swapped).
With ``group is None`` (no torch.distributed) the collectives degenerate to local copies, which
is what a world of one rank does anyway.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

from real_backend.timing import NULL, Recorder


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def _a2a_raw(x: torch.Tensor, in_splits: Sequence[int], out_splits: Sequence[int], group,
             rec: Recorder, phase: str, direction: str) -> torch.Tensor:
    x = x.contiguous()
    row = int(torch.Size(x.shape[1:]).numel()) * x.element_size()  # bytes per row (token copy)
    me = group_rank(group)
    nbytes = x.numel() * x.element_size()
    rec.add_bytes(phase, direction, nbytes, nbytes - int(in_splits[me]) * row)
    if group is None:
        return x.clone()
    out = x.new_empty((int(sum(out_splits)),) + tuple(x.shape[1:]))
    with rec.progress.collective_call(f"{phase}:all_to_all"):
        dist.all_to_all_single(out, x, output_split_sizes=list(out_splits),
                               input_split_sizes=list(in_splits), group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, in_splits, out_splits, group, rec, phase):
        ctx.args = (in_splits, out_splits, group, rec, phase)
        return _a2a_raw(x, in_splits, out_splits, group, rec, phase, "fwd")

    @staticmethod
    def backward(ctx, grad):
        in_splits, out_splits, group, rec, phase = ctx.args
        # reverse exchange: what we received goes back to where it came from
        return (_a2a_raw(grad, out_splits, in_splits, group, rec, phase, "bwd"),
                None, None, None, None, None)


def all_to_all(x: torch.Tensor, in_splits: Sequence[int], out_splits: Sequence[int], group,
               rec: Recorder = NULL, phase: str = "dispatch") -> torch.Tensor:
    """Rows of ``x`` split by ``in_splits`` (one count per group rank) go to the ranks; returns the
    rows received, ordered by source rank, sized by ``out_splits``. Differentiable."""
    return _AllToAll.apply(x, tuple(int(s) for s in in_splits), tuple(int(s) for s in out_splits),
                           group, rec, phase)


def exchange_counts(counts: torch.Tensor, group, rec: Recorder = NULL, phase: str = "dispatch") -> torch.Tensor:
    """All-to-All of an int64 tensor of shape (group size * n): each rank sends n counts to each
    rank. Not part of the payload byte ledger (it is ``group size * n * 8`` bytes)."""
    if group is None:
        return counts.clone()
    out = torch.empty_like(counts)
    with rec.progress.collective_call(f"{phase}:counts"):
        dist.all_to_all_single(out, counts.contiguous(), group=group)
    return out


def all_reduce_(t: torch.Tensor, group, rec: Recorder = NULL, phase: str = "grad_allreduce",
                direction: str = "bwd") -> torch.Tensor:
    """In-place sum all-reduce; records the tensor's bytes (no remote split: algorithm dependent)."""
    if group is None or group_size(group) == 1:
        return t
    rec.add_bytes(phase, direction, t.numel() * t.element_size(), None)
    with rec.progress.collective_call(f"{phase}:all_reduce"):
        dist.all_reduce(t, group=group)
    return t


def sync_gradients(dense: Sequence[torch.nn.Parameter], experts: Sequence[torch.nn.Parameter],
                   dp_group, dp_size: int, expert_dp_group, rec: Recorder = NULL,
                   bucket_bytes: Optional[int] = 64 << 20) -> None:
    """Average gradients over data parallelism.

    The objective is the mean over dp ranks of each rank's local loss. Non-expert gradients are
    summed over the dp group and divided by dp. An expert's gradient on its owner already sums the
    contributions of every rank of its ep group (they came back through the backward All-to-All),
    so it is summed over the expert-replica group (dp / ep replicas) and divided by dp as well."""
    def flat_reduce(params, group):
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        buckets: list[list[torch.nn.Parameter]] = [[]]
        size = 0
        for p in params:
            nbytes = p.grad.numel() * p.grad.element_size()
            if bucket_bytes and buckets[-1] and size + nbytes > bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(p)
            size += nbytes
        for bucket in buckets:
            grads = [p.grad for p in bucket]
            if group is not None and group_size(group) > 1:
                flat = torch.cat([g.reshape(-1) for g in grads])
                all_reduce_(flat, group, rec)
                flat.div_(dp_size)
                offset = 0
                for g in grads:
                    n = g.numel()
                    g.copy_(flat[offset:offset + n].view_as(g))
                    offset += n
            elif dp_size != 1:
                for g in grads:
                    g.div_(dp_size)

    if dp_size > 1:
        flat_reduce(dense, dp_group)
    if dp_size > 1:
        flat_reduce(experts, expert_dp_group)
