"""Small numpy helpers for ragged (CSR) data and a cache of CSR rows keyed by int64."""
from __future__ import annotations

import numpy as np


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets, lengths) + np.arange(total, dtype=np.int64)


def indptr_from_counts(counts: np.ndarray) -> np.ndarray:
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


class RowCache:
    """Rows of (link id, fraction) keyed by int64, with per-key float attributes; vectorised lookups."""

    def __init__(self, extra: tuple[str, ...] = ()):
        self.keys = np.zeros(0, dtype=np.int64)      # sorted
        self._row = np.zeros(0, dtype=np.int64)      # row number of each sorted key
        self.start = np.zeros(0, dtype=np.int64)     # by row number
        self.length = np.zeros(0, dtype=np.int64)
        self.links = np.zeros(0, dtype=np.int64)
        self.fracs = np.zeros(0, dtype=np.float64)
        self.extra = {name: np.zeros(0, dtype=np.float64) for name in extra}

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row numbers of ``keys`` (-1 where absent)."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, len(self.keys) - 1)
        hit = self.keys[pos_c] == keys
        return np.where(hit, self._row[pos_c], -1)

    def add(self, keys: np.ndarray, counts: np.ndarray, links: np.ndarray, fracs: np.ndarray, **extra) -> None:
        """Append rows (keys must be new and unique); row i holds the next counts[i] entries."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) == 0:
            return
        first_row = len(self.start)
        new_start = len(self.links) + np.cumsum(counts) - counts
        self.start = np.concatenate([self.start, new_start])
        self.length = np.concatenate([self.length, np.asarray(counts, dtype=np.int64)])
        self.links = np.concatenate([self.links, np.asarray(links, dtype=np.int64)])
        self.fracs = np.concatenate([self.fracs, np.asarray(fracs, dtype=np.float64)])
        for name in self.extra:
            self.extra[name] = np.concatenate([self.extra[name], np.asarray(extra[name], dtype=np.float64)])
        all_keys = np.concatenate([self.keys, keys])
        all_rows = np.concatenate([self._row, np.arange(first_row, first_row + len(keys), dtype=np.int64)])
        order = np.argsort(all_keys, kind="stable")
        self.keys, self._row = all_keys[order], all_rows[order]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, links, fracs) of the given rows, in order."""
        lengths = self.length[rows]
        idx = ranges(self.start[rows], lengths)
        return indptr_from_counts(lengths), self.links[idx], self.fracs[idx]
