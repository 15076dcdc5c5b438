"""Small numeric helpers for the fits (numpy only): non-negative weighted least squares for a few
unknowns, vectorised over many candidate values of the non-linear parameters."""
from __future__ import annotations

import itertools

import numpy as np


def nnls_relative(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``sum(((X @ c) - y) / y)**2`` with ``c >= 0`` for a batch of targets.

    ``X``: (rows, p) design matrix shared by all candidates, or (cand, rows, p); ``y``: (cand, rows)
    targets (here: measured time minus the non-linear part, divided later by the measured time).
    The weights are ``1/meas`` supplied by the caller through ``X`` and ``y`` already divided.
    Returns (coefficients (cand, p), sum of squared residuals (cand,)). Exhaustive active sets
    (p is at most 4 here), so the result is the exact constrained optimum."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:
        X = np.broadcast_to(X, (y.shape[0],) + X.shape)
    cand, rows, p = X.shape
    # scale columns to unit size (times and bytes differ by 1e15): solve well conditioned
    scale = np.sqrt(np.einsum("crp,crp->cp", X, X))
    scale = np.where(scale > 0, scale, 1.0)
    X = X / scale[:, None, :]
    best_c = np.zeros((cand, p))
    best_s = np.einsum("ij,ij->i", y, y)              # all coefficients zero
    for size in range(1, p + 1):
        for subset in itertools.combinations(range(p), size):
            cols = list(subset)
            A = X[:, :, cols]
            AtA = np.einsum("crp,crq->cpq", A, A)
            Aty = np.einsum("crp,cr->cp", A, y)
            AtA = AtA + np.eye(len(cols)) * 1e-12
            try:
                c = np.linalg.solve(AtA, Aty[..., None])[..., 0]
            except np.linalg.LinAlgError:  # pragma: no cover - singular for every candidate
                continue
            r = np.einsum("crp,cp->cr", A, c) - y
            s = np.einsum("ij,ij->i", r, r)
            ok = np.all(c >= 0, axis=1) & (s < best_s - 1e-15 * np.maximum(1.0, best_s))
            if ok.any():
                full = np.zeros((cand, p))
                full[:, cols] = c
                best_c[ok] = full[ok]
                best_s[ok] = s[ok]
    return best_c / scale, best_s


def refine_grid(objective, lo: np.ndarray, hi: np.ndarray, points: int = 17, rounds: int = 6,
                log: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Minimise ``objective(candidates (n, d)) -> (n,)`` over a box by a grid search that zooms in
    around the best point (in log space for dimensions with ``log``). Deterministic."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    d = lo.size
    log = np.zeros(d, dtype=bool) if log is None else np.asarray(log, dtype=bool)
    to = lambda x: np.where(log, np.log(x), x)        # noqa: E731
    frm = lambda u: np.where(log, np.exp(u), u)        # noqa: E731
    a, b = to(lo), to(hi)
    best_x, best_f = None, np.inf
    for _ in range(rounds):
        axes = [np.linspace(a[i], b[i], points) if b[i] > a[i] else np.array([a[i]]) for i in range(d)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
        f = objective(frm(grid))
        i = int(np.nanargmin(f))
        if f[i] < best_f:
            best_f, best_x = float(f[i]), grid[i]
        width = (b - a) / (points - 1) * 2.0
        a = np.maximum(to(lo), best_x - width)
        b = np.minimum(to(hi), best_x + width)
    return frm(best_x), best_f
