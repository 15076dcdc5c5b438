"""moesim.calibrate.cpuwork: a rank's CPU per step (scheduler probe) against the model's alone
compute work, on the committed probe and campaign; bad probe files fail naming the file."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from moesim.calibrate import cpuwork
from moesim.errors import InputFileError
from test_validation import ROOT

AVX2 = ROOT / "calibration" / "avx2"


def test_committed_probe_against_its_campaign():
    probe = json.loads((AVX2 / "schedprobe.json").read_text())["runs"]
    rows = cpuwork.compare(AVX2 / "schedprobe.json", AVX2 / "validation")
    # every probed configuration (top-8 on five testbeds, and 4x1 150 Mbit/s top-2) is in the campaign
    assert len(rows) == len(probe) == 12
    for row, run in zip(rows, probe):
        assert (row["testbed"], row["rate"], row["structure"], row["top_k"]) == (
            run["testbed"], run["rate"], run["structure"], run["top_k"])
        assert row["cpu_per_rank_step_s"] == pytest.approx(np.mean(run["schedstat"]["cpu_s_per_step"]))
        assert row["outside_model_s"] == pytest.approx(row["cpu_per_rank_step_s"] - row["model_alone_work_s"])
        # the model's compute is a real share of a step's CPU, not all of it (calibration/README.md,
        # "What remains": 38-60 ms per rank-step outside the modelled ops on that machine)
        assert 0.5 < row["model_alone_work_s"] / row["cpu_per_rank_step_s"] < 0.8
    # more top-k, more expert work: the model's alone work grows with top-k (4x1 150 Mbit/s CDAC)
    k = {r["top_k"]: r["model_alone_work_s"] for r in rows if (r["testbed"], r["rate"], r["structure"]) ==
         ("4x1", "150mbit", "cdac")}
    assert k[8] > k[2]


def test_cli_prints_rows(capsys):
    assert cpuwork.main([str(AVX2 / "schedprobe.json"), str(AVX2 / "validation")]) == 0
    out = capsys.readouterr().out
    assert "4x1 150mbit cdac k8" in out and "outside" in out


@pytest.mark.parametrize("text,why", [("{", "malformed JSON"), ('{"runs": []}', "non-empty 'runs'"),
                                      ('{"runs": [{"testbed": "4x1"}]}', "runs[0] has no 'rate'"),
                                      ('{"runs": [{"testbed": "4x1", "rate": "none", "structure": "cdac", "top_k": 8, '
                                       '"step_s": 0.3, "compute_phases_s": 0.1, "schedstat": {"cpu_s_per_step": [-1]}}]}',
                                       "cpu_s_per_step")])
def test_bad_probe_files_name_the_file(tmp_path, capsys, text, why):
    bad = tmp_path / "probe.json"
    bad.write_text(text)
    with pytest.raises(InputFileError, match=re.escape(why)) as exc:
        cpuwork.load_probe(bad)
    assert "probe.json" in str(exc.value)
    assert cpuwork.main([str(bad), str(AVX2 / "validation")]) == 2
    assert "probe.json" in capsys.readouterr().err
