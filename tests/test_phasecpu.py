"""moesim.calibrate.phasecpu: the main thread's CPU per phase from a --timeline table (closed forms,
the model's side against the campaign's simulated step, bad input; real timelines with cpu_s are
checked in tests/test_real_backend.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.calibrate.phasecpu import BETWEEN, load_cpu_timeline, main, model_alone_work, phase_cpu, report
from moesim.errors import InputFileError, MoesimError

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "calibration" / "avx512" / "validation"
META = {"kind": "timeline", "testbed": {"hosts": 4, "ranks_per_host": 1, "rate_bits": 0},
        "config": {"moe": {"top_k": 2}}}
COLS = "structure,step,rank,seq,phase,direction,start_s,end_s,cpu_s\n"


def _write(path, rows, cols=COLS, meta=META):
    head = "# moesim-real-backend v1 timeline\n# meta " + json.dumps(meta) + "\n"
    path.write_text(head + cols + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def _rows():
    """Two ranks, two steps of CDAC. Per rank-step: attention 0.2 s wall / 0.15 CPU, dispatch 0.3 / 0.02
    (step 0 only on rank 1: rank 1 has no dispatch in step 1), the step 1.0 / 0.25."""
    rows = []
    for step in (0, 1):
        for rank in (0, 1):
            t = 10.0 * step
            rows.append(("cdac", step, rank, 0, "step", "none", t, t + 1.0, 0.25))
            rows.append(("cdac", step, rank, 1, "attention", "fwd", t + 0.1, t + 0.2, 0.07))
            rows.append(("cdac", step, rank, 2, "attention", "bwd", t + 0.5, t + 0.6, 0.08))
            if not (rank == 1 and step == 1):
                rows.append(("cdac", step, rank, 3, "dispatch", "fwd", t + 0.2, t + 0.5, 0.02))
    return rows


def test_phase_cpu_closed_form(tmp_path):
    t = phase_cpu(load_cpu_timeline(_write(tmp_path / "t.csv", _rows()))).set_index("phase")
    assert t.loc["attention", "wall_s"] == pytest.approx(0.2) and t.loc["attention", "cpu_s"] == pytest.approx(0.15)
    # three of the four rank-steps have a dispatch: the mean counts the fourth as 0
    assert t.loc["dispatch", "wall_s"] == pytest.approx(0.75 * 0.3) and t.loc["dispatch", "cpu_s"] == pytest.approx(0.015)
    assert t.loc["step", "wall_s"] == pytest.approx(1.0) and t.loc["step", "cpu_s"] == pytest.approx(0.25)
    # what no phase holds: the step minus its phases, so the rows add up to the step
    assert t.loc[BETWEEN, "cpu_s"] == pytest.approx(0.25 - 0.15 - 0.015)
    parts = t.drop(index="step")
    assert parts.wall_s.sum() == pytest.approx(1.0) and parts.cpu_s.sum() == pytest.approx(0.25)
    assert list(t.index) == ["attention", "dispatch", BETWEEN, "step"]          # the phase vocabulary's order


def test_model_alone_work_adds_up_to_the_steps_priced_work():
    """The model's side, phase by phase, sums to what moesim.calibrate.cpuwork books for the step."""
    from moesim.calibrate.configsim import CampaignSimulator
    res = CampaignSimulator(CAMPAIGN).simulate("4x1-none-cdac-k2")
    work = model_alone_work(res)
    factor = res.cpu_pool[1] if res.cpu_pool else 1.0
    total = float(np.mean([np.sum(d) for d in res.classes.durations])) * factor
    assert sum(work.values()) == pytest.approx(total, rel=1e-9)
    assert work["attention"] > 0 and work.get("grad_allreduce", 0.0) == 0.0       # a collective books no work
    assert set(work) <= {"embedding", "attention", "gate", "descend", "dispatch", "experts", "shared_experts",
                         "combine", "ascend", "lm_head", "optimizer"}


def test_report_and_cli(tmp_path, capsys):
    path = _write(tmp_path / "4x1-none-k2.timeline.csv", _rows())
    table = report([path], CAMPAIGN)
    assert set(table.config) == {"4x1-none-cdac-k2"}
    step = table.set_index("phase").loc["step"]
    assert step.model_s > 0 and table.set_index("phase").loc[BETWEEN, "model_s"] == 0.0
    assert main([str(path), "--campaign", str(CAMPAIGN)]) == 0
    out = capsys.readouterr().out
    assert "4x1-none-cdac-k2" in out and BETWEEN in out and "dispatch (comm)" in out and "CPU-model" in out
    assert main([str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["phase"] for r in rows} == {"attention", "dispatch", BETWEEN, "step"}


@pytest.mark.parametrize("edit, msg", [
    (lambda rows, cols: (rows, cols.replace(",cpu_s", "")), "no 'cpu_s' column"),
    (lambda rows, cols: ([r[:-1] + ("",) for r in rows], cols), "column 'cpu_s' must be numeric"),
    (lambda rows, cols: ([r[:-1] + (-0.1,) for r in rows], cols), "negative cpu_s"),
])
def test_bad_timelines_are_refused(tmp_path, edit, msg):
    rows, cols = edit(_rows(), COLS)
    if "cpu_s" not in cols:
        rows = [r[:-1] for r in rows]
    path = _write(tmp_path / "t.csv", rows, cols)
    with pytest.raises(InputFileError, match=msg):
        load_cpu_timeline(path)
    assert main([str(path)]) == 2


def test_timeline_without_steps_or_testbed_is_refused(tmp_path):
    no_step = _write(tmp_path / "a.csv", [r for r in _rows() if r[4] != "step"])
    with pytest.raises(MoesimError, match="no 'step' intervals"):
        phase_cpu(load_cpu_timeline(no_step))
    no_testbed = _write(tmp_path / "b.csv", _rows(), meta={"kind": "timeline"})
    with pytest.raises(InputFileError, match="names no testbed"):
        report([no_testbed], CAMPAIGN)
    # a run of another model than the campaign's: its work would not be this timeline's
    other = dict(META, config={"moe": {"top_k": 2, "experts": 8}, "model": {"vocab": 2048}})
    with pytest.raises(InputFileError, match=r"not the campaign's model .*moe.experts = 8 \(the campaign's: 16\)"):
        report([_write(tmp_path / "c.csv", _rows(), meta=other)], CAMPAIGN)
    assert main([str(tmp_path / "c.csv")]) == 0            # without a campaign there is nothing to compare
