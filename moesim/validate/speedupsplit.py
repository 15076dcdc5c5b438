"""Where a speedup error comes from: for every DCCA-over-CDAC pair of a validation report, the step
difference CDAC - DCCA (s per step), measured and predicted, split by phase group.

The groups are the All-to-Alls (``dispatch`` and ``combine``), the gradient all-reduce, other
communication (``tp_comm``) and the compute (every other phase). The residual ``outside`` is the
step less its phases: on the measured side the time a rank spends between timed phases, on the
predicted side the mean over ranks of the time a rank's stream ends before the step does (zero
where every rank ends with the step). The group differences and ``outside`` add up
to the step difference, so a group whose predicted difference is far from the measured one is
where the model's speedup goes wrong. The speedup itself is a ratio, so one difference can matter
more in a short step than in a long one: the error each group alone would cause is given as
``speedup_error_alone``. That is the signed error of the predicted speedup if only that group's
predicted times were off, every other group taken as measured. Both sides are means over the ranks;
like :mod:`moesim.validate.counterfactual`, this only indicates, since the model may book a wait in
another group than the runs do.
"""
from __future__ import annotations

from moesim.phases import COMM_PHASES
from moesim.validate.a2acost import A2A_PHASES

#: phase groups, in print order (compute: every phase in none of the others)
GROUPS = {"all_to_all": A2A_PHASES, "grad_allreduce": ("grad_allreduce",),
          "other_comm": tuple(p for p in COMM_PHASES if p not in A2A_PHASES and p != "grad_allreduce"),
          "compute": None}
#: how each part is named in printed tables (the groups, and the time outside every phase)
LABELS = {"all_to_all": "All-to-All", "grad_allreduce": "all-reduce", "other_comm": "other comm",
          "compute": "compute", "outside": "outside phases"}


def group_times(row: dict) -> dict:
    """{group: {"measured_s", "predicted_s"}} of one report row (s per step), and ``outside``: the
    step less the sum of its phases, on each side."""
    grouped = {p for names in GROUPS.values() if names for p in names}
    out = {}
    for group, names in GROUPS.items():
        phases = [v for ph, v in row["phases"].items() if (ph in names if names else ph not in grouped)]
        out[group] = {side: float(sum(v[side] for v in phases)) for side in ("measured_s", "predicted_s")}
    out["outside"] = {side: float(row[side] - sum(g[side] for g in out.values()))
                      for side in ("measured_s", "predicted_s")}
    return out


def speedup_split(rep: dict) -> list[dict]:
    """Every pair of ``rep`` (a :func:`moesim.validate.validate` report): ``label``, ``role``,
    ``measured_speedup``, ``predicted_speedup``, and ``step`` and each group (and ``outside``) as
    ``{"measured_s", "predicted_s", "speedup_error_alone"}``: the CDAC - DCCA difference (s per
    step) on each side, and, for the groups, the signed error (fraction) the pair's predicted speedup
    would have if that group alone were predicted as it is and the rest of both steps as measured (None
    where that leaves a step that is not positive)."""
    rows = {r["file"]: r for r in rep["rows"]}
    out = []
    for p in rep["pairs"]:
        c, x = rows[p["cdac_file"]], rows[p["dcca_file"]]
        gc, gx = group_times(c), group_times(x)
        measured = c["measured_s"] / x["measured_s"]
        item = {"label": p["label"], "role": p["role"], "measured_speedup": measured,
                "predicted_speedup": p["predicted_speedup"],
                "step": {"measured_s": c["measured_s"] - x["measured_s"],
                         "predicted_s": c["predicted_s"] - x["predicted_s"]}}
        for group in list(GROUPS) + ["outside"]:
            a, b = gc[group], gx[group]
            if not any((a["measured_s"], a["predicted_s"], b["measured_s"], b["predicted_s"])):
                continue
            num = c["measured_s"] + a["predicted_s"] - a["measured_s"]
            den = x["measured_s"] + b["predicted_s"] - b["measured_s"]
            item[group] = {"measured_s": a["measured_s"] - b["measured_s"],
                           "predicted_s": a["predicted_s"] - b["predicted_s"],
                           "speedup_error_alone": (num / den) / measured - 1.0 if num > 0 and den > 0 else None}
        out.append(item)
    return out
