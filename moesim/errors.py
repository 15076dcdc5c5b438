"""User-facing error types. The CLI prints these as one line and exits non-zero, without a traceback."""
from __future__ import annotations


class MoesimError(Exception):
    """Base class for errors caused by user input (files, configs, options)."""


class ConfigError(MoesimError):
    """An invalid run configuration. ``field`` is the dotted config path at fault (may be empty)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"config field '{field}': {reason}" if field else f"config: {reason}")


class InputFileError(MoesimError):
    """A malformed input file (topology, calibration profile, measurements). Names the file and the problem."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
