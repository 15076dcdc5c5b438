"""Several committed campaigns judged together (``moesim validate DIR DIR ...``): per campaign its
held-out step-time MAPE and speedup pairs, and per configuration the signed speedup error on every
campaign, which shows a bias of the model that no single campaign can (a pair over-predicted on
every campaign is a model error, not the spread of one campaign's runs).

Signed error of a pair: predicted speedup / measured speedup - 1 (positive: the model expects DCCA
to gain more than it did). Where the time goes is judged too: per group of phases (compute, the
All-to-Alls, the gradient all-reduce), the signed error of each held-out configuration's time in the
group (predicted / measured - 1, the group's phases summed per step), so a model whose step times
agree because it books compute slow and communication short shows it. A pair is within the target when its absolute error is at most the
campaign manifest's ``targets.speedup_error`` (default :data:`DEFAULT_SPEEDUP_TARGET`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.validate.speedupsplit import GROUPS

#: speedup-error target when a campaign's manifest names none (the issue's 10 %)
DEFAULT_SPEEDUP_TARGET = 0.10
#: phase groups judged across campaigns: the speedup split's communication groups
#: (:data:`moesim.validate.speedupsplit.GROUPS`; compute: every other phase)
PHASE_GROUPS = {group: names for group, names in GROUPS.items() if names}


def campaign_dirs(paths: Sequence[str | os.PathLike]) -> list[Path] | None:
    """The paths as campaign directories when there are two or more and every one holds a
    manifest.json; else None (one campaign, or run tables)."""
    from moesim.validate.core import MANIFEST
    ps = [Path(p) for p in paths]
    if len(ps) < 2 or not all(p.is_dir() and (p / MANIFEST).is_file() for p in ps):
        return None
    if len({p.resolve() for p in ps}) != len(ps):
        raise MoesimError("a campaign directory is given twice")
    return ps


def speedup_target(report: dict) -> float:
    """The speedup-error target of a campaign's report: its manifest's ``targets.speedup_error``, else
    :data:`DEFAULT_SPEEDUP_TARGET`."""
    return float((report.get("targets") or {}).get("speedup_error", DEFAULT_SPEEDUP_TARGET))


def summarise_across(reports: Sequence[tuple[str, dict]]) -> dict:
    """Aggregate :func:`moesim.validate.validate` reports, one per campaign (name, report), over
    their held-out speedup pairs. Returns ``campaigns`` (per campaign: held-out MAPE and max error,
    pairs, within target, mean and mean signed error, worst pair), ``configurations`` (per pair label,
    in first-seen order: signed error per campaign, how many over- and under-predicted, mean signed
    error) and ``total`` (pairs, within target, mean error, mean signed error) over all campaigns."""
    if not reports:
        raise MoesimError("no campaign reports to summarise")
    campaigns, configs, all_signed = [], {}, []
    within_total = 0
    for name, rep in reports:
        target = speedup_target(rep)
        held = [p for p in rep["pairs"] if p["role"] == "heldout"]
        signed = [p["predicted_speedup"] / p["measured_speedup"] - 1.0 for p in held]
        errs = [p["error"] for p in held]
        within = sum(e <= target + 1e-12 for e in errs)
        within_total += within
        all_signed.extend(signed)
        worst = max(held, key=lambda p: p["error"]) if held else None
        campaigns.append({
            "name": name, "profile": rep["profile"]["name"], "target": target,
            "heldout_mape": rep["heldout"]["mape"], "heldout_max_error": rep["heldout"]["max_error"],
            "pairs": len(held), "within_target": int(within),
            "mean_error": float(np.mean(errs)) if errs else None,
            "mean_signed_error": float(np.mean(signed)) if signed else None,
            "worst": None if worst is None else {"label": worst["label"], "error": worst["error"]},
        })
        for p, s in zip(held, signed):
            c = configs.setdefault(p["label"], {"label": p["label"], "signed_errors": {}})
            c["signed_errors"][name] = s
    for c in configs.values():
        v = np.array(list(c["signed_errors"].values()))
        c["over"] = int((v > 0).sum())
        c["under"] = int((v < 0).sum())
        c["mean_signed_error"] = float(v.mean())
        c["max_abs_error"] = float(np.abs(v).max())
    n = len(all_signed)
    a = np.abs(np.array(all_signed)) if n else np.array([])
    return {
        "campaigns": campaigns,
        "configurations": list(configs.values()),
        "phase_groups": phase_groups(rep for _, rep in reports),
        "total": {"campaigns": len(campaigns), "pairs": n, "within_target": int(within_total),
                  "mean_error": float(a.mean()) if n else None,   # |signed| is each pair's error
                  "mean_signed_error": float(np.mean(all_signed)) if n else None,
                  "max_error": float(a.max()) if n else None},
    }


def phase_groups(reports) -> list[dict]:
    """Per phase group (``compute``, then :data:`PHASE_GROUPS`), over the held-out rows of every
    report whose phases were measured in that group: rows, mean absolute and mean signed error of
    the group's time per step (predicted / measured - 1). Groups no row measured are left out."""
    from moesim.phases import PHASES
    comm = {p for names in PHASE_GROUPS.values() for p in names}
    groups = {"compute": tuple(p for p in PHASES if p not in comm), **PHASE_GROUPS}
    signed: dict = {g: [] for g in groups}
    for rep in reports:
        for row in rep.get("rows") or []:
            if row.get("role") != "heldout" or not row.get("phases"):
                continue
            for g, names in groups.items():
                got = [row["phases"][n] for n in names if n in row["phases"]]
                measured = sum(float(x.get("measured_s") or 0.0) for x in got)
                if measured > 0:
                    signed[g].append(sum(float(x.get("predicted_s") or 0.0) for x in got) / measured - 1.0)
    return [{"group": g, "phases": list(groups[g]), "rows": len(v), "mean_error": float(np.mean(np.abs(v))),
             "mean_signed_error": float(np.mean(v))} for g, v in signed.items() if v]


def validate_across(dirs: Sequence[str | os.PathLike], **kwargs) -> dict:
    """Validate every campaign directory (``kwargs`` as :func:`moesim.validate.validate`; no
    ``profile`` or ``topology`` override: each campaign brings its own) and summarise them
    (:func:`summarise_across`), with the campaigns' replicate floor under ``replicate_floor``
    (:mod:`moesim.validate.replicates`); the per-campaign reports are under ``reports`` by name (the
    directory's path as given)."""
    from moesim.validate.core import validate
    from moesim.validate.replicates import machine_class, replicate_floor
    for k in ("profile", "topology"):
        if kwargs.get(k):
            raise MoesimError(f"several campaigns are judged with their own profiles and topologies; "
                              f"{k} cannot be overridden for all of them")
        kwargs.pop(k, None)
    reports = [(str(d), validate([d], **kwargs)) for d in dirs]
    out = summarise_across(reports)
    out["replicate_floor"] = replicate_floor([(name, machine_class(d), rep) for d, (name, rep) in zip(dirs, reports)])
    out["reports"] = dict(reports)
    return out
