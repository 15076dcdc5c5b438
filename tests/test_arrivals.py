"""moesim.calibrate.arrivals: when the ranks enter and leave each All-to-All call, from a
real_backend.run --timeline table (closed forms and bad input; the real timeline is checked in
tests/test_real_backend.py)."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from moesim.calibrate.arrivals import call_spreads, load_timeline, main, summary
from moesim.errors import InputFileError

HEADER = "# moesim-real-backend v1 timeline\n# meta {\"kind\": \"timeline\"}\n"


def _write(path, rows, header=HEADER):
    cols = "structure,step,rank,seq,phase,direction,start_s,end_s\n"
    path.write_text(header + cols + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def _two_ranks():
    """Two ranks, one step: dispatch fwd, combine fwd, the all-reduce, then a backward dispatch.
    Rank 0 enters the dispatch at 1.0, rank 1 at 1.3; both leave it at 1.5 and 1.6, and so on."""
    calls = {  # (phase, direction): ((start r0, end r0), (start r1, end r1))
        ("dispatch", "fwd"): ((1.0, 1.5), (1.3, 1.6)),
        ("combine", "fwd"): ((2.0, 2.4), (2.5, 2.6)),
        ("grad_allreduce", "bwd"): ((3.0, 3.2), (3.1, 3.5)),
        ("dispatch", "bwd"): ((3.6, 3.9), (3.5, 3.8)),
    }
    rows = []
    for rank in (0, 1):
        rows.append(("cdac", 0, rank, 0, "step", "none", 0.5, 4.0))
        rows.append(("cdac", 0, rank, 1, "attention", "fwd", 0.6, 0.9))
        for seq, ((phase, direction), spans) in enumerate(calls.items(), start=2):
            rows.append(("cdac", 0, rank, seq, phase, direction, *spans[rank]))
    return rows


def test_call_spreads_closed_form(tmp_path):
    df = load_timeline(_write(tmp_path / "t.csv", _two_ranks()))
    s = call_spreads(df).set_index(["phase", "direction"])
    d = s.loc[("dispatch", "fwd")]
    assert d.entry_spread == pytest.approx(0.3) and d.exit_spread == pytest.approx(0.1)
    assert math.isnan(d.inherited) and math.isnan(d.gap_spread)          # the step's first collective
    assert d.mean_wait == pytest.approx(0.15)                            # rank 0 waits 0.3, rank 1 none
    c = s.loc[("combine", "fwd")]
    assert c.entry_spread == pytest.approx(0.5) and c.exit_spread == pytest.approx(0.2)
    assert c.inherited == pytest.approx(0.1)                             # the dispatch released them 0.1 apart
    assert c.gap_spread == pytest.approx(abs((2.0 - 1.5) - (2.5 - 1.6)))  # 0.5 against 0.9
    b = s.loc[("dispatch", "bwd")]                                       # after the all-reduce
    assert b.inherited == pytest.approx(0.3) and b.gap_spread == pytest.approx(abs(0.4 - 0.0))
    assert b.k == 0 and len(s) == 3                                      # the all-reduce is not an All-to-All
    med = summary(call_spreads(df))
    assert med.loc[("cdac", "combine", "fwd"), "entry_spread"] == pytest.approx(0.5)


def test_calls_are_matched_by_order_within_a_phase(tmp_path):
    rows = _two_ranks()
    # a second forward dispatch per rank (the next layer): k = 1, matched to the other rank's second one
    for rank, (a, b) in ((0, (2.45, 2.48)), (1, (2.62, 2.70))):
        rows.append(("cdac", 0, rank, 9, "dispatch", "fwd", a, b))
    s = call_spreads(load_timeline(_write(tmp_path / "t.csv", rows)))
    second = s[(s.phase == "dispatch") & (s.direction == "fwd") & (s.k == 1)].iloc[0]
    assert second.entry_spread == pytest.approx(0.17) and second.exit_spread == pytest.approx(0.22)


def test_bad_timelines_name_the_file_and_the_problem(tmp_path):
    good = _two_ranks()
    cases = {
        "nofile.csv": (None, "no such file"),
        "run.csv": (lambda p: _write(p, good, "# moesim-real-backend v1 run\n# meta {}\n"), "not a real_backend.run --timeline"),
        "cols.csv": (lambda p: p.write_text(HEADER + "structure,step,rank\ncdac,0,0\n"), "missing column(s) seq"),
        "empty.csv": (lambda p: _write(p, []), "no intervals"),
        "text.csv": (lambda p: _write(p, [r if i != 3 else r[:6] + ("soon", r[7]) for i, r in enumerate(good)]),
                     "column 'start_s' must be numeric"),
        "back.csv": (lambda p: _write(p, [r if i != 3 else r[:6] + (9.0, 1.0) for i, r in enumerate(good)]),
                     "end_s before start_s"),
    }
    for name, (make, why) in cases.items():
        path = tmp_path / name
        if make:
            make(path)
        with pytest.raises(InputFileError, match=re.escape(why)) as err:
            load_timeline(path)
        assert name in str(err.value)
    short = [r for r in good if not (r[2] == 1 and r[4] == "combine")]      # rank 1 lost a call
    with pytest.raises(InputFileError, match="different numbers of collective calls"):
        call_spreads(load_timeline(_write(tmp_path / "short.csv", short)), "short.csv")
    swapped = [r if r[2] == 0 else (r[:4] + ({"combine": "dispatch", "dispatch": "combine"}.get(r[4], r[4]),) + r[5:])
               for r in good]
    with pytest.raises(InputFileError, match="rank 1 made its collective calls in another order"):
        call_spreads(load_timeline(_write(tmp_path / "order.csv", swapped)), "order.csv")
    only = [r for r in good if r[4] not in ("dispatch", "combine")]
    with pytest.raises(InputFileError, match="no All-to-All calls"):
        call_spreads(load_timeline(_write(tmp_path / "none.csv", only)), "none.csv")


def test_cli_prints_medians_and_refuses_bad_files(tmp_path, capsys):
    assert main([str(_write(tmp_path / "t.csv", _two_ranks()))]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("cdac") and "combine" in x)
    assert line.split()[3:7] == ["measured", "500.00", "200.00", "100.00"]
    assert main([str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err


def test_committed_timeline_and_the_model_of_it():
    """The committed timeline (calibration/avx512/timeline) and the same configuration simulated with
    the campaign's profile: in both, no rank leaves an All-to-All before every rank has entered it.
    What the record reads from them: in the runs the call itself releases the ranks apart and the
    next call inherits that spread; the committed model releases them together on unshaped links."""
    from pathlib import Path
    from moesim.calibrate.arrivals import model_timeline
    root = Path(__file__).resolve().parents[1] / "calibration/avx512"
    path = root / "timeline/4x1-none-k2.timeline.csv"
    measured = load_timeline(path)
    model = model_timeline(path, root / "validation")
    assert set(model.structure) == set(measured.structure) == {"cdac", "dcca"}
    for tl in (measured, model):
        a2a = tl[tl.phase.isin(["dispatch", "combine"])].sort_values("seq").copy()
        a2a["k"] = a2a.groupby(["structure", "step", "rank", "phase", "direction"]).cumcount()
        for _, call in a2a.groupby(["structure", "step", "phase", "direction", "k"]):
            assert call["rank"].nunique() == 4 and call.start_s.max() <= call.end_s.min() + 1e-12
    m, s = summary(call_spreads(measured, str(path))), summary(call_spreads(model, "model"))
    assert len(m) == len(s) == 8
    # runs: every call releases the ranks milliseconds apart, and the next call starts from that spread
    assert (m.exit_spread > 2e-3).all() and (m.inherited.dropna() > 2e-3).all()
    # model (unshaped, pairwise start): releases them within 0.1 ms; its spread comes from the work between
    assert (s.exit_spread < 1e-4).all() and (s.gap_spread > 5e-4).all()


def test_bad_metadata_line_is_named(tmp_path):
    bad = _write(tmp_path / "meta.csv", _two_ranks(), "# moesim-real-backend v1 timeline\n# meta {oops\n")
    with pytest.raises(InputFileError, match=r"meta\.csv: bad metadata line"):
        load_timeline(bad)


def test_step_release_spread_closed_form_and_committed_value(tmp_path, capsys):
    from pathlib import Path

    from moesim.calibrate.arrivals import step_release_spread
    from moesim.errors import MoesimError
    s = call_spreads(load_timeline(_write(tmp_path / "t.csv", _two_ranks())))
    d = s.set_index(["phase", "direction"])
    # dispatch fwd: released 0.1 apart over the 0.3 s after the last entry; combine fwd 0.2 over 0.1
    # (more than the whole: counted as 1); backward dispatch 0.1 over 0.3
    assert d.loc[("dispatch", "fwd"), "last_in_call"] == pytest.approx(0.3)
    assert d.loc[("combine", "fwd"), "last_in_call"] == pytest.approx(0.1)
    value, n = step_release_spread(s)
    assert n == 3 and value == pytest.approx(1 / 3)
    with pytest.raises(MoesimError, match="positive time"):
        step_release_spread(s.assign(last_in_call=0.0))
    assert main([str(tmp_path / "t.csv")]) == 0
    assert "step release spread: 0.333 (median over 3 calls" in capsys.readouterr().out
    # the value the pre-registered model N holds (calibration/README.md), from the committed timelines
    files = sorted((Path(__file__).resolve().parents[1] / "calibration/avx512/timeline").glob("*.timeline.csv"))
    assert len(files) == 6
    value, n = step_release_spread(pd.concat([call_spreads(load_timeline(f), str(f)) for f in files]))
    assert n == 1920 and round(value, 3) == 0.772
