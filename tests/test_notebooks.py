"""The notebooks (jupytext percent-format .py files) execute top to bottom without errors."""
import os
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext", reason="notebook tools are part of the test extra")
nbclient = pytest.importorskip("nbclient", reason="notebook tools are part of the test extra")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def execute(path: Path, cwd: Path, timeout: int = 240):
    nb = jupytext.read(path)
    env_before = os.environ.get("MOESIM_NOTEBOOK_OUT")
    os.environ["MOESIM_NOTEBOOK_OUT"] = str(cwd / "out")
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("MOESIM_NOTEBOOK_OUT", None)
        else:
            os.environ["MOESIM_NOTEBOOK_OUT"] = env_before
    return nb


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"network_upgrade_whatif", "calibrate_your_cluster", "bigmac_paper_reproduction"} <= names
    for p in NOTEBOOKS:
        head = p.read_text().splitlines()[:12]
        assert any("format_name: percent" in line for line in head), f"{p.name} is not jupytext percent format"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    t0 = time.monotonic()
    nb = execute(path, tmp_path)
    took = time.monotonic() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells)
    out = tmp_path / "out"
    assert out.is_dir() and any(out.iterdir()), "notebooks write their files under $MOESIM_NOTEBOOK_OUT"
    print(f"{path.name}: {took:.1f} s", file=sys.stderr)
