"""The dashboard page: one self-contained HTML file (plotly.js inlined, no network needed) with the
figures' data and a small script that filters every figure by the controls (model, top-k, r, mode)."""
from __future__ import annotations

import base64
import html
import json

import numpy as np

from moesim.dashboard.data import SEL_DIMS, SEL_TITLES

_JS = r"""
(function () {
  const DATA = JSON.parse(document.getElementById('moesim-data').textContent);
  const DIMS = DATA.dims;
  const ALL = '__all__';
  const F = {};
  DIMS.forEach(d => { F[d] = (DATA.initial && DATA.initial[d]) || ALL; });
  const CONFIG = {responsive: true, displaylogo: false};

  function matches(key, ignore) {
    const parts = String(key).split('|');
    return DIMS.every((d, i) => F[d] === ALL || (ignore && ignore.indexOf(d) >= 0) || parts[i] === F[d]);
  }
  function clone(o) { return JSON.parse(JSON.stringify(o)); }
  const PER_POINT = ['x', 'y', 'base', 'text', 'customdata', 'hovertext', 'width'];

  function filterTrace(t, ignore) {
    const sel = t.meta && t.meta.sel;
    if (!Array.isArray(sel)) return {trace: t, n: 0};
    const keep = sel.map(k => matches(k, ignore));
    const n = sel.length;
    const out = Object.assign({}, t);
    PER_POINT.forEach(a => {
      const v = t[a];
      if (!Array.isArray(v)) return;
      if ((a === 'x' || a === 'y') && v.length && Array.isArray(v[0])) {
        out[a] = v.map(level => level.filter((_, i) => keep[i]));   // multi-category axis
      } else if (v.length === n) {
        out[a] = v.filter((_, i) => keep[i]);
      }
    });
    if (t.marker && Array.isArray(t.marker.color) && t.marker.color.length === n) {
      out.marker = Object.assign({}, t.marker, {color: t.marker.color.filter((_, i) => keep[i])});
    }
    out.meta = Object.assign({}, t.meta, {sel: sel.filter((_, i) => keep[i])});
    return {trace: out, n: keep.filter(Boolean).length};
  }

  function note(layout, text) {
    layout.annotations = (layout.annotations || []).concat([{
      text: text, x: 0.5, y: 0.5, xref: 'paper', yref: 'paper', showarrow: false,
      font: {size: 15, color: '#555'}, bgcolor: 'rgba(255,255,255,0.85)'}]);
  }

  function render(panel) {
    const div = document.getElementById('fig-' + panel.id);
    const fig = panel.figure;
    let data, layout = clone(fig.layout);
    if (panel.kind === 'points') {
      let total = 0;
      data = fig.data.map(t => { const r = filterTrace(t, panel.ignore); total += r.n; return r.trace; });
      if (total === 0) note(layout, 'No scenario matches the selection.');
    } else if (panel.kind === 'groups') {
      let g = panel.groups.findIndex(gr => matches(gr.gsel, panel.ignore));
      const seen = new Set();
      data = fig.data.map(t => {
        const vis = g >= 0 && t.meta && t.meta.group === g;
        const out = Object.assign({}, t, {visible: vis});
        if (vis) { out.showlegend = !seen.has(t.legendgroup); seen.add(t.legendgroup); }
        return out;
      });
      if (g >= 0) {
        layout.title = Object.assign({}, layout.title || {}, {text: panel.groups[g].title});
      } else {
        note(layout, 'No detailed scenario for this selection (detail views were simulated for: ' +
             panel.groups.map(gr => gr.gsel.split('|').join(' ')).join('; ') + ').');
      }
    } else {
      data = fig.data;
    }
    return Plotly.react(div, data, layout, CONFIG);
  }

  function renderAll() {
    return Promise.all(DATA.panels.map(render));
  }

  DIMS.forEach(d => {
    const el = document.getElementById('ctl-' + d);
    if (el) el.addEventListener('change', () => { F[d] = el.value; renderAll(); });
  });
  const reset = document.getElementById('ctl-reset');
  if (reset) reset.addEventListener('click', () => {
    DIMS.forEach(d => { F[d] = ALL; const el = document.getElementById('ctl-' + d); if (el) el.value = ALL; });
    renderAll();
  });
  renderAll().then(() => { window.moesimDashboardReady = true; document.body.dataset.ready = '1'; })
    .catch(e => { console.error('dashboard render failed', e); });
})();
"""

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#fff;border-bottom:1px solid #ddd;padding:14px 24px;position:sticky;top:0;z-index:10}
h1{font-size:20px;margin:0 0 4px 0}
.meta{color:#555;font-size:13px;margin:2px 0 8px 0}
.controls{display:flex;gap:16px;flex-wrap:wrap;align-items:center;font-size:14px}
.controls label{display:flex;gap:6px;align-items:center}
.controls select{padding:3px 6px;font-size:14px}
main{padding:12px 24px;display:grid;grid-template-columns:repeat(auto-fit,minmax(640px,1fr));gap:16px}
section.panel{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:6px}
section.wide{grid-column:1/-1}
.note{color:#666;font-size:12px;margin:2px 8px 6px 8px}
details{margin:0 24px 24px 24px;font-size:13px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
"""

WIDE = ("breakdown", "volume", "inference", "linkclass", "timeline", "links")


def _plain(obj):
    """JSON-ready copy of a plotly figure dict with typed arrays ({dtype, bdata}) decoded to lists."""
    if isinstance(obj, dict):
        if set(obj) >= {"dtype", "bdata"}:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            if "shape" in obj:
                shape = obj["shape"]
                arr = arr.reshape([int(s) for s in (shape.split(",") if isinstance(shape, str) else shape)])
            return arr.tolist()
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _select(dim: str, values: list[str], initial: str | None = None) -> str:
    opts = ['<option value="__all__">all</option>'] + [
        f'<option value="{html.escape(v)}"{" selected" if v == initial else ""}>{html.escape(v)}</option>'
        for v in values]
    disabled = " disabled" if len(values) <= 1 else ""
    return (f'<label>{html.escape(SEL_TITLES[dim])} <select id="ctl-{dim}" name="{dim}"{disabled}>'
            f'{"".join(opts)}</select></label>')


def render_page(title: str, subtitle: str, panels, sel_values: dict, errors: list[tuple[str, str]],
                notes: list[str], initial: dict | None = None) -> str:
    from plotly.offline import get_plotlyjs
    initial = {d: v for d, v in (initial or {}).items() if v in sel_values.get(d, [])}
    payload = {"dims": list(SEL_DIMS), "initial": initial, "panels": [
        {"id": p.id, "kind": p.kind, "groups": p.groups, "ignore": p.ignore,
         "figure": _plain(p.figure.to_plotly_json())} for p in panels]}
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    sections = "\n".join(
        f'<section class="panel{" wide" if p.id in WIDE else ""}" id="panel-{p.id}">'
        f'<div class="plot" id="fig-{p.id}" style="min-height:300px"></div>'
        + (f'<p class="note">{html.escape(p.note)}</p>' if p.note else "") + "</section>" for p in panels)
    controls = "".join(_select(d, sel_values.get(d, []), initial.get(d)) for d in SEL_DIMS)
    err_html = ""
    if errors:
        rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in errors[:200])
        err_html = (f"<details><summary>{len(errors)} scenario(s) failed (recorded with their error; not plotted)"
                    f"</summary><table><tr><th>scenario</th><th>error</th></tr>{rows}</table></details>")
    notes_html = "".join(f'<p class="meta">{html.escape(n)}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>{html.escape(title)}</h1><p class="meta">{html.escape(subtitle)}</p>{notes_html}
<div class="controls">{controls}<button id="ctl-reset" type="button">show all</button></div></header>
<main>
{sections}
</main>
{err_html}
<script type="application/json" id="moesim-data">{data}</script>
<script type="text/javascript">{_JS}</script>
</body></html>
"""
