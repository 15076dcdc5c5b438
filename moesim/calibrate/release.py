"""The measured release stagger of All-to-Alls on shaped links, from ``real_backend.patterns`` tables.

Each repetition of a pattern records when its first and last rank returned (``release_first_s``,
``release_last_s``, from the common start) and ``release_spread`` = (last - first) / last: the
fraction of the collective's time over which its members are released. The engine's shared-core
mode (:mod:`moesim.engine.netbridge`) releases All-to-All members over that fraction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from moesim.calibrate.tables import _read_raw
from moesim.errors import InputFileError, MoesimError

REQUIRED = ("pattern", "rep", "release_spread", "rate_bits")


@dataclass
class ReleaseSpread:
    """``spread``: median ``release_spread`` over every All-to-All repetition on a shaped link (a
    fraction in [0, 1)); ``per_file``: file name -> its median; ``rows``: repetitions used."""

    spread: float
    per_file: dict
    rows: int

    def to_dict(self) -> dict:
        return {"release_spread": self.spread, "per_file": self.per_file, "repetitions": self.rows}


def read_patterns(path: str | os.PathLike) -> pd.DataFrame:
    """One ``real_backend.patterns`` table with release columns, validated (errors name the file and
    the column)."""
    p = Path(path)
    kind, _meta, df = _read_raw(p)
    if kind != "patterns":
        raise InputFileError(p, f"is a '{kind}' table, expected a 'patterns' table (real_backend.patterns)")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputFileError(p, f"missing column(s) {', '.join(missing)} (release times are recorded by "
                                "real_backend.patterns since it writes release_spread)")
    for col in ("release_spread", "rate_bits"):
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() | ~np.isfinite(vals)
        if bad.any():
            raise InputFileError(p, f"column '{col}' row {int(np.flatnonzero(bad.to_numpy())[0]) + 1}: "
                                    f"not a finite number ({df[col].iloc[int(np.flatnonzero(bad.to_numpy())[0])]!r})")
        df[col] = vals
    out = df["release_spread"]
    if ((out < 0) | (out >= 1)).any():
        raise InputFileError(p, "column 'release_spread' must lie in [0, 1): it is (last - first) / last "
                                "of the ranks' return times")
    return df


def release_spread(paths: Sequence[str | os.PathLike]) -> ReleaseSpread:
    """The median All-to-All release spread on shaped links over ``paths`` (patterns tables)."""
    if not paths:
        raise MoesimError("no patterns tables given (real_backend.patterns with release columns)")
    per_file, values = {}, []
    for path in paths:
        df = read_patterns(path)
        a2a = df[(df["pattern"].astype(str) == "all_to_all") & (df["rate_bits"] > 0)]
        if len(a2a):
            per_file[Path(path).name] = float(a2a["release_spread"].median())
            values.extend(a2a["release_spread"].tolist())
    if not values:
        raise MoesimError("the patterns tables hold no all_to_all repetition on a shaped link "
                          "(run real_backend.patterns --patterns all_to_all on a testbed with --rate)")
    return ReleaseSpread(float(np.median(values)), per_file, len(values))
