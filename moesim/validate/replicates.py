"""The replicate floor: how close to a campaign's measured speedups the other campaigns come.

Campaigns of one *machine class* (the same instruction set and number of cores) that measured the
same configuration (:func:`moesim.validate.core.workload_id`: testbed, rate and the whole config)
are replicates of one another: whatever they measure differently is the spread of the runs, the day
and the machine, not of any model. For each held-out pair of a campaign, the *replicate prediction*
is the geometric mean of the measured speedups of the same configuration in the other campaigns of
its class, and the *replicate error* is that prediction over the campaign's measured speedup, less 1
(as a model's signed speedup error, :mod:`moesim.validate.across`). Counted against the same target,
it says how many pairs a model could be expected to get if it predicted each configuration as well
as the other measurements of it do: a floor for the model's misses, from the data alone.

The replicate prediction uses no run of the campaign it judges, and no simulation. A pair whose
configuration no other campaign of the class measured gets no replicate prediction and is left out
of the counts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from moesim.errors import MoesimError


def machine_class(directory: str | os.PathLike) -> str | None:
    """The machine class of a campaign directory: its instruction set (the text before ':' of the
    peak-FLOP derivation that the campaign manifest's ``campaign.machine.peak_flops_from`` records,
    else its profile's ``calibration.per_core.peak_flops_from``) and its cores, e.g. ``"AVX-512, 2
    cores"``; None when neither records an instruction set."""
    from moesim.calibrate.profile_io import raw_profile
    from moesim.validate.core import load_manifest
    camp = load_manifest(Path(directory))
    machine = (camp.manifest.get("campaign") or {}).get("machine") or {}
    source, cores = machine.get("peak_flops_from"), machine.get("cores")
    if not source and camp.profile:
        cal = raw_profile(camp.profile)[1].get("calibration") or {}
        source = (cal.get("per_core") or {}).get("peak_flops_from")
        cores = cores or cal.get("cores")
    if not source or ":" not in str(source):
        return None
    isa = str(source).split(":", 1)[0].strip()
    return f"{isa}, {cores} cores" if cores else isa


def replicate_floor(campaigns: Sequence[tuple[str, str | None, dict]]) -> dict:
    """The replicate floor of campaigns given as (name, machine class, validation report); every
    report's pairs need ``workload`` and ``measured_speedup`` (:func:`moesim.validate.validate`). A
    pair is within when its absolute replicate error is at most its campaign's target, as for the
    model (the manifest's ``targets.speedup_error``, default 10 %).

    Returns ``campaigns`` (per campaign: its class, the campaigns it was compared with, held-out pairs
    with a replicate prediction, how many within the target, mean absolute and mean signed replicate
    error, the worst pair), ``pairs`` (every held-out pair with a replicate prediction: campaign,
    label, measured speedup, the peers' measured speedups, replicate prediction and signed error)
    and ``total`` over all campaigns (its means None when no pair has a replicate prediction)."""
    from moesim.validate.across import speedup_target
    measured: dict = {}   # (class, workload) -> {campaign: measured speedup}
    for name, cls, rep in campaigns:
        if cls is None:
            continue
        for p in rep.get("pairs") or []:
            if "workload" not in p:
                raise MoesimError(f"{name}: its report's pairs carry no 'workload' (a report of this moesim's "
                                  "validate is needed)")
            measured.setdefault((cls, p["workload"]), {})[name] = float(p["measured_speedup"])
    out_campaigns, out_pairs = [], []
    within_total = 0
    for name, cls, rep in campaigns:
        target = speedup_target(rep)
        signed, labels, peers_seen = [], [], set()
        for p in rep.get("pairs") or []:
            if p.get("role") != "heldout" or cls is None:
                continue
            others = {n: s for n, s in measured.get((cls, p["workload"]), {}).items() if n != name}
            if not others:
                continue
            peers_seen.update(others)
            pred = float(np.exp(np.mean(np.log(list(others.values())))))
            e = pred / float(p["measured_speedup"]) - 1.0
            signed.append(e)
            labels.append(p["label"])
            out_pairs.append({"campaign": name, "label": p["label"], "measured_speedup": float(p["measured_speedup"]),
                              "peers": others, "replicate_speedup": pred, "signed_error": e})
        a = np.abs(signed)
        worst = int(np.argmax(a)) if signed else None
        within = int((a <= target + 1e-12).sum())
        within_total += within
        out_campaigns.append({
            "name": name, "machine_class": cls, "peers": sorted(peers_seen), "target": target, "pairs": len(signed),
            "within_target": within,
            "mean_error": float(a.mean()) if signed else None,
            "mean_signed_error": float(np.mean(signed)) if signed else None,
            "worst": None if worst is None else {"label": labels[worst], "error": float(a[worst])},
        })
    every = np.array([p["signed_error"] for p in out_pairs])
    n = len(every)
    return {"campaigns": out_campaigns, "pairs": out_pairs,
            "total": {"pairs": n, "within_target": within_total,
                      "mean_error": float(np.abs(every).mean()) if n else None,
                      "mean_signed_error": float(every.mean()) if n else None,
                      "max_error": float(np.abs(every).max()) if n else None}}
