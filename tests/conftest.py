import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def moesim_exe() -> str:
    """Path of the installed ``moesim`` console script (the real entry point)."""
    exe = BIN / "moesim"
    if not exe.exists():
        pytest.fail(f"moesim entry point not installed next to {sys.executable}; run `pip install -e .`")
    return str(exe)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
