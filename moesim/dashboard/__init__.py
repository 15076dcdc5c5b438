"""The what-if dashboard: one self-contained interactive HTML file from a sweep's results table.

Figures: step-time breakdown (CDAC vs DCCA, stacked by phase), DCCA speedup vs NIC bandwidth,
communication volume per link class, inference latency and throughput, training cost per 1B tokens
vs network option, a Gantt timeline of one simulated step, per-link utilisation of that step, and
peak utilisation per link class over all scenarios. Controls (model, top-k, r, mode) filter every
figure in the page. The timeline and link views re-simulate a few representative scenarios from
the inputs recorded in the table (``detail`` of them; 0 skips).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import pandas as pd

from moesim.dashboard.data import Prepared, prepare
from moesim.dashboard.figures import Panel, all_panels
from moesim.dashboard.page import render_page
from moesim.io import write_text_atomic

DEFAULT_DETAIL = 3


def detail_results(p: Prepared, n: int = DEFAULT_DETAIL) -> tuple[list[dict], list[str]]:
    """Re-simulate up to ``n`` scenario labels (one per model/top-k/r/mode selection, CDAC and DCCA
    side by side) for the timeline and link views. Returns (details, notes about failures)."""
    from moesim.sweep.scenario import simulate_scenario
    from moesim.sweep.spec import Scenario
    ok, details, notes = p.ok, [], []
    if n <= 0 or not len(ok) or "resolved_json" not in ok:
        return details, notes
    seen_sel: set = set()
    complete = set(ok.groupby("label")["structure"].nunique().loc[lambda s: s >= 2].index)
    labels = list(dict.fromkeys(ok["label"]))
    mode_of = dict(zip(ok["label"], ok["mode"]))
    rank = {"train": 0, "prefill": 1, "decode": 2}
    # labels with both structures first, training before inference (what the page shows first); stable
    labels.sort(key=lambda lab: (lab not in complete, rank.get(mode_of.get(lab), 3)))
    for lab in labels:
        if len(details) >= n:
            break
        rows = ok[ok["label"] == lab]
        sel = rows["sel"].iloc[0]
        if sel in seen_sel:
            continue
        results = {}
        for s in ("cdac", "dcca", "dense"):
            r = rows[rows["structure"] == s]
            if not len(r):
                continue
            r = r.iloc[0]
            try:
                sc = Scenario(str(r["scenario_id"]), int(r.get("index", 0) or 0), json.loads(r["inputs_json"]),
                              json.loads(r["resolved_json"]))
                results[s] = simulate_scenario(sc)
            except Exception as exc:  # noqa: BLE001 - a detail view is optional
                notes.append(f"detail view of '{lab}' ({s}) could not be re-simulated: {exc}")
        if results:
            seen_sel.add(sel)
            details.append({"label": lab, "sel": sel, "results": results})
    return details, notes


def build_dashboard(results: Union[pd.DataFrame, str, os.PathLike], title: str | None = None,
                    detail: int = DEFAULT_DETAIL, source: str | None = None) -> str:
    """The dashboard HTML for a results table (DataFrame or a Parquet/CSV path)."""
    if not isinstance(results, pd.DataFrame):
        from moesim.sweep.store import read_table
        source = source or str(results)
        results = read_table(results)
    p = prepare(results)
    details, notes = detail_results(p, detail)
    panels: list[Panel] = all_panels(p, details)
    n_all = len(p.all_rows)
    n_ok = len(p.ok)
    errors = []
    if "status" in p.all_rows:
        bad = p.all_rows[p.all_rows["status"] != "ok"]
        for _, r in bad.iterrows():
            errors.append((f"{r.get('index', '')} {r.get('scenario_id', '')} {r.get('inputs_json', '')}", str(r.get("error"))))
    models = sorted(set(p.ok["model"].astype(str))) if n_ok else []
    sub = (f"{n_all} scenarios ({n_ok} ok, {n_all - n_ok} failed)" + (f" from {source}" if source else "")
           + (f"; models: {', '.join(models)}" if models else "")
           + (f"; varying: {', '.join(c[3:] for c in p.varying)}" if p.varying else ""))
    initial = {}
    if len(p.sel_values.get("mode", [])) > 1 and "train" in p.sel_values["mode"]:
        initial["mode"] = "train"  # steps of different modes differ by orders of magnitude: start with training
    notes = ["Pick model, top-k, r and mode to filter every figure (the inference and cost figures ignore the mode "
             "control); the timeline and link views show the first re-simulated scenario that matches."] + notes
    return render_page(title or "moesim what-if dashboard: CDAC vs DCCA", sub, panels, p.sel_values, errors, notes,
                       initial)


def write_dashboard(results, out: str | os.PathLike, title: str | None = None, detail: int = DEFAULT_DETAIL) -> Path:
    """Write the dashboard HTML atomically; returns its path."""
    text = build_dashboard(results, title=title, detail=detail)
    write_text_atomic(out, text)
    return Path(out)


__all__ = ["build_dashboard", "write_dashboard", "detail_results", "prepare"]
