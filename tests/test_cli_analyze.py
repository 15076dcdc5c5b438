"""`moesim analyze` through the real entry point, including bad input."""
import json
import subprocess

import pytest

from moesim.analytic import table3
from moesim.cli import main
from moesim.config import load_config

EXACT = ["analyze", "--model", "gpt3-xl", "--set", "moe.structure=dcca", "--set", "moe.top_k=8",
         "--set", "parallel.ep=32", "--set", "run.global_batch_tokens=524288", "--json"]


def test_exact_public_command(moesim_exe):
    out = subprocess.run([moesim_exe, *EXACT], capture_output=True, text=True, check=True, timeout=60)
    res = json.loads(out.stdout)
    cfg = load_config("gpt3-xl", ["moe.structure=dcca", "moe.top_k=8", "parallel.ep=32",
                                  "run.global_batch_tokens=524288"])
    paper = table3(cfg)
    for key in ("params", "flops_per_iteration", "a2a_bytes_per_iteration"):
        assert isinstance(res[key], (int, float))
        assert res[key] == pytest.approx(paper[key], rel=1e-12)
    # 8*b*s*l*h*k*(ep-1)/ep * r with b*s = 524288, l = 24, h = 2048, k = 8, ep = 32, r = 1/4
    assert res["a2a_bytes_per_iteration"] == 8 * 524288 * 24 * 2048 * 8 * 31 / 32 / 4


def test_table_compares_both_structures(capsys):
    assert main(["analyze", "--model", "gpt3-medium", "--set", "moe.top_k=8"]) == 0
    out = capsys.readouterr().out
    assert "CDAC" in out and "DCCA" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("All-to-All bytes per step"))
    assert line.split()[-1] == "0.2500"


def test_layers_convention_flag(capsys):
    assert main(["analyze", "--convention", "layers", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["convention"] == "layers" and "gate" in res["params_by_component"]


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "--set", "moe.top_k=100"], "moe.top_k"),
    (["analyze", "--set", "moe.experts=abc"], "moe.experts"),
    (["analyze", "--model", "no/such/file.yaml"], "does not exist"),
    (["analyze", "--model", "gpt9"], "unknown preset"),
    (["analyze", "--set", "parallel.ep=7"], "moe.experts"),
])
def test_bad_input_is_one_clear_line(moesim_exe, argv, needle):
    out = subprocess.run([moesim_exe, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert out.stdout == ""


def test_every_subcommand_has_help(moesim_exe):
    top = subprocess.run([moesim_exe, "--help"], capture_output=True, text=True, check=True)
    commands = [c for c in ("analyze", "topology", "collective", "simulate", "demo") if f"    {c}" in top.stdout]
    assert "analyze" in commands
    for c in commands:
        res = subprocess.run([moesim_exe, c, "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "usage: moesim" in res.stdout


def test_simulator_core_never_imports_torch():
    code = ("import sys, moesim, moesim.analytic, moesim.config, moesim.cli; "
            "from moesim.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([__import__("sys").executable, "-c", code], check=True, timeout=60)
