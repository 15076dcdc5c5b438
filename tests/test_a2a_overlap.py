"""``moesim.validate.a2acost.overlap_fit`` on rows made from its own two forms (known answers)."""
import numpy as np
import pytest

from moesim.validate.a2acost import overlap_fit

TESTBEDS = {(2, 150e6): 8 / (0.6 * 150e6), (4, 150e6): 8 / (0.7 * 150e6), (4, 400e6): 8 / (0.75 * 400e6),
            (4, 0.0): 1 / 90e6}                                      # s per byte: 0.6, 0.7, 0.75 of the rate
BYTES = (0.5e6, 1.0e6, 2.0e6, 4.0e6, 9.0e6)


def rows(form, floor_s=0.08, predicted_scale=1.3):
    out = []
    for (hosts, rate), s in TESTBEDS.items():
        for x in BYTES:
            t = max(floor_s, s * x) if form == "overlapping" else floor_s + s * x
            out.append({"label": f"{hosts}x{4 // hosts} {rate / 1e6:g} {x:g}", "hosts": hosts,
                        "ranks_per_host": 4 // hosts, "rate_bits": rate, "a2a_remote_bytes": x,
                        "phases": {"dispatch": {"measured_s": 0.55 * t, "predicted_s": 0.55 * t * predicted_scale},
                                   "combine": {"measured_s": 0.45 * t, "predicted_s": 0.45 * t * predicted_scale}}})
    return out


@pytest.mark.parametrize("form", ["overlapping", "additive"])
def test_overlap_fit_recovers_the_form_it_was_made_from(form):
    """Phases made as max(W, s x) (or W + s x) with W = 80 ms: that form comes back with W, each
    testbed's byte time and its fraction of the rate to 1 %, and fits them (almost) exactly; the other
    form does not. The engine's errors are those of the predicted phases (here 30 % long)."""
    fit = overlap_fit(rows(form))
    other = "additive" if form == "overlapping" else "overlapping"
    assert fit["rows"] == len(TESTBEDS) * len(BYTES)
    assert fit[form]["floor_s"] == pytest.approx(0.08, rel=0.01)
    for tb in fit[form]["testbeds"]:
        assert tb["ranks_per_host"] == 4 // tb["hosts"]
        truth = TESTBEDS[(tb["hosts"], tb["rate_bits"])]
        assert tb["s_per_byte"] == pytest.approx(truth, rel=0.01)
        if tb["rate_bits"]:
            assert tb["rate_fraction"] == pytest.approx(8 / (tb["rate_bits"] * truth), rel=0.01)
        else:
            assert tb["rate_fraction"] is None
    assert fit[form]["mape"] < 0.005
    assert fit[other]["mape"] > 10 * fit[form]["mape"] and fit[other]["mape"] > 0.02
    worst = fit[other]["worst"]
    assert abs(worst["error"]) == pytest.approx(fit[other]["max_error"])
    assert worst["label"] in {r["label"] for r in rows(form)}
    assert fit["engine"]["mape"] == pytest.approx(0.3) and fit["engine"]["max_error"] == pytest.approx(0.3)
    # the engine's phases (here the measured ones x 1.3) fitted the same way: the same form, W and s x 1.3
    eng = fit["engine"][form]
    assert eng["floor_s"] == pytest.approx(1.3 * 0.08, rel=0.01) and eng["mape"] < 0.005
    for tb, mine in zip(eng["testbeds"], fit[form]["testbeds"]):
        assert tb["s_per_byte"] == pytest.approx(1.3 * mine["s_per_byte"], rel=0.01)


def test_overlap_fit_needs_rows_with_bytes():
    """Rows without remote bytes or measured phases do not count; fewer than four: no fit."""
    some = rows("overlapping")[:3] + [dict(rows("overlapping")[3], a2a_remote_bytes=None),
                                      dict(rows("overlapping")[4], phases={})]
    assert overlap_fit(some) is None
    assert np.isfinite(overlap_fit(rows("overlapping")[:4])["overlapping"]["floor_s"])
