"""Self-contained HTML plot of a validation report (plotly; works offline)."""
from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from moesim.io import write_text_atomic


def figures(rep: dict) -> list:
    rows = rep["rows"]
    figs = []
    f = go.Figure()
    for role, sym in (("fit", "circle-open"), ("heldout", "circle")):
        rs = [r for r in rows if r["role"] == role]
        if rs:
            runs = [r.get("measured_runs_s") or [r["measured_s"]] for r in rs]
            f.add_trace(go.Scatter(x=[r["measured_s"] for r in rs], y=[r["predicted_s"] for r in rs], mode="markers",
                                   marker={"symbol": sym, "size": 9}, name=role, text=[r["label"] for r in rs],
                                   error_x={"type": "data", "symmetric": False,   # the range over repeated runs
                                            "array": [max(x) - r["measured_s"] for x, r in zip(runs, rs)],
                                            "arrayminus": [r["measured_s"] - min(x) for x, r in zip(runs, rs)]},
                                   hovertemplate="%{text}<br>measured %{x:.4f} s<br>predicted %{y:.4f} s"))
    hi = max([r["measured_s"] for r in rows] + [r["predicted_s"] for r in rows] + [1e-3])
    lo = min([r["measured_s"] for r in rows] + [r["predicted_s"] for r in rows] + [hi])
    f.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "gray"}, name="exact"))
    mape = rep.get("mape")
    f.update_layout(title=f"Step time, predicted vs measured (MAPE {100 * mape:.1f}% on {rep['judged_on']})" if mape is not None
                    else "Step time", xaxis_title="measured (s)", yaxis_title="predicted (s)", xaxis_type="log",
                    yaxis_type="log", template="plotly_white")
    figs.append(f)
    if rep["pairs"]:
        g = go.Figure()
        labels = [p["label"] for p in rep["pairs"]]
        g.add_bar(x=labels, y=[p["measured_speedup"] for p in rep["pairs"]], name="measured")
        g.add_bar(x=labels, y=[p["predicted_speedup"] for p in rep["pairs"]], name="predicted")
        rounds = [(p["label"], x) for p in rep["pairs"] for x in (p.get("measured_speedup_runs") or [])]
        if any(len(p.get("measured_speedup_runs") or []) > 1 for p in rep["pairs"]):
            g.add_trace(go.Scatter(x=[lab for lab, _ in rounds], y=[x for _, x in rounds], mode="markers",
                                   marker={"color": "black", "size": 6, "symbol": "line-ew-open"},
                                   name="measured, per round"))
        g.update_layout(title="DCCA over CDAC speedup", barmode="group", yaxis_title="speedup (x)", template="plotly_white")
        figs.append(g)
    h = go.Figure()
    phases = sorted({ph for r in rows for ph in r["phases"]})
    labels = [r["label"] for r in rows]
    for ph in phases:
        h.add_bar(x=labels, y=[r["phases"].get(ph, {}).get("measured_s", 0.0) for r in rows], name=f"{ph} measured",
                  offsetgroup="m", legendgroup=ph)
        h.add_bar(x=labels, y=[r["phases"].get(ph, {}).get("predicted_s", 0.0) for r in rows], name=f"{ph} predicted",
                  offsetgroup="p", legendgroup=ph, opacity=0.6)
    h.update_layout(title="Per-phase seconds (left measured, right predicted)", barmode="stack", template="plotly_white",
                    yaxis_title="seconds", height=520)
    figs.append(h)
    return figs


def write_plot(path, rep: dict) -> None:
    figs = figures(rep)
    parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}") for i, f in enumerate(figs)]
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>moesim validation</title></head><body>"
            "<h1>moesim validation</h1>" + "".join(parts) + "</body></html>")
    write_text_atomic(path, html)
