"""The resumable result store: an append-only journal of small part files, one per finished
scenario (``<out>.journal/<scenario id>.json``, each written to a temporary name, fsynced and
renamed, so a part is whole or absent whatever kills the sweep), and the table assembled from it
atomically at the end (Parquet, or CSV when the output ends in ``.csv``).

A scenario's part is named by its id, so writing it twice replaces it: no row can be duplicated.
One sweep at a time may write a journal (an advisory lock, released when the process dies).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from moesim.errors import InputFileError, MoesimError
from moesim.io import atomic_path

PART_SUFFIX = ".json"


def journal_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".journal")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalars
        return _jsonable(v.item())
    return v


class Journal:
    """Finished scenarios of one output file. Use as a context manager (takes the lock)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.dir = journal_dir(out)
        self._lock_fd: int | None = None

    def __enter__(self) -> "Journal":
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MoesimError(f"another sweep is writing {self.out} (its journal {self.dir} is locked)") from None
        self._lock_fd = fd
        for stale in self.dir.glob(".part-*"):  # temporaries of a killed writer
            with contextlib.suppress(OSError):
                stale.unlink()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def clear(self) -> None:
        """Forget every finished scenario (``--fresh``)."""
        for part in self.dir.glob(f"*{PART_SUFFIX}"):
            part.unlink()

    def write(self, row: dict) -> None:
        """Record one finished scenario (atomic, durable)."""
        sid = row["scenario_id"]
        text = json.dumps({k: _jsonable(v) for k, v in row.items()}, allow_nan=False)
        fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{sid}{PART_SUFFIX}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def finished(self) -> dict[str, str]:
        """scenario id -> status of every part on disk."""
        out = {}
        for part in self.dir.glob(f"*{PART_SUFFIX}"):
            row = self._read(part)
            if row is not None:
                out[part.stem] = row.get("status", "error")
        return out

    def _read(self, part: Path) -> dict | None:
        try:
            row = json.loads(part.read_text())
        except (OSError, ValueError):
            return None  # unreadable part: treated as not finished, the scenario runs again
        return row if isinstance(row, dict) and row.get("scenario_id") == part.stem else None

    def rows(self, ids: Iterable[str]) -> list[dict]:
        """Rows of the given scenario ids that are finished, in that order."""
        out = []
        for sid in ids:
            part = self.dir / f"{sid}{PART_SUFFIX}"
            if part.exists():
                row = self._read(part)
                if row is not None:
                    out.append(row)
        return out


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Column order (ids, resolved inputs, inputs, outputs) and one type per column."""
    first = [c for c in ("scenario_id", "index", "status", "error", "label") if c in df]
    resolved = [c for c in ("model", "structure", "mode", "top_k", "ratio", "experts", "dp", "tp", "ep", "gpus",
                            "nodes", "topology", "intra", "nic_bandwidth", "nic_gbps", "profile", "a2a_algorithm",
                            "tokens_per_step", "batch_size", "prompt_len", "gen_len") if c in df]
    ins = sorted(c for c in df if c.startswith("in."))
    rest = [c for c in df if c not in set(first) | set(resolved) | set(ins) and c not in ("inputs_json", "resolved_json")]
    tail = [c for c in ("inputs_json", "resolved_json") if c in df]
    df = df[first + resolved + ins + rest + tail].copy()
    for c in df.columns:
        if df[c].dtype == object:
            types = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if types and types <= {int, float}:
                df[c] = pd.to_numeric(df[c], errors="coerce")
            elif len(types) > 1:
                df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    for c in ("step_time_s",):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.reset_index(drop=True)


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    return _tidy(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=["scenario_id", "status", "error"])


def have_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def check_output(out: str | os.PathLike) -> None:
    """Fail early (before any scenario runs) when the output cannot be written."""
    p = Path(out)
    if p.suffix.lower() == ".csv":
        return
    if not have_parquet():
        raise MoesimError("writing Parquet needs pyarrow: pip install pyarrow (or the extra: pip install "
                          "'moesim[whatif]'), or give an output ending in .csv")


def write_table(df: pd.DataFrame, out: str | os.PathLike) -> None:
    """Write the results table atomically (Parquet, or CSV for a .csv name)."""
    p = Path(out)
    with atomic_path(p) as tmp:
        if p.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            check_output(p)
            df.to_parquet(tmp, engine="pyarrow", index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A results table written by a sweep (Parquet or CSV)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such results file")
    try:
        if p.suffix.lower() == ".csv":
            return pd.read_csv(p)
        check_output(p)
        return pd.read_parquet(p, engine="pyarrow")
    except MoesimError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputFileError(p, f"cannot read results table ({type(exc).__name__}: {exc})") from None


def remove_journal(out: str | os.PathLike) -> None:
    shutil.rmtree(journal_dir(out), ignore_errors=True)
