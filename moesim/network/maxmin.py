"""Max-min fair rates by progressive filling over a sparse flow x link incidence.

Row i (one flow, or a bundle of identical flows folded into its coefficients) loads column (link) l
with ``coef * rate_i`` bytes/s. All unfrozen rates rise together; when a link saturates, every unfrozen
flow on it freezes at the current level. Loads are kept incrementally: each round costs O(active links)
plus the entries of the flows it freezes, so the whole solve is O(nnz + rounds * links), where rounds is
the number of distinct bottleneck levels.
"""
from __future__ import annotations

import numpy as np

from moesim.network.csr import indptr_from_counts, ranges

_REL_TOL = 1e-9


def max_min_rates(rows: np.ndarray, cols: np.ndarray, coef: np.ndarray, capacity: np.ndarray,
                  num_rows: int | None = None) -> np.ndarray:
    """Max-min fair rate of every row (bytes/s per flow).

    rows, cols, coef: COO entries (duplicates add up); ``coef`` is the load the row puts on the column
    per unit of its rate (a bundle of n flows over one path has coef n; ECMP fractions scale it).
    capacity: per column, bytes/s. Rows without entries get rate ``inf``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    coef = np.asarray(coef, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.float64)
    n_rows = int(num_rows if num_rows is not None else (rows.max() + 1 if len(rows) else 0))
    n_cols = len(capacity)
    pos = coef > 0
    rows, cols, coef = rows[pos], cols[pos], coef[pos]
    rates = np.full(n_rows, np.inf)
    if len(rows) == 0:
        return rates
    r_ptr = indptr_from_counts(np.bincount(rows, minlength=n_rows))
    if np.all(rows[1:] >= rows[:-1]):
        r_cols, r_coef = cols, coef
    else:
        o = np.argsort(rows, kind="stable")
        r_cols, r_coef = cols[o], coef[o]
    o = np.argsort(cols)
    c_ptr = indptr_from_counts(np.bincount(cols, minlength=n_cols))
    c_rows = rows[o]
    load = np.bincount(cols, weights=coef, minlength=n_cols)
    live = np.bincount(cols, minlength=n_cols)          # unfrozen entries per link
    residual = capacity.copy()
    frozen = np.zeros(n_rows, dtype=bool)
    links = np.nonzero(live)[0]
    level = 0.0
    while len(links):
        ld = load[links]
        inc = residual[links] / ld
        delta = max(float(inc.min()), 0.0)
        level += delta
        residual[links] -= ld * delta
        hit = inc <= delta * (1 + _REL_TOL) + 1e-300
        sat = links[hit]
        residual[sat] = 0.0
        flows = c_rows[ranges(c_ptr[sat], c_ptr[sat + 1] - c_ptr[sat])]
        flows = np.unique(flows[~frozen[flows]])
        frozen[flows] = True
        rates[flows] = level
        e = ranges(r_ptr[flows], r_ptr[flows + 1] - r_ptr[flows])
        ec = r_cols[e]
        if len(e) > n_cols // 8:
            load -= np.bincount(ec, weights=r_coef[e], minlength=n_cols)
            live -= np.bincount(ec, minlength=n_cols)
        else:
            np.subtract.at(load, ec, r_coef[e])
            np.subtract.at(live, ec, 1)
        links = links[~hit]
        links = links[live[links] > 0]
    return rates


def link_loads(rows: np.ndarray, cols: np.ndarray, coef: np.ndarray, rates: np.ndarray, num_cols: int) -> np.ndarray:
    """Bytes/s on every column for the given row rates."""
    return np.bincount(cols, weights=coef * rates[rows], minlength=num_cols)
