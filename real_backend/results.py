"""Tidy measurement tables (CSV with a one-line JSON metadata header). No torch needed.

File layout::

    # moesim-real-backend v1 <kind>
    # meta {"kind": "run", "host": ..., "torch_version": ..., "backend": ..., "world_size": ...,
    #       "git_commit": ..., "config": {...}, ...}
    step,rank,phase,direction,seconds,...

``read_table(path)`` returns ``(pandas.DataFrame, meta dict)``. Files are written atomically
(``moesim.io.atomic_path``): a table is whole or absent.
"""
from __future__ import annotations

import csv
import datetime
import getpass
import io
import json
import os
import platform
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from moesim.errors import InputFileError
from moesim.io import atomic_path

MAGIC = "# moesim-real-backend v1"

#: Columns of ``real_backend.run`` tables (long format: one row per step, rank, phase, direction).
RUN_COLUMNS = ("step", "rank", "phase", "direction", "seconds", "count", "bytes", "bytes_remote",
               "run_id", "host", "backend", "world_size", "structure", "mode", "ep", "dp")

#: Columns of ``real_backend.run --timeline`` tables: every timed interval of the measured steps, per
#: rank in the order it was taken (``seq``), start and end in ``time.perf_counter`` seconds (one clock
#: for all the processes of one machine), and the CPU seconds the rank's main thread spent in it
#: (``cpu_s``, ``time.thread_time``; empty where unknown; tables before it lack the column).
TIMELINE_COLUMNS = ("structure", "step", "rank", "seq", "phase", "direction", "start_s", "end_s", "cpu_s")

#: Columns of ``real_backend.microbench`` tables (one row per measurement repetition and rank).
MICROBENCH_COLUMNS = ("kind", "group", "group_size", "m", "n", "k", "size_bytes", "dtype", "rank", "rep",
                      "seconds", "bytes", "bytes_remote", "flop", "run_id", "host", "backend", "world_size")


def git_commit() -> str:
    """HEAD of the repository this package lives in (``+dirty`` if it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=here, capture_output=True,
                               timeout=10).returncode
        return sha + ("+dirty" if dirty == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def base_meta(kind: str) -> dict[str, Any]:
    """Provenance common to all tables (torch fields are added by the writers that have torch)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return {"kind": kind, "run_id": uuid.uuid4().hex[:12],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "user": user, "git_commit": git_commit(), "cpu_count": os.cpu_count(),
            "testbed": json.loads(os.environ["MOESIM_TESTBED"]) if os.environ.get("MOESIM_TESTBED") else None}


def write_table(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]],
                meta: Mapping[str, Any]) -> Path:
    """Write rows (dicts; missing keys -> empty cells) with the metadata header, atomically."""
    buf = io.StringIO()
    buf.write(f"{MAGIC} {meta.get('kind', '')}\n")
    buf.write("# meta " + json.dumps(dict(meta), sort_keys=True, default=str) + "\n")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        first, second = f.readline(), f.readline()
    if not first.startswith(MAGIC) or not second.startswith("# meta "):
        raise InputFileError(path, "not a moesim real_backend table (missing '# moesim-real-backend' header)")
    try:
        return json.loads(second[len("# meta "):])
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"bad metadata line: {exc}") from None


def read_table(path: str | os.PathLike):
    """(DataFrame, meta) of a table written by ``write_table``."""
    import pandas as pd
    meta = read_meta(path)
    df = pd.read_csv(path, skiprows=2)
    return df, meta
