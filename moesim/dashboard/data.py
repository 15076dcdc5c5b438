"""Shape a sweep's results table for the dashboard: the rows that ran, short scenario labels from
the inputs that vary, selection keys for the page's controls, and CDAC/DCCA pairs."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

STRUCT_NAMES = {"cdac": "CDAC", "dcca": "DCCA", "dense": "dense"}
SEL_DIMS = ("model", "top_k", "ratio", "mode")
SEL_TITLES = {"model": "model", "top_k": "top-k", "ratio": "r", "mode": "mode"}
_LABEL_ORDER = ("in.model", "in.run.mode", "in.moe.top_k", "in.moe.ratio")


def _fmt_num(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def short(key: str, v) -> str:
    """Compact text for one input value in a label (``k=4``, ``400G NIC``, ...)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{key.split('.')[-1]}=-"
    name = key[3:] if key.startswith("in.") else key
    if name == "model":
        return Path(str(v)).stem if str(v).endswith((".yaml", ".yml")) else str(v)
    if name == "run.mode":
        return str(v)
    if name == "moe.top_k":
        return f"k={_fmt_num(v)}"
    if name == "moe.ratio":
        return f"r={_fmt_num(v)}"
    if name.startswith("topology.") and name.endswith("_bandwidth"):
        what = name[len("topology."):-len("_bandwidth")] or "link"
        return f"{_fmt_num(float(v) * 8 / 1e9)}G {'NIC' if what == 'nic' else what}"
    if name == "topology.file":
        return Path(str(v)).stem
    if name.startswith("cost.upgrade_usd_per_gpu_hour"):
        return f"+${_fmt_num(v)}/GPU-h"
    if name == "cost.upgrade_usd":
        return f"upgrade ${_fmt_num(v)}"
    if name.startswith("parallel."):
        return f"{name.split('.')[1]}={_fmt_num(v)}"
    return f"{name.split('.')[-1]}={_fmt_num(v)}"


@dataclass
class Prepared:
    all_rows: pd.DataFrame
    ok: pd.DataFrame            # status ok, with columns label, sel, struct_name
    varying: list[str]          # in.* columns (other than structure) that vary among ok rows
    sel_values: dict            # dim -> sorted distinct values (strings) among ok rows

    @property
    def structures(self) -> list[str]:
        return [s for s in ("cdac", "dcca", "dense") if s in set(self.ok["structure"])]


def _sel_key(r) -> str:
    return "|".join(_sel_part(d, r[d]) for d in SEL_DIMS)


def _sel_part(dim: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return _fmt_num(float(v)) if dim in ("top_k", "ratio") else str(v)


def prepare(df: pd.DataFrame) -> Prepared:
    df = df.copy()
    if "status" not in df:
        df["status"] = "ok"
    ok = df[(df["status"] == "ok") & df.get("step_time_s", pd.Series(dtype=float)).notna()].copy()
    if "index" in ok:
        ok = ok.sort_values("index", kind="stable")
    ins = [c for c in ok.columns if c.startswith("in.") and c != "in.moe.structure"]
    varying = []
    for c in ins:
        vals = ok[c].map(lambda v: json.dumps(v, default=str) if not (isinstance(v, float) and math.isnan(v)) else "null")
        if vals.nunique() > 1:
            varying.append(c)
    varying.sort(key=lambda c: (_LABEL_ORDER.index(c) if c in _LABEL_ORDER else len(_LABEL_ORDER), c))
    if len(ok):
        def labeller(cols):
            def label(r) -> str:
                parts = [short(c, r[c]) for c in cols if c != "in.label"]
                lab = r.get("label")
                if isinstance(lab, str) and lab:
                    parts.insert(0, lab)
                return " ".join(parts) if parts else str(r.get("model", "scenario"))
            return label
        # cost inputs go into labels only when the other inputs do not already tell scenarios apart
        # (an upgrade price tied to a NIC rate adds nothing but clutter)
        core = [c for c in varying if not c.startswith("in.cost.")]
        ok["label"] = ok.apply(labeller(core), axis=1)
        if ok.duplicated(["label", "structure"]).any():
            ok["label"] = ok.apply(labeller(varying), axis=1)
        ok["sel"] = ok.apply(_sel_key, axis=1)
        ok["struct_name"] = ok["structure"].map(lambda s: STRUCT_NAMES.get(s, str(s)))
    else:
        ok["label"], ok["sel"], ok["struct_name"] = [], [], []
    sel_values = {}
    for i, d in enumerate(SEL_DIMS):
        vals = sorted({k.split("|")[i] for k in ok["sel"]}, key=lambda s: (_num_or_inf(s), s))
        sel_values[d] = vals
    return Prepared(df, ok, varying, sel_values)


def _num_or_inf(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


def pairs(p: Prepared) -> pd.DataFrame:
    """One row per label with both CDAC and DCCA ok: the label's columns from the CDAC row, plus
    ``cdac_*``/``dcca_*`` step times, tokens/s and costs, and ``speedup`` (CDAC time / DCCA time)."""
    ok = p.ok
    c = ok[ok["structure"] == "cdac"].drop_duplicates("label")
    d = ok[ok["structure"] == "dcca"].drop_duplicates("label")
    if not len(c) or not len(d):
        return pd.DataFrame()
    keep = ["step_time_s", "tokens_per_s", "cost.usd_per_1b_tokens", "scenario_id"]
    keep = [k for k in keep if k in ok]
    m = c.merge(d[["label"] + keep], on="label", suffixes=("", "_dcca"))
    for k in keep:
        m[f"cdac_{k}"] = m[k]
        m[f"dcca_{k}"] = m[f"{k}_dcca"]
    m["speedup"] = m["cdac_step_time_s"] / m["dcca_step_time_s"]
    return m
