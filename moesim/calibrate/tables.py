"""Read and validate real_backend measurement tables (no torch needed).

Two kinds of tables share one file layout (``real_backend.results``)::

    # moesim-real-backend v1 <kind>
    # meta {json}
    csv header
    rows...

* ``microbench`` tables (``real_backend.microbench`` and :mod:`moesim.calibrate.membench`): one row per
  repetition and rank; ``kind`` is ``gemm``, ``memory``, ``all_to_all`` or ``all_reduce``.
* ``run`` tables (``real_backend.run``): one row per step, rank, phase and direction.

Every check names the file and the column at fault, and explains what was expected, so that a bad
file fails with one clear message (:class:`moesim.errors.InputFileError`).
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import InputFileError
from moesim.io import read_input_bytes

MAGIC = "# moesim-real-backend v1"
MICROBENCH_KINDS = ("gemm", "memory", "all_to_all", "all_reduce")
COLLECTIVE_KINDS = ("all_to_all", "all_reduce")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
#: columns every microbench row needs; GEMM rows also need m, n, k; collective rows size_bytes, group_size
MICROBENCH_REQUIRED = ("kind", "group", "rank", "seconds")
RUN_REQUIRED = ("step", "rank", "phase", "direction", "seconds")
#: the longest single measurement we accept (s): anything longer is almost surely in ms or us
MAX_SECONDS = 3600.0
#: column names that betray a time unit other than seconds
_TIME_UNIT_NAMES = {"ms": "milliseconds", "msec": "milliseconds", "milliseconds": "milliseconds",
                    "us": "microseconds", "usec": "microseconds", "microseconds": "microseconds",
                    "ns": "nanoseconds", "nanoseconds": "nanoseconds"}


@dataclass
class Table:
    """One validated measurement table."""

    path: Path
    kind: str                 # microbench | run
    df: pd.DataFrame
    meta: dict
    sha256: str = ""
    notes: list = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return int(self.meta.get("world_size") or 1)

    @property
    def testbed(self) -> dict | None:
        tb = self.meta.get("testbed")
        return tb if isinstance(tb, dict) else None


def sha256_of(path: str | os.PathLike) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_raw(path: Path) -> tuple[str, dict, pd.DataFrame]:
    try:
        text = read_input_bytes(path, "a measurement table").decode()
    except UnicodeDecodeError:
        raise InputFileError(path, "not a text file (expected a real_backend CSV table)") from None
    if not text.strip():
        raise InputFileError(path, "empty file (expected a real_backend CSV table with a '# moesim-real-backend' header)")
    lines = text.splitlines(keepends=True)
    if not lines[0].startswith(MAGIC):
        raise InputFileError(path, "not a moesim real_backend table: the first line must start with "
                                   f"'{MAGIC}' (write it with real_backend.microbench / real_backend.run)")
    kind = lines[0][len(MAGIC):].strip()
    if len(lines) < 2 or not lines[1].startswith("# meta "):
        raise InputFileError(path, "missing the '# meta {json}' line after the header")
    try:
        meta = json.loads(lines[1][len("# meta "):])
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"bad '# meta' line: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise InputFileError(path, "bad '# meta' line: expected a JSON object")
    body = "".join(lines[2:])
    if not body.strip():
        raise InputFileError(path, "empty table: no CSV header and no rows after the meta line")
    try:
        df = pd.read_csv(io.StringIO(body), skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputFileError(path, f"malformed CSV: {str(exc).strip().splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise InputFileError(path, "empty table: a header but no rows")
    return kind or str(meta.get("kind", "")), meta, df


def _unit_check(path: Path, df: pd.DataFrame) -> None:
    """Refuse time columns in other units (``ms``, ``time_us``, ``seconds [ms]``...)."""
    for col in df.columns:
        low = col.lower().replace("[", "_").replace("]", "").replace("(", "_").replace(")", "").replace(" ", "_")
        parts = [p for p in low.split("_") if p]
        for p in parts:
            if p in _TIME_UNIT_NAMES and (len(parts) == 1 or any(q in ("time", "seconds", "latency", "duration")
                                                                   for q in parts)):
                raise InputFileError(path, f"column '{col}' is in {_TIME_UNIT_NAMES[p]}: the table must give times "
                                           "in a 'seconds' column (SI units)")


def _numeric(path: Path, df: pd.DataFrame, col: str, *, rows=None, positive: bool = False,
             integer: bool = False) -> pd.Series:
    """Column ``col`` (restricted to ``rows``) as floats; one clear error for the first bad cell."""
    if col not in df.columns:
        raise InputFileError(path, f"missing column '{col}'")
    s = df[col] if rows is None else df.loc[rows, col]
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
    if bad.any():
        i = bad.idxmax()
        raise InputFileError(path, f"column '{col}' must be numeric: row {int(i) + 1} has {s.loc[i]!r}")
    if num.isna().any():
        i = num.isna().idxmax()
        raise InputFileError(path, f"column '{col}' has an empty or NaN cell at row {int(i) + 1}")
    arr = num.to_numpy(dtype=float)
    if not np.all(np.isfinite(arr)):
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InputFileError(path, f"column '{col}' must be finite: row {int(num.index[i]) + 1} has {float(arr[i]):g}")
    if np.any(arr < 0):
        i = int(np.flatnonzero(arr < 0)[0])
        raise InputFileError(path, f"column '{col}' must not be negative: row {int(num.index[i]) + 1} has {float(arr[i]):g}")
    if positive and np.any(arr == 0):
        i = int(np.flatnonzero(arr == 0)[0])
        raise InputFileError(path, f"column '{col}' must be positive: row {int(num.index[i]) + 1} has 0")
    if integer and np.any(arr != np.round(arr)):
        i = int(np.flatnonzero(arr != np.round(arr))[0])
        raise InputFileError(path, f"column '{col}' must hold whole numbers: row {int(num.index[i]) + 1} has {float(arr[i]):g}")
    return pd.Series(arr, index=num.index)


def _seconds(path: Path, df: pd.DataFrame, rows=None) -> pd.Series:
    sec = _numeric(path, df, "seconds", rows=rows, positive=True)
    if (sec > MAX_SECONDS).any():
        i = sec.idxmax()
        raise InputFileError(path, f"column 'seconds' has {float(sec.loc[i]):g} at row {int(i) + 1}: longer than "
                                   f"{MAX_SECONDS:g} s for one measurement; wrong units (ms or us)?")
    return sec


def _validate_microbench(path: Path, df: pd.DataFrame) -> pd.DataFrame:
    for col in MICROBENCH_REQUIRED:
        if col not in df.columns:
            raise InputFileError(path, f"missing column '{col}' (a microbench table needs {', '.join(MICROBENCH_REQUIRED)})")
    df = df.copy()
    df["kind"] = df["kind"].astype(str).str.strip()
    unknown = sorted(set(df["kind"]) - set(MICROBENCH_KINDS))
    if unknown:
        raise InputFileError(path, f"column 'kind' has unknown value(s) {unknown} (expected {', '.join(MICROBENCH_KINDS)})")
    df["seconds"] = _seconds(path, df)
    df["rank"] = _numeric(path, df, "rank", integer=True)
    gemm = df["kind"] == "gemm"
    if gemm.any():
        for col in ("m", "n", "k"):
            df.loc[gemm, col] = _numeric(path, df, col, rows=gemm, positive=True, integer=True)
        if "flop" in df.columns:
            flop = _numeric(path, df, "flop", rows=gemm)
            expect = 2.0 * df.loc[gemm, "m"] * df.loc[gemm, "n"] * df.loc[gemm, "k"]
            off = pd.Series(~np.isclose(flop, expect, rtol=1e-6), index=flop.index)
            if off.any():
                i = off.idxmax()
                raise InputFileError(path, f"column 'flop' must be 2*m*n*k FLOP: row {int(i) + 1} has {float(flop.loc[i]):g}, "
                                           f"expected {expect.loc[i]:.0f} (wrong units?)")
        if "dtype" in df.columns:
            bad = ~df.loc[gemm, "dtype"].astype(str).isin(DTYPE_BYTES)
            if bad.any():
                i = bad.idxmax()
                raise InputFileError(path, f"column 'dtype' has {df.loc[i, 'dtype']!r} at row {int(i) + 1} "
                                           f"(expected one of {', '.join(DTYPE_BYTES)})")
    other = ~gemm
    if other.any():
        df.loc[other, "size_bytes"] = _numeric(path, df, "size_bytes", rows=other, positive=True)
    coll = df["kind"].isin(COLLECTIVE_KINDS)
    if coll.any():
        df.loc[coll, "group_size"] = _numeric(path, df, "group_size", rows=coll, positive=True, integer=True)
        df["group"] = df["group"].astype(str).str.strip()
    return df


def _validate_run(path: Path, df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    for col in RUN_REQUIRED:
        if col not in df.columns:
            raise InputFileError(path, f"missing column '{col}' (a run table needs {', '.join(RUN_REQUIRED)})")
    df = df.copy()
    df["seconds"] = _seconds(path, df)
    df["rank"] = _numeric(path, df, "rank", integer=True)
    df["step"] = _numeric(path, df, "step", integer=True)
    df["phase"] = df["phase"].astype(str).str.strip()
    if not (df["phase"] == "step").any():
        raise InputFileError(path, "column 'phase' has no 'step' rows (the whole-step time)")
    if not isinstance(meta.get("config"), dict):
        raise InputFileError(path, "the '# meta' line has no 'config' (the run's configuration)")
    return df


def read_table(path: str | os.PathLike, expect: str | None = None) -> Table:
    """Read and validate one table. ``expect``: ``microbench`` or ``run`` (default: from the header)."""
    p = Path(path)
    kind, meta, df = _read_raw(p)
    _unit_check(p, df)
    if kind not in ("microbench", "run"):
        kind = "microbench" if "kind" in df.columns else "run" if "phase" in df.columns else kind
    if expect and kind != expect:
        raise InputFileError(p, f"is a '{kind}' table, expected a '{expect}' table "
                                f"({'real_backend.microbench' if expect == 'microbench' else 'real_backend.run'} output)")
    if kind == "microbench":
        df = _validate_microbench(p, df)
    elif kind == "run":
        df = _validate_run(p, df, meta)
    else:
        raise InputFileError(p, f"unknown table kind '{kind}' (expected microbench or run)")
    return Table(p, kind, df, meta, sha256_of(p))


def gemm_medians(tables: list[Table]) -> pd.DataFrame:
    """Median seconds per (world size, dtype, m, n, k) over ranks and repetitions."""
    frames = []
    for t in tables:
        d = t.df[t.df["kind"] == "gemm"]
        if len(d):
            d = d.assign(world_size=t.world_size, source=t.path.name)
            if "dtype" not in d.columns:
                d = d.assign(dtype="fp32")
            frames.append(d)
    if not frames:
        return pd.DataFrame(columns=["world_size", "dtype", "m", "n", "k", "seconds", "samples"])
    d = pd.concat(frames, ignore_index=True)
    g = d.groupby(["world_size", "dtype", "m", "n", "k"])["seconds"]
    return pd.DataFrame({"seconds": g.median(), "samples": g.size()}).reset_index()


def memory_medians(tables: list[Table]) -> pd.DataFrame:
    frames = []
    for t in tables:
        d = t.df[t.df["kind"] == "memory"]
        if len(d):
            frames.append(d.assign(world_size=t.world_size))
    if not frames:
        return pd.DataFrame(columns=["world_size", "size_bytes", "seconds", "samples"])
    d = pd.concat(frames, ignore_index=True)
    g = d.groupby(["world_size", "size_bytes"])["seconds"]
    return pd.DataFrame({"seconds": g.median(), "samples": g.size()}).reset_index()


def testbed_of(meta: dict) -> dict:
    """(hosts, ranks_per_host, rate_bits or 0) of a table's testbed; a plain launch is one host."""
    tb = meta.get("testbed") if isinstance(meta.get("testbed"), dict) else None
    world = int(meta.get("world_size") or 1)
    if tb:
        return {"hosts": int(tb["hosts"]), "ranks_per_host": int(tb["ranks_per_host"]),
                "rate_bits": float(tb.get("rate_bits") or 0.0)}
    local = int(meta.get("local_world_size") or world)
    return {"hosts": max(1, world // max(1, local)), "ranks_per_host": local, "rate_bits": 0.0}


def collective_medians(tables: list[Table]) -> pd.DataFrame:
    """Median seconds per (testbed, kind, group, size) over ranks and repetitions (collectives).

    For each repetition the slowest rank defines the collective's time (a collective ends when its
    last member ends), then the median over repetitions is taken."""
    rows = []
    for t in tables:
        d = t.df[t.df["kind"].isin(COLLECTIVE_KINDS)]
        if not len(d):
            continue
        tb = testbed_of(t.meta)
        rep = d["rep"] if "rep" in d.columns else pd.Series(0, index=d.index)
        d = d.assign(rep=rep)
        per_rep = d.groupby(["kind", "group", "group_size", "size_bytes", "rep"])["seconds"].max()
        med = per_rep.groupby(level=[0, 1, 2, 3]).median()
        cnt = per_rep.groupby(level=[0, 1, 2, 3]).size()
        for (kind, group, gsize, size), sec in med.items():
            rows.append({"source": t.path.name, "hosts": tb["hosts"], "ranks_per_host": tb["ranks_per_host"],
                         "rate_bits": tb["rate_bits"], "kind": kind, "group": group, "group_size": int(gsize),
                         "size_bytes": float(size), "seconds": float(sec), "samples": int(cnt[(kind, group, gsize, size)])})
    return pd.DataFrame(rows)


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
