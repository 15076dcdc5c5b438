"""Collectives decomposed into flows and stages. Sizes are bytes; ``bytes_per_rank`` is the size of
each rank's whole buffer (All-to-All: its send buffer, split evenly over all ranks of the group, its
own share staying local; all-reduce: the buffer reduced; reduce-scatter: the input; all-gather: the
output)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.network.stages import Collective, FlowStage, Stage, UniformStage
from moesim.topology.model import Topology

OPS = ("all_to_all", "all_reduce", "all_gather", "reduce_scatter")
ALGORITHMS = {"all_to_all": ("direct", "2d"), "all_reduce": ("ring", "direct"),
              "all_gather": ("ring", "direct"), "reduce_scatter": ("ring", "direct")}


def _ranks(ranks: Sequence[int], topology: Topology | None) -> np.ndarray:
    r = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks, dtype=np.int64).reshape(-1)
    if len(r) == 0:
        raise MoesimError("a collective needs at least one rank")
    if len(np.unique(r)) != len(r):
        raise MoesimError("ranks of a collective must be distinct")
    if np.any(r < 0) or (topology is not None and np.any(r >= topology.num_gpus)):
        n = topology.num_gpus if topology is not None else "?"
        raise MoesimError(f"ranks must lie in 0..{n - 1 if isinstance(n, int) else n}")
    return r


def _size(value: float, what: str = "bytes_per_rank") -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise MoesimError(f"{what} must be a finite non-negative number of bytes, got {value!r}")
    return v


def _check_algorithm(op: str, algorithm: str) -> None:
    if algorithm not in ALGORITHMS[op]:
        raise MoesimError(f"algorithm {algorithm!r} is not available for {op} (choose from {', '.join(ALGORITHMS[op])})")


def all_to_all(ranks: Sequence[int], data, topology: Topology | None = None, algorithm: str = "direct") -> Collective:
    """All-to-All over ``ranks``. ``data``: bytes per rank (each rank's send buffer, split evenly over
    the group) or an N x N matrix, ``data[i][j]`` bytes from ``ranks[i]`` to ``ranks[j]`` (All-to-All-v;
    the diagonal stays local). ``algorithm``: ``direct`` (one stage, every pair at once) or ``2d``
    (hierarchical, needs ``topology``: intra-host aggregation by destination host onto a proxy GPU,
    one inter-host exchange between proxies, intra-host scatter; the proxy for host pair (a, b) is
    local GPU (a + b) mod g on both sides, which spreads the exchange over all NICs)."""
    _check_algorithm("all_to_all", algorithm)
    r = _ranks(ranks, topology)
    n = len(r)
    matrix = None
    if np.ndim(data) == 0:
        per_rank = _size(data)
        per_pair = per_rank / n
    else:
        matrix = np.asarray(data, dtype=np.float64)
        if matrix.shape != (n, n):
            raise MoesimError(f"All-to-All matrix must be {n} x {n} for {n} ranks, got {matrix.shape}")
        if np.any(~np.isfinite(matrix)) or np.any(matrix < 0):
            raise MoesimError("All-to-All matrix entries must be finite and non-negative")
        off = matrix[~np.eye(n, dtype=bool)]
        per_rank = float(matrix.sum(axis=1).mean())
        if n > 1 and np.all(off == off[0]):
            matrix, per_pair = None, float(off[0])
        else:
            per_pair = None
    coll = Collective("all_to_all", algorithm, r, [], per_rank)
    if algorithm == "direct" or n == 1:
        if matrix is None:
            if n > 1 and per_pair > 0:
                coll.stages.append(UniformStage(r, per_pair, label="all_to_all"))
        else:
            a, b = np.nonzero(matrix)
            coll.stages.append(FlowStage(r[a], r[b], matrix[a, b], label="all_to_all"))
        return coll
    if topology is None:
        raise MoesimError("the 2d All-to-All needs the topology (to know the hosts)")
    coll.stages.extend(_hierarchical(r, matrix, per_pair, topology))
    return coll


def _hierarchical(r: np.ndarray, matrix: np.ndarray | None, per_pair: float | None, topo: Topology) -> list[Stage]:
    hosts = [topo.host_of(int(x)) for x in r]
    order_hosts = list(dict.fromkeys(hosts))
    m = len(order_hosts)
    index = {h: i for i, h in enumerate(order_hosts)}
    host_idx = np.asarray([index[h] for h in hosts])
    counts = np.bincount(host_idx, minlength=m)
    g = int(counts[0])
    if np.any(counts != g):
        raise MoesimError("the 2d All-to-All needs the same number of ranks in every host "
                          f"(got {sorted(set(counts.tolist()))})")
    # host-major layout: grid[a, p] = position in r of local p of host a (in the order given)
    order = np.argsort(host_idx, kind="stable")
    grid = order.reshape(m, g)
    rank_grid = r[grid]
    a_idx, b_idx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    proxy = (a_idx + b_idx) % g                      # proxy local index for host pair (a, b)
    off_host = a_idx != b_idx
    if matrix is None:
        s = float(per_pair)
        T = np.full((m, g, m), s * g)                # bytes from (a, p) to host b
        U = np.full((m, m, g), s * g)                # bytes from host a to (b, q)
        W = np.full((m, m), s * g * g)               # bytes from host a to host b
        intra = np.full((m, g, g), s)                # (a, p) -> (a, q)
    else:
        M = matrix[np.ix_(grid.reshape(-1), grid.reshape(-1))].reshape(m, g, m, g)
        T = M.sum(axis=3)
        U = M.sum(axis=1)
        W = T.sum(axis=1)
        intra = M[np.arange(m), :, np.arange(m), :]
    stages: list[Stage] = []
    # 1: intra-host aggregation by destination host onto proxies (plus intra-host data, direct)
    B1 = intra.copy()
    aa, pp, bb = np.nonzero(np.broadcast_to(off_host[:, None, :], (m, g, m)))
    np.add.at(B1, (aa, pp, proxy[aa, bb]), T[aa, pp, bb])
    a1, p1, q1 = np.nonzero(B1 * (1 - np.eye(g))[None, :, :])
    stages.append(FlowStage(rank_grid[a1, p1], rank_grid[a1, q1], B1[a1, p1, q1], label="2d:intra_aggregate"))
    # 2: inter-host exchange between proxies
    a2, b2 = np.nonzero(off_host & (W > 0))
    k2 = proxy[a2, b2]
    stages.append(FlowStage(rank_grid[a2, k2], rank_grid[b2, k2], W[a2, b2], label="2d:inter_exchange"))
    # 3: intra-host scatter from proxies
    B3 = np.zeros((m, g, g))
    aa, bb = np.nonzero(off_host)
    for q in range(g):
        np.add.at(B3, (bb, proxy[aa, bb], np.full(len(aa), q)), U[aa, bb, q])
    b3, k3, q3 = np.nonzero(B3 * (1 - np.eye(g))[None, :, :])
    stages.append(FlowStage(rank_grid[b3, k3], rank_grid[b3, q3], B3[b3, k3, q3], label="2d:intra_scatter"))
    return [s for s in stages if s.num_flows]


def _ring(r: np.ndarray, chunk: float, steps: int, label: str) -> list[Stage]:
    if len(r) < 2 or chunk <= 0 or steps <= 0:
        return []
    # pipelined: each rank streams steps * chunk bytes to its ring successor and pays one message
    # latency per step, so the time is steps * (chunk / B + alpha) alone and bytes keep flowing
    # under contention (as NCCL's chunked rings do) with one fluid event per collective.
    return [FlowStage(r, np.roll(r, -1), chunk * steps, label=label, latency_steps=steps)]


def all_reduce(ranks: Sequence[int], bytes_per_rank: float, topology: Topology | None = None,
               algorithm: str = "ring") -> Collective:
    """All-reduce of a ``bytes_per_rank`` buffer. ``ring``: reduce-scatter then all-gather around the
    ring in the given rank order, 2(N-1) steps of S/N bytes per rank; ``direct``: reduce-scatter and
    all-gather each as one All-to-All of S/N-byte chunks."""
    _check_algorithm("all_reduce", algorithm)
    r = _ranks(ranks, topology)
    s = _size(bytes_per_rank)
    n = len(r)
    coll = Collective("all_reduce", algorithm, r, [], s)
    if algorithm == "ring":
        coll.stages = _ring(r, s / n, 2 * (n - 1), "all_reduce:ring")
    elif n > 1 and s > 0:
        coll.stages = [UniformStage(r, s / n, label="all_reduce:reduce_scatter"),
                       UniformStage(r, s / n, label="all_reduce:all_gather")]
    return coll


def _half_ring(op: str, ranks: Sequence[int], bytes_per_rank: float, topology: Topology | None,
               algorithm: str) -> Collective:
    """Reduce-scatter or all-gather: N-1 ring steps of S/N bytes, or one direct exchange of S/N chunks."""
    _check_algorithm(op, algorithm)
    r = _ranks(ranks, topology)
    s = _size(bytes_per_rank)
    n = len(r)
    coll = Collective(op, algorithm, r, [], s)
    if algorithm == "ring":
        coll.stages = _ring(r, s / n, n - 1, f"{op}:ring")
    elif n > 1 and s > 0:
        coll.stages = [UniformStage(r, s / n, label=op)]
    return coll


def reduce_scatter(ranks: Sequence[int], bytes_per_rank: float, topology: Topology | None = None,
                   algorithm: str = "ring") -> Collective:
    """Reduce-scatter of a ``bytes_per_rank`` input: N-1 ring steps of S/N bytes, or one direct exchange."""
    return _half_ring("reduce_scatter", ranks, bytes_per_rank, topology, algorithm)


def all_gather(ranks: Sequence[int], bytes_per_rank: float, topology: Topology | None = None,
               algorithm: str = "ring") -> Collective:
    """All-gather into a ``bytes_per_rank`` output (each rank contributes S/N): N-1 ring steps, or one
    direct exchange."""
    return _half_ring("all_gather", ranks, bytes_per_rank, topology, algorithm)


def p2p(src, dst, nbytes) -> Collective:
    """Point-to-point transfer(s): rank ``src`` sends ``nbytes`` to ``dst`` (arrays give several at once)."""
    s = np.atleast_1d(np.asarray(src, dtype=np.int64))
    t = np.atleast_1d(np.asarray(dst, dtype=np.int64))
    b = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), s.shape)
    stage = FlowStage(s, t, b, label="p2p")
    return Collective("p2p", "direct", np.unique(np.concatenate([s, t])), [stage] if stage.num_flows else [],
                      float(b.sum()))


def build(op: str, ranks: Sequence[int], bytes_per_rank, topology: Topology | None = None,
          algorithm: str | None = None) -> Collective:
    """Dispatch by operation name (``all_to_all``, ``all_reduce``, ``all_gather``, ``reduce_scatter``)."""
    if op not in OPS:
        raise MoesimError(f"unknown collective {op!r} (choose from {', '.join(OPS)})")
    algo = algorithm or ALGORITHMS[op][0]
    fn = {"all_to_all": all_to_all, "all_reduce": all_reduce, "all_gather": all_gather,
          "reduce_scatter": reduce_scatter}[op]
    return fn(ranks, bytes_per_rank, topology, algo)
