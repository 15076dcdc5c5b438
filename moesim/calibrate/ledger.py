"""The campaign's progress ledger: what an interrupted campaign already measured, so that
``--resume`` continues it instead of starting over.

A campaign stage (``measurements/`` or ``validation/``) writes ``progress.json`` beside its tables
after every finished run (atomically): the campaign's *design* (machine, model, steps, rates, rounds
and the code that measures) and one record per finished table. A resumed stage keeps a table only
where its record and its file are both there, and only when the design is the same as the one that
made it; any difference stops the campaign with the field that differs, because mixing tables
measured under two designs would make one configuration's rounds incomparable. When the stage ends,
its manifest (which records the design too) replaces the ledger, and a resumed campaign skips a stage
whose manifest holds the same design.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from moesim.io import write_json_atomic

LEDGER = "progress.json"
#: machine fields that change between identical machines or over time, left out of the design
VOLATILE_MACHINE = ("loadavg", "hostname")


def code_version(root: Path) -> str | None:
    """The git tree of the code that measures (``real_backend/`` and the testbed shaping) at HEAD,
    plus ``-dirty`` when either has uncommitted changes; None outside a git checkout."""
    paths = ["real_backend", "moesim/testbed_shaping.py"]
    try:
        trees = [subprocess.run(["git", "rev-parse", f"HEAD:{p}"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip() for p in paths]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return ":".join(t[:12] for t in trees) + ("-dirty" if dirty else "")


def design_of(info: dict, extra: dict) -> dict:
    """The fields of a campaign that decide what its tables measure: ``info`` (``campaign_info``)
    without the command line, the date and the machine's volatile fields, plus ``extra``."""
    machine = {k: v for k, v in info.get("machine", {}).items() if k not in VOLATILE_MACHINE}
    out = {k: v for k, v in info.items() if k not in ("command", "date", "machine")}
    return {"machine": machine, **out, **extra}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return diffs


class Ledger:
    """The finished runs of one campaign stage directory, kept in ``<dir>/progress.json``."""

    def __init__(self, directory: Path, design: dict, resume: bool, log, manifest: str):
        self.path = Path(directory) / LEDGER
        self.design = design
        self.records: dict[str, dict] = {}
        #: the stage's manifest when a resumed campaign finds the stage complete (same design), else None
        self.complete: dict | None = None
        if not self.path.is_file():
            if resume:
                self.complete = self._finished(Path(directory) / manifest)
            return
        if not resume:
            log(f"  {self.path}: an interrupted campaign's progress; starting over (--resume continues it)")
            self.path.unlink()
            return
        try:
            data = json.loads(self.path.read_text())
            old_design, records = data["design"], data["records"]
            if not isinstance(records, dict):
                raise TypeError("records is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{self.path}: not a campaign progress ledger ({exc}); remove it to start over")
        self._same_design(self.path, old_design, "the interrupted campaign had another design")
        directory = Path(directory)
        self.records = {name: rec for name, rec in records.items() if (directory / name).is_file()}
        if self.records:
            log(f"  resuming: {len(self.records)} finished run(s) kept from {self.path}")

    def _finished(self, manifest: Path) -> dict | None:
        """The stage's manifest if it was written under this design (the stage is complete)."""
        try:
            data = json.loads(manifest.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{manifest}: unreadable ({exc}); remove it to measure the stage again")
        if not isinstance(data, dict) or "design" not in data:
            return None
        self._same_design(manifest, data["design"], "this stage was completed under another design")
        return data

    def _same_design(self, source: Path, old: dict, what: str) -> None:
        """Stop, naming the fields that differ, unless ``old`` (recorded in ``source``) is this design."""
        diffs = _differences(old, self.design)
        if diffs:
            raise SystemExit(f"{source}: {what}, so the campaign cannot be continued: {'; '.join(diffs[:4])}. "
                             "Re-run it as it was, or start over without --resume")

    def get(self, name: str) -> dict | None:
        """The record of a finished table ``name`` (a file name in the stage directory), or None."""
        return self.records.get(name)

    def add(self, name: str, record: dict) -> None:
        """Record a finished table and rewrite the ledger atomically."""
        self.records[name] = record
        write_json_atomic(self.path, {"kind": "campaign-progress", "design": self.design, "records": self.records})

    def close(self) -> None:
        """The stage is complete (its manifest is written): drop the ledger."""
        if self.path.is_file():
            self.path.unlink()
