"""Atomic file output: results appear whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it is renamed over ``path``,
    on any exception it is removed. Use for writers that take a file name (pandas, plotly)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def read_input_bytes(path: str | os.PathLike, what: str, missing: str = "no such file") -> bytes:
    """The bytes of a user's input file; a missing, unreadable or directory path raises
    :class:`moesim.errors.InputFileError` naming the file (``what``: e.g. "a topology file";
    ``missing``: the message for a file that does not exist)."""
    from moesim.errors import InputFileError
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputFileError(p, missing) from None
    except IsADirectoryError:
        raise InputFileError(p, f"is a directory, not {what}") from None
    except OSError as exc:
        raise InputFileError(p, f"cannot read ({exc.strerror or exc})") from None


def read_yaml_file(path: str | os.PathLike, what: str, missing: str = "no such file"):
    """Parsed YAML of a user's input file; unreadable files and bad YAML raise
    :class:`moesim.errors.InputFileError` naming the file."""
    import yaml

    from moesim.errors import InputFileError
    raw = read_input_bytes(path, what, missing)
    try:
        return yaml.safe_load(raw.decode())
    except UnicodeDecodeError:
        raise InputFileError(path, f"not a text file (expected {what})") from None
    except yaml.YAMLError as exc:
        raise InputFileError(path, f"not valid YAML ({exc})") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
