"""The demo's CDAC-vs-DCCA scenarios and their self-contained HTML report (plotly, works offline)."""
from __future__ import annotations

import html

import plotly.graph_objects as go
import plotly.io as pio

from moesim.config import load_config
from moesim.io import write_text_atomic
from moesim.workload.ops import PHASES

A2A = ("dispatch", "combine")


def demo_rows(models, top_ks, modes, topology, profile=None, algorithm="direct"):
    """Simulate every (model, mode, top-k) for CDAC and DCCA on ``topology`` with pure expert
    parallelism over all its GPUs. Returns (rows, {(model, mode, k, structure): SimResult})."""
    from moesim.engine import SimOptions, simulate
    rows, results = [], {}
    n = topology.num_gpus
    for model in models:
        for mode in modes:
            for k in top_ks:
                pair = {}
                for s in ("cdac", "dcca"):
                    cfg = load_config(model, [f"moe.structure={s}", f"moe.top_k={k}", f"parallel.ep={n}",
                                              f"run.mode={mode}"])
                    pair[s] = simulate(cfg, topology, profile, SimOptions(a2a_algorithm=algorithm))
                    results[(model, mode, k, s)] = pair[s]
                c, d = pair["cdac"], pair["dcca"]
                share = lambda r: sum(r.breakdown_s[p] for p in A2A) / r.step_time_s  # noqa: E731
                rows.append({"model": model, "mode": mode, "top_k": k, "gpus": n,
                             "cdac_step_s": c.step_time_s, "dcca_step_s": d.step_time_s,
                             "speedup": c.step_time_s / d.step_time_s,
                             "cdac_tokens_per_s": c.tokens_per_s, "dcca_tokens_per_s": d.tokens_per_s,
                             "cdac_a2a_share": share(c), "dcca_a2a_share": share(d),
                             "cdac_breakdown_s": c.breakdown_s, "dcca_breakdown_s": d.breakdown_s})
    return rows, results


def _label(r) -> str:
    return f"{r['model']} {r['mode']} k={r['top_k']}"


def step_time_figure(rows) -> go.Figure:
    labels = [_label(r) for r in rows]
    fig = go.Figure([go.Bar(name="CDAC", x=labels, y=[r["cdac_step_s"] for r in rows]),
                     go.Bar(name="DCCA (BigMac)", x=labels, y=[r["dcca_step_s"] for r in rows],
                            text=[f"{r['speedup']:.2f}x" for r in rows], textposition="outside")])
    fig.update_layout(barmode="group", title="Step time (s): CDAC vs DCCA, speedup on top",
                      yaxis_title="seconds", template="plotly_white")
    return fig


def breakdown_figure(rows) -> go.Figure:
    x = [[_label(r) for r in rows for _ in (0, 1)], [s for _ in rows for s in ("CDAC", "DCCA")]]
    fig = go.Figure()
    for ph in PHASES:
        ys = [r[f"{s}_breakdown_s"].get(ph, 0.0) for r in rows for s in ("cdac", "dcca")]
        if any(ys):
            fig.add_bar(name=ph, x=x, y=ys)
    fig.update_layout(barmode="stack", title="Where the step time goes (critical rank, overlap not double counted)",
                      yaxis_title="seconds", template="plotly_white")
    return fig


def timeline_figure(result, title: str) -> go.Figure:
    df = result.timeline()
    crit = df[(df["rank_class"] == result.critical_class) & (df["duration_s"] > 0)]
    coll = df[df["rank_class"] == -1]
    fig = go.Figure()
    for ph in PHASES:
        for lane, part in (("compute", crit), ("network", coll)):
            sub = part[part["phase"] == ph]
            if len(sub):
                fig.add_bar(name=ph, legendgroup=ph, showlegend=lane == "compute" or not len(crit[crit["phase"] == ph]),
                            y=[f"rank {result.critical_rank} {lane}" if lane == "compute" else f"{s} channel"
                               for s in sub["stream"]],
                            x=sub["duration_s"], base=sub["start_s"], orientation="h",
                            customdata=sub[["name", "layer", "direction"]].values,
                            hovertemplate="%{customdata[0]} layer %{customdata[1]} %{customdata[2]}<br>"
                                          "start %{base:.4f}s, %{x:.5f}s<extra>" + ph + "</extra>")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="seconds", template="plotly_white", height=360)
    return fig


def write_demo_report(path, rows, results) -> None:
    """One self-contained HTML file with the scenario table and figures."""
    first = rows[0]
    res = results[(first["model"], first["mode"], first["top_k"], "dcca")]
    figs = [step_time_figure(rows), breakdown_figure(rows),
            timeline_figure(res, f"Timeline of one step: {_label(first)}, DCCA")]
    parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}") for i, f in enumerate(figs)]
    table = "".join(
        f"<tr><td>{html.escape(_label(r))}</td><td>{r['cdac_step_s']:.4f}</td><td>{r['dcca_step_s']:.4f}</td>"
        f"<td>{r['speedup']:.2f}x</td><td>{100 * r['cdac_a2a_share']:.1f}%</td><td>{100 * r['dcca_a2a_share']:.1f}%</td></tr>"
        for r in rows)
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>moesim: CDAC vs DCCA</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>CDAC vs DCCA (BigMac) on {rows[0]['gpus']} GPUs</h1>
<table><tr><th>scenario</th><th>CDAC step (s)</th><th>DCCA step (s)</th><th>speedup</th>
<th>CDAC All-to-All share</th><th>DCCA All-to-All share</th></tr>{table}</table>
{''.join(parts)}
</body></html>"""
    write_text_atomic(path, doc)
