"""The dashboard's figures. Every trace carries ``meta.sel``: one selection key (model|top_k|r|mode)
per point, so the page's controls can filter points; detail figures (timeline, links) carry
``meta.group``/``meta.gsel`` instead and show one simulated scenario at a time.

A figure whose data the sweep lacks says so (an annotated empty figure), and never fails."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moesim.dashboard.data import STRUCT_NAMES, Prepared, pairs, short
from moesim.workload.ops import PHASES

TEMPLATE = "plotly_white"
STRUCT_COLORS = {"cdac": "#d62728", "dcca": "#1f77b4", "dense": "#7f7f7f"}
PHASE_COLORS = {
    "embedding": "#8c564b", "attention": "#9467bd", "tp_comm": "#bcbd22", "gate": "#17becf", "descend": "#2ca02c",
    "dispatch": "#d62728", "experts": "#1f77b4", "shared_experts": "#aec7e8", "combine": "#ff7f0e",
    "ascend": "#98df8a", "lm_head": "#c5b0d5", "grad_allreduce": "#e377c2", "optimizer": "#7f7f7f"}
LINK_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass
class Panel:
    id: str
    title: str
    figure: go.Figure
    kind: str = "points"      # points | groups | static
    note: str = ""
    ignore: list = field(default_factory=list)   # selection dims this panel does not filter by
    groups: list = field(default_factory=list)   # for kind == groups: [{"gsel", "title"}]


def _l(x) -> list:
    """Plain Python list (no numpy types: the page filters arrays in JS)."""
    out = []
    for v in (x.tolist() if hasattr(x, "tolist") else list(x)):
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out.append(v)
    return out


def message_figure(text: str, title: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=15))
    fig.update_layout(title=title, template=TEMPLATE, height=300, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=title, template=TEMPLATE, legend=dict(orientation="v"), margin=dict(l=70, r=20, t=60, b=60),
                      **kw)
    return fig


def _log_ticks(fig: go.Figure, values) -> None:
    vals = sorted({float(v) for v in values if v is not None and math.isfinite(float(v))})
    fig.update_xaxes(type="log", tickvals=vals, ticktext=[f"{v:g}" for v in vals])


def _multicat(ok: pd.DataFrame) -> list:
    return [_l(ok["label"]), _l(ok["struct_name"])]


# ---- 1. step-time breakdown ------------------------------------------------------------------------------
def breakdown_panel(p: Prepared) -> Panel:
    title = "Step-time breakdown: where the time goes on the critical rank (overlap not double counted)"
    ok = p.ok
    if not len(ok):
        return Panel("breakdown", title, message_figure("No scenario ran successfully.", title), "static")
    fig = go.Figure()
    for ph in PHASES:
        col = f"breakdown_s.{ph}"
        if col not in ok or not (ok[col].fillna(0) > 0).any():
            continue
        y = ok[col].fillna(0.0)
        fig.add_bar(name=ph, x=_multicat(ok), y=_l(y), marker_color=PHASE_COLORS.get(ph),
                    meta={"sel": _l(ok["sel"])},
                    customdata=[[s] for s in _l(ok["step_time_s"])],
                    hovertemplate="%{x}<br>" + ph + ": %{y:.4g} s<br>step %{customdata[0]:.4g} s<extra></extra>")
    _layout(fig, title, barmode="stack", yaxis_title="seconds per step", height=480)
    fig.update_xaxes(tickangle=-30)
    return Panel("breakdown", title, fig)


# ---- 2. speedup vs network bandwidth ---------------------------------------------------------------------
def speedup_panel(p: Prepared) -> Panel:
    title = "DCCA speedup over CDAC vs inter-node (NIC) bandwidth"
    pr = pairs(p)
    if not len(pr):
        msg = ("This sweep has no CDAC/DCCA pairs: vary moe.structure over [cdac, dcca] to compare."
               if len(p.ok) else "No scenario ran successfully.")
        return Panel("speedup", title, message_figure(msg, title), "static")
    pr = pr[pr["nic_gbps"].notna()] if "nic_gbps" in pr else pr.iloc[0:0]
    if not len(pr):
        return Panel("speedup", title, message_figure("The topologies of this sweep have no NIC links.", title), "static")
    others = [c for c in p.varying if c not in ("in.topology.nic_bandwidth",) and not c.startswith("in.cost.")]
    pr = pr.copy()
    pr["line"] = pr.apply(lambda r: " ".join(short(c, r[c]) for c in others) or "all", axis=1)
    fig = go.Figure()
    for name, g in pr.groupby("line", sort=False):
        g = g.sort_values("nic_gbps")
        fig.add_scatter(name=name, x=_l(g["nic_gbps"]), y=_l(g["speedup"]), mode="lines+markers",
                        meta={"sel": _l(g["sel"])},
                        customdata=[[a, b] for a, b in zip(_l(g["cdac_step_time_s"]), _l(g["dcca_step_time_s"]))],
                        hovertemplate="%{x:g} Gbit/s: %{y:.3f}x<br>CDAC %{customdata[0]:.4g} s, "
                                      "DCCA %{customdata[1]:.4g} s<extra>" + name + "</extra>")
    n_bw = pr["nic_gbps"].nunique()
    note = "" if n_bw > 1 else " (this sweep has one NIC bandwidth: vary topology.nic_bandwidth for a curve)"
    bw = pr["nic_gbps"].astype(float)
    log_x = n_bw > 1 and bw.max() / max(bw.min(), 1e-9) >= 4
    _layout(fig, title + note, xaxis_title="NIC bandwidth (Gbit/s per NIC)", yaxis_title="speedup (CDAC time / DCCA time)",
            height=440)
    if log_x:
        _log_ticks(fig, bw)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    return Panel("speedup", title, fig)


# ---- 3. communication volume -----------------------------------------------------------------------------
def _link_class_bars(ok, prefix: str, scale: float, name: str, hover: str) -> "go.Figure | None":
    """One bar trace per link class from the table's ``PREFIX<class>`` columns (times ``scale``);
    None when no scenario has a non-zero value. ``name``/``hover`` format ``{cls}``."""
    cols = sorted(c for c in ok.columns if c.startswith(prefix) and (ok[c].fillna(0) > 0).any())
    if not len(ok) or not cols:
        return None
    fig = go.Figure()
    for i, c in enumerate(cols):
        cls = c[len(prefix):]
        fig.add_bar(name=name.format(cls=cls), x=_multicat(ok), y=_l(ok[c].fillna(0) * scale),
                    marker_color=LINK_COLORS[i % len(LINK_COLORS)], meta={"sel": _l(ok["sel"])},
                    hovertemplate=hover.replace("{cls}", cls))
    return fig


def volume_panel(p: Prepared) -> Panel:
    title = "Communication volume per step: bytes carried per link class, and All-to-All bytes sent"
    ok = p.ok
    fig = _link_class_bars(ok, "bytes.", 1e-9, "{cls} links", "%{x}<br>{cls}: %{y:.4g} GB<extra></extra>")
    if fig is None:
        return Panel("volume", title, message_figure("No traffic recorded in this sweep.", title), "static")
    fig.add_scatter(name="All-to-All bytes sent", x=_multicat(ok), y=_l(ok["a2a_bytes_per_step"] / 1e9), mode="markers",
                    marker=dict(symbol="diamond", size=10, color="black"), meta={"sel": _l(ok["sel"])},
                    hovertemplate="%{x}<br>All-to-All: %{y:.4g} GB<extra></extra>")
    _layout(fig, title, barmode="stack", yaxis_title="GB per step (summed over links)", height=460)
    fig.update_xaxes(tickangle=-30)
    return Panel("volume", title, fig,
                 note="A byte is counted on every link it crosses; 'All-to-All bytes sent' counts each byte once.")


# ---- 4. inference latency & throughput -------------------------------------------------------------------
def inference_panel(p: Prepared) -> Panel:
    title = "Inference: time to first token (prefill), per-token latency (decode) and throughput"
    ok = p.ok
    inf = ok[ok["mode"].isin(["prefill", "decode"])] if len(ok) else ok
    if not len(inf):
        return Panel("inference", title, message_figure(
            "This sweep has no inference scenarios: add run.mode: [prefill, decode] to see latency and throughput.",
            title), "static")
    modes = [m for m in ("prefill", "decode") if (inf["mode"] == m).any()]
    names = {"prefill": ("time to first token (ms)", "prefill throughput (prompt tokens/s)"),
             "decode": ("per-token latency (ms)", "decode throughput (generated tokens/s)")}
    fig = make_subplots(rows=len(modes), cols=2, subplot_titles=[t for m in modes for t in names[m]],
                        horizontal_spacing=0.12, vertical_spacing=0.3 if len(modes) > 1 else 0.1)
    for i, m in enumerate(modes, start=1):
        for s in p.structures:
            g = inf[(inf["structure"] == s) & (inf["mode"] == m)]
            if not len(g):
                continue
            x = _l(g["label"].str.replace(f"{m} ", "", regex=False).str.replace(f" {m}", "", regex=False))
            sel, name = _l(g["sel"]), STRUCT_NAMES.get(s, s)
            fig.add_bar(name=name, legendgroup=s, showlegend=i == 1, x=x, y=_l(g["step_time_s"] * 1e3),
                        marker_color=STRUCT_COLORS.get(s), meta={"sel": sel},
                        hovertemplate="%{x}<br>" + name + ": %{y:.4g} ms<extra>" + m + "</extra>", row=i, col=1)
            fig.add_bar(name=name, legendgroup=s, showlegend=False, x=x, y=_l(g["tokens_per_s"]),
                        marker_color=STRUCT_COLORS.get(s), meta={"sel": sel},
                        hovertemplate="%{x}<br>" + name + ": %{y:.4g} tokens/s<extra>" + m + "</extra>", row=i, col=2)
    _layout(fig, title, barmode="group", height=340 * len(modes) + 100)
    fig.update_layout(margin=dict(t=100))
    fig.update_xaxes(tickangle=-30)
    return Panel("inference", title, fig, ignore=["mode"])


# ---- 5. cost per 1B tokens vs network upgrade ------------------------------------------------------------
def cost_panel(p: Prepared) -> Panel:
    title = "Training cost per 1B tokens vs network option"
    ok = p.ok
    col = "cost.usd_per_1b_tokens"
    if not len(ok) or col not in ok:
        return Panel("cost", title, message_figure("No cost estimates in this sweep.", title), "static")
    tr = ok[(ok["mode"] == "train") & ok[col].notna()]
    if not len(tr):
        why = ("This sweep has no GPU-hour price: set cost.gpu_hour_usd in base.cost to see dollars."
               if (ok["mode"] == "train").any() else "This sweep has no training scenarios (run.mode: train).")
        return Panel("cost", title, message_figure(why, title), "static")
    upgrade_cols = [c for c in p.varying if c.startswith("in.cost.upgrade")]
    if "in.topology.nic_bandwidth" in p.varying or tr["nic_gbps"].nunique() > 1:
        xcol, xtitle, numeric = "nic_gbps", "NIC bandwidth (Gbit/s per NIC)", True
    elif upgrade_cols:
        xcol, xtitle, numeric = upgrade_cols[0], upgrade_cols[0][3:], True
    else:
        xcol, xtitle, numeric = "label", "scenario", False
    others = [c for c in p.varying if c not in ("in.topology.nic_bandwidth", "in.run.mode", xcol)
              and not c.startswith("in.cost.")]
    tr = tr.copy()
    tr["line"] = tr.apply(lambda r: " ".join([STRUCT_NAMES.get(r["structure"], r["structure"])] +
                                             [short(c, r[c]) for c in others]), axis=1)
    tr["others"] = tr.apply(lambda r: " ".join(short(c, r[c]) for c in others), axis=1)
    palette = {o: LINK_COLORS[i % len(LINK_COLORS)] for i, o in enumerate(dict.fromkeys(tr["others"]))}
    fig = go.Figure()
    for name, g in tr.groupby("line", sort=False):
        g = g.sort_values(xcol) if numeric else g
        s = g["structure"].iloc[0]
        color = palette[g["others"].iloc[0]] if len(palette) > 1 else STRUCT_COLORS.get(s)
        up = g.get("in.cost.upgrade_usd_per_gpu_hour", pd.Series([0.0] * len(g), index=g.index)).fillna(0.0)
        fig.add_scatter(name=name, x=_l(g[xcol]), y=_l(g[col]), mode="lines+markers",
                        line=dict(color=color, dash="solid" if s == "dcca" else "dash"),
                        marker=dict(symbol="circle" if s == "dcca" else "diamond-open", size=8),
                        meta={"sel": _l(g["sel"])},
                        customdata=[[a, b, c] for a, b, c in zip(_l(g["step_time_s"]), _l(up),
                                                                 _l(g.get("cost.train_time_s", g["step_time_s"]) / 86400))],
                        hovertemplate="%{x}: $%{y:,.0f} per 1B tokens<br>step %{customdata[0]:.4g} s, upgrade "
                                      "+$%{customdata[1]}/GPU-h<br>run %{customdata[2]:.3g} days<extra>" + name + "</extra>")
    _layout(fig, title, xaxis_title=xtitle, yaxis_title="US dollars per 1B training tokens (upgrade included)",
            height=440)
    if numeric and xcol == "nic_gbps" and tr["nic_gbps"].max() / max(tr["nic_gbps"].min(), 1e-9) >= 4:
        _log_ticks(fig, tr["nic_gbps"])
    return Panel("cost", title, fig, ignore=["mode"])


# ---- 6/7. detail views of re-simulated scenarios ---------------------------------------------------------
def timeline_panel(details: list[dict]) -> Panel:
    """Gantt chart of one step per detail group: compute stream of the critical rank and the
    network channels, CDAC above DCCA."""
    title = "Timeline of one simulated step (critical rank's compute stream and the collectives in flight)"
    if not details:
        return Panel("timeline", title, message_figure(
            "No scenario could be re-simulated for a timeline (see the note above).", title), "static")
    fig = go.Figure()
    shown_legend: set = set()
    groups = []
    for gi, det in enumerate(details):
        groups.append({"gsel": det["sel"], "title": f"{title}<br><sub>{det['label']}</sub>"})
        for s, res in det["results"].items():
            name = STRUCT_NAMES.get(s, s)
            df = res.timeline()
            crit = df[(df["rank_class"] == res.critical_class) & (df["duration_s"] > 0)]
            coll = df[(df["rank_class"] == -1) & (df["duration_s"] > 0)]
            for lane, part in (("compute", crit), ("network", coll)):
                for ph in PHASES:
                    sub = part[part["phase"] == ph]
                    if not len(sub):
                        continue
                    lanes = [f"{name} rank {res.critical_rank}" if lane == "compute" else f"{name} {st}"
                             for st in sub["stream"]]
                    first = ph not in shown_legend
                    shown_legend.add(ph)
                    fig.add_bar(name=ph, legendgroup=ph, showlegend=first, orientation="h", y=lanes,
                                x=_l(sub["duration_s"]), base=_l(sub["start_s"]), marker_color=PHASE_COLORS.get(ph),
                                visible=gi == 0, meta={"group": gi},
                                customdata=[[n, int(lay), d] for n, lay, d in
                                            zip(sub["name"], sub["layer"], sub["direction"])],
                                hovertemplate="%{customdata[0]} (layer %{customdata[1]}, %{customdata[2]})<br>"
                                              "start %{base:.5f} s, %{x:.5f} s<extra>" + ph + "</extra>")
    _layout(fig, groups[0]["title"], barmode="overlay", xaxis_title="seconds", height=520)
    fig.update_yaxes(autorange="reversed")
    return Panel("timeline", title, fig, "groups", groups=groups)


def links_panel(details: list[dict], top: int = 25) -> Panel:
    title = "Per-link utilisation (busiest directed links; bytes / (capacity x step time))"
    if not details:
        return Panel("links", title, message_figure(
            "No scenario could be re-simulated for a link view (see the note above).", title), "static")
    fig = go.Figure()
    groups = []
    for gi, det in enumerate(details):
        groups.append({"gsel": det["sel"], "title": f"{title}<br><sub>{det['label']}</sub>"})
        frames = {}
        for s, res in det["results"].items():
            lk = res.links()
            if "utilisation" not in lk:
                lk = lk.assign(utilisation=0.0)
            lk = lk.assign(link=lk["src"].astype(str) + " → " + lk["dst"].astype(str) + " (" + lk["link_class"] + ")")
            frames[s] = lk.set_index("link")
        if not frames:
            continue
        busiest = pd.concat([f["utilisation"] for f in frames.values()], axis=1).max(axis=1)
        order = busiest.sort_values(ascending=False).index[:top][::-1]
        for s, f in frames.items():
            sub = f.reindex(order)
            fig.add_bar(name=STRUCT_NAMES.get(s, s), legendgroup=s, showlegend=gi == 0, orientation="h",
                        y=_l(order), x=_l(sub["utilisation"].fillna(0) * 100), marker_color=STRUCT_COLORS.get(s),
                        visible=gi == 0, meta={"group": gi},
                        customdata=[[b / 1e9, c / 1e9] for b, c in zip(_l(sub["bytes"].fillna(0)),
                                                                      _l(sub["capacity"].fillna(0)))],
                        hovertemplate="%{y}<br>%{x:.1f}% busy, %{customdata[0]:.3g} GB over a "
                                      "%{customdata[1]:.3g} GB/s link<extra>" + STRUCT_NAMES.get(s, s) + "</extra>")
    _layout(fig, groups[0]["title"], barmode="group", xaxis_title="utilisation over the step (%)",
            height=max(420, 22 * top + 120))
    fig.update_yaxes(tickfont=dict(size=10))
    return Panel("links", title, fig, "groups", groups=groups)


def link_class_panel(p: Prepared) -> Panel:
    """Peak utilisation per link class for every scenario (from the table, no re-simulation)."""
    title = "Peak link utilisation per link class, every scenario"
    fig = _link_class_bars(p.ok, "util_max.", 100.0, "{cls}", "%{x}<br>busiest {cls} link: %{y:.1f}%<extra></extra>")
    if fig is None:
        return Panel("linkclass", title, message_figure("No link utilisation recorded in this sweep.", title), "static")
    _layout(fig, title, barmode="group", yaxis_title="busiest link of the class (% of the step)", height=440)
    fig.update_xaxes(tickangle=-30)
    return Panel("linkclass", title, fig)


def all_panels(p: Prepared, details: list[dict]) -> list[Panel]:
    # wide panels span the page; the half-width ones sit in pairs
    return [breakdown_panel(p), speedup_panel(p), cost_panel(p), volume_panel(p), inference_panel(p),
            link_class_panel(p), timeline_panel(details), links_panel(details)]


__all__ = ["Panel", "all_panels", "breakdown_panel", "speedup_panel", "volume_panel", "inference_panel", "cost_panel",
           "timeline_panel", "links_panel", "link_class_panel", "message_figure"]
