"""What-if on a validation report: the DCCA-over-CDAC speedups the model would predict if some
phases were predicted exactly, i.e. with those phases' predicted times (s) replaced by their
measured ones in both structures' step times.

A diagnostic, not a model: it tells how much of a speedup error one phase could explain. Both
sides give a phase as the mean over the ranks, with the wait of those that reach a collective
early (``SimResult.mean_breakdown_s``); it is still only indicative, because the model may book a
wait in another phase than the runs do, so taking one phase as measured can count a wait that the
model already has elsewhere.
"""
from __future__ import annotations

from typing import Sequence

from moesim.calibrate.campaign import TARGETS
from moesim.errors import MoesimError
from moesim.workload.ops import PHASES

#: the per-pair speedup target where the report names none (fraction of the measured speedup)
DEFAULT_SPEEDUP_TARGET = TARGETS["speedup_error"]


def _step_with_measured(row: dict, phases: Sequence[str]) -> float:
    t = row["predicted_s"]
    for ph in phases:
        v = row["phases"].get(ph)
        if v is not None:
            t += v["measured_s"] - v["predicted_s"]
    return t


def check_phases(phases: Sequence[str]) -> list[str]:
    """``phases`` as a list, or a clear error naming the unknown ones and the known."""
    unknown = [ph for ph in phases if ph not in PHASES]
    if unknown or not phases:
        raise MoesimError(f"--measured-phases: unknown phase(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose among {', '.join(PHASES)}")
    return list(phases)


def with_measured_phases(rep: dict, phases: Sequence[str]) -> dict:
    """Every speedup pair of ``rep`` (a :func:`moesim.validate.validate` report) re-predicted with
    ``phases`` taken as measured. Returns ``{"phases", "pairs", "heldout"}``: each pair carries
    ``predicted_speedup`` and ``error`` as in the report, and ``error_before``; ``heldout`` counts the
    held-out pairs and those within the campaign's speedup target before and after, with the mean
    absolute and mean signed errors (fractions) after."""
    check_phases(phases)
    target = (rep.get("targets") or {}).get("speedup_error", DEFAULT_SPEEDUP_TARGET)
    rows = {r["file"]: r for r in rep["rows"]}
    pairs = []
    for p in rep["pairs"]:
        c, x = rows[p["cdac_file"]], rows[p["dcca_file"]]
        ps = _step_with_measured(c, phases) / _step_with_measured(x, phases)
        ms = p["measured_speedup"]
        pairs.append({"label": p["label"], "role": p["role"], "measured_speedup": ms, "predicted_speedup": ps,
                      "signed_error": (ps - ms) / ms, "error": abs(ps - ms) / ms, "error_before": p["error"]})
    held = [p for p in pairs if p["role"] == "heldout"] or pairs
    n = len(held)
    summary = {"pairs": n, "within_target_before": sum(p["error_before"] <= target for p in held),
               "within_target": sum(p["error"] <= target for p in held), "target": target,
               "mean_error": sum(p["error"] for p in held) / n if n else None,
               "mean_signed_error": sum(p["signed_error"] for p in held) / n if n else None}
    return {"phases": list(phases), "pairs": pairs, "heldout": summary}

