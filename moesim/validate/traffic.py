"""The All-to-All traffic a measured run really had, from its run table.

A real router (real_backend's, randomly initialised and trained for a few steps) does not spread
token copies evenly: on the committed campaign the busiest host link carries 2-14 % more than the
mean, and the capacity factor drops a few copies. A collective ends with its busiest link, so the
simulator replays the measured traffic instead of the config's idealised routing.

The table gives, per rank and step, the bytes each rank sent in the forward dispatch (``bytes``;
``bytes_remote`` the part addressed to other ranks, so the rest is its own share) and, through the
forward combine (the transposed exchange), the bytes it received. That fixes the diagonal and the
row and column sums of the dispatch matrix; the off-diagonal entries are the maximum-entropy matrix
with those margins (iterative proportional fitting from uniform). Every link's load is then exact
when each host holds one rank, and exact per host (split between loopback and NIC estimated) when
hosts hold several.
"""
from __future__ import annotations

import numpy as np

from moesim.errors import InputFileError


def _ipf(rows: np.ndarray, cols: np.ndarray, mask: np.ndarray, iters: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Non-negative matrix supported on ``mask`` with row sums ``rows`` and column sums ``cols``."""
    m = mask.astype(float)
    for _ in range(iters):
        r = m.sum(axis=1)
        m *= np.divide(rows, r, out=np.zeros_like(rows), where=r > 0)[:, None]
        c = m.sum(axis=0)
        m *= np.divide(cols, c, out=np.zeros_like(cols), where=c > 0)[None, :]
        if np.allclose(m.sum(axis=1), rows, rtol=tol, atol=tol * max(1.0, rows.max())):
            break
    return m


def measured_dispatch_copies(table, ep: int, a2a_dim: int, dtype_bytes: float) -> np.ndarray | None:
    """Token copies per forward dispatch, ``[src rank, dst rank]`` (mean over steps and layers), or
    None when the table records no dispatch traffic (a dense model, ep = 1, or no byte counts)."""
    df = table.df
    disp = df[(df["phase"] == "dispatch") & (df["direction"] == "fwd")]
    comb = df[(df["phase"] == "combine") & (df["direction"] == "fwd")]
    if disp.empty or "bytes" not in df or disp["bytes"].isna().all():
        return None
    if comb.empty:
        raise InputFileError(table.path, "has forward dispatch rows but no forward combine rows: "
                                         "cannot tell what each rank received")
    world = int(df["rank"].max()) + 1
    if world != ep:
        raise InputFileError(table.path, f"measured traffic needs one expert-parallel group over all ranks "
                                         f"(ep = world), found ep={ep}, {world} ranks")

    def per_rank(rows, col):
        x = rows.assign(v=rows[col].astype(float) / rows["count"].astype(float))
        v = x.groupby(["step", "rank"])["v"].sum(min_count=1).groupby(level="rank").mean(skipna=False)
        return v.reindex(range(world)).to_numpy()

    sent, sent_remote = per_rank(disp, "bytes"), per_rank(disp, "bytes_remote")
    recv = per_rank(comb, "bytes")
    for name, v in (("dispatch bytes", sent), ("dispatch bytes_remote", sent_remote), ("combine bytes", recv)):
        if not np.all(np.isfinite(v)) or (v < 0).any():
            raise InputFileError(table.path, f"column '{name.split()[-1]}' of the {name.split()[0]} rows is "
                                             "missing or negative for some rank")
    local = sent - sent_remote
    recv_remote = recv - local
    if (local < -1e-6).any() or (recv_remote < -1e-6).any():
        raise InputFileError(table.path, "dispatch/combine byte counts are inconsistent "
                                         "(bytes_remote > bytes, or a rank received less than it kept)")
    off = ~np.eye(world, dtype=bool)
    # rows and columns must carry the same total; scale received to the sent total (rounding)
    rr, cr = sent_remote, np.clip(recv_remote, 0, None)
    if cr.sum() > 0:
        cr = cr * rr.sum() / cr.sum()
    m = _ipf(rr, cr, off)
    m[np.diag_indices(world)] = np.clip(local, 0, None)
    return m / (a2a_dim * dtype_bytes)
