"""What an All-to-All byte costs inside a step, measured against predicted.

Per testbed (hosts x ranks per host x rate) and structure, a least-squares line through its
configurations (every top-k): All-to-All phase time per rank-step (dispatch + combine, s) against
the remote bytes a rank sends in them per step (bytes). The slope is the marginal cost of a byte in
a step (s/byte; its inverse an in-step bandwidth), the intercept what the All-to-All phases cost
without bytes (waiting for peers and for a core, per-message costs). The structures get a line each:
their waiting differs (DCCA's ranks compete for the cores more), so one line through both would
mistake the difference in waiting for a cost per byte. Measured and predicted lines use the same
bytes (validation replays the measured traffic), so comparing them tells whether the model prices
the bytes or the waiting wrongly, which step times alone cannot.

:func:`goodput_floor` bounds, per configuration, how fast a shaped host link moved a step's
All-to-All bytes, with nothing modelled: with one rank per host every remote byte of a rank crosses
its host link, and only while the rank is inside an All-to-All (gloo's TCP transport sends a
message only once its receiver has posted the matching receive, so neither end can be elsewhere),
so the link ran at least at ``remote bytes / All-to-All phase time`` on average over those windows.

:func:`overlap_fit` asks whether a step's bytes move *inside* its waiting or after it: one floor W
(s per rank-step) for the whole campaign and one byte time per testbed, fitted on the measured
phases of every configuration in two forms, overlapping ``max(W, s x)`` and additive ``W + s x``.
The form that fits better says how the waiting and the bytes combine in the runs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

A2A_PHASES = ("dispatch", "combine")


def _phase_sum(r: dict, side: str) -> float:
    """A validation row's All-to-All phase time per rank-step (dispatch + combine, s), ``side``
    'measured' or 'predicted'."""
    return float(sum(r["phases"].get(ph, {}).get(f"{side}_s", 0.0) for ph in A2A_PHASES))


def remote_bytes_per_step(df: pd.DataFrame) -> float | None:
    """Mean over steps and ranks of the remote bytes a rank moves in its All-to-All phases (bytes;
    None when the table has no byte counts)."""
    if "bytes_remote" not in df.columns:
        return None
    a2a = df[df["phase"].isin(A2A_PHASES)]
    vals = pd.to_numeric(a2a["bytes_remote"], errors="coerce")
    if a2a.empty or vals.isna().all():
        return None
    per = vals.fillna(0.0).groupby([a2a["step"], a2a["rank"]]).sum()
    return float(per.mean())


def a2a_cost(rows: list) -> list[dict]:
    """Per testbed and structure with at least 3 configurations and 2 distinct byte counts: the measured and the
    predicted line (``intercept_s``, ``s_per_byte``, ``bytes_per_s`` = 1 / slope where the slope is
    positive) and ``slope_ratio`` = predicted / measured slope. ``rows``: validation rows carrying
    ``a2a_remote_bytes`` and per-phase times."""
    groups: dict = {}
    for r in rows:
        if r.get("a2a_remote_bytes") is None:
            continue
        key = (r["hosts"], r["ranks_per_host"], r["rate_bits"], r["structure"])
        groups.setdefault(key, []).append(r)
    out = []
    for (hosts, rph, rate, structure), rs in groups.items():
        x = np.array([r["a2a_remote_bytes"] for r in rs], dtype=float)
        if len(rs) < 3 or len(np.unique(x)) < 2:
            continue
        lines = {}
        for side in ("measured", "predicted"):
            y = np.array([_phase_sum(r, side) for r in rs])
            b, a = (float(v) for v in np.polyfit(x, y, 1))    # least squares y = a + b x
            lines[side] = {"intercept_s": a, "s_per_byte": b, "bytes_per_s": (1.0 / b) if b > 0 else None}
        m = lines["measured"]["s_per_byte"]
        label = f"{hosts}x{rph} " + (f"{rate / 1e6:g}Mbit" if rate else "unshaped") + f" {structure}"
        out.append({"label": label, "hosts": hosts, "ranks_per_host": rph, "rate_bits": rate, "structure": structure,
                    "configurations": len(rs), **lines,
                    "slope_ratio": (lines["predicted"]["s_per_byte"] / m) if m > 0 else None})
    return out


def goodput_floor(rows: list) -> list[dict]:
    """Per configuration on a shaped testbed with one rank per host: the least mean rate, as a fraction
    of the tc rate, at which the rank's host link carried its All-to-All bytes in a step, measured
    and predicted: ``remote bytes per rank-step * 8 / (dispatch + combine time per rank-step) /
    rate`` (a lower bound: the link may idle inside those phases while the rank waits). ``rows``:
    validation rows (``a2a_remote_bytes``, ``rate_bits`` in bit/s, per-phase times in s)."""
    out = []
    for r in rows:
        nbytes, rate = r.get("a2a_remote_bytes"), r.get("rate_bits") or 0.0
        if nbytes is None or nbytes <= 0 or rate <= 0 or r.get("ranks_per_host") != 1:
            continue
        floor = {}
        for side in ("measured", "predicted"):
            t = _phase_sum(r, side)
            floor[side] = 8.0 * nbytes / t / rate if t > 0 else None
        out.append({"label": r["label"], "role": r.get("role"), "structure": r["structure"], "top_k": r.get("top_k"),
                    "hosts": r["hosts"], "rate_bits": rate, "remote_bytes": float(nbytes), **floor})
    return out


def _fit_forms(x: np.ndarray, y: np.ndarray, idx: np.ndarray, keys: list, labels: list, points: int) -> dict:
    """Both forms fitted to phase times ``y`` (s) against bytes ``x``, testbed ``keys[idx]`` per row."""
    out: dict = {}
    for form, comb in (("overlapping", np.maximum), ("additive", np.add)):
        w_lo, w_hi = 0.0, float(y.max())
        s_lo, s_hi = np.log(float((y / x).min()) / 100.0), np.log(float((y / x).max()) * 2.0)
        for _ in range(2):            # a coarse pass over the whole range, then a fine one around the best
            ws = np.linspace(w_lo, w_hi, points)
            ss = np.exp(np.linspace(s_lo, s_hi, points))
            total = np.zeros(len(ws))
            best_s = np.zeros((len(ws), len(keys)))
            for j in range(len(keys)):
                m = idx == j
                pred = comb(ws[:, None, None], ss[None, :, None] * x[m][None, None, :])   # (W, s, rows)
                err = (np.log(pred / y[m]) ** 2).sum(axis=2)     # pred, y > 0: finite
                k = err.argmin(axis=1)
                total += err[np.arange(len(ws)), k]
                best_s[:, j] = ss[k]
            i = int(total.argmin())
            dw, ds = (w_hi - w_lo) / (points - 1), (s_hi - s_lo) / (points - 1)
            w_lo, w_hi = max(0.0, ws[i] - 2 * dw), ws[i] + 2 * dw
            s_lo, s_hi = float(np.log(best_s[i].min())) - 2 * ds, float(np.log(best_s[i].max())) + 2 * ds
        w, s_per = float(ws[i]), best_s[i]
        err = comb(w, s_per[idx] * x) / y - 1.0
        ape = np.abs(err)
        worst = int(ape.argmax())
        out[form] = {"floor_s": w, "mape": float(ape.mean()), "max_error": float(ape.max()),
                     "worst": {"label": labels[worst], "error": float(err[worst])}, "testbeds": [
            {"hosts": h, "ranks_per_host": rph, "rate_bits": rate, "s_per_byte": float(sv),
             "rate_fraction": (8.0 / (rate * sv)) if rate > 0 else None} for (h, rph, rate), sv in zip(keys, s_per)]}
    return out


def overlap_fit(rows: list, points: int = 241) -> dict | None:
    """The measured All-to-All phases per rank-step (dispatch + combine, s) of every configuration with
    remote bytes x (bytes per rank-step), fitted with one floor W (s) for all of them and one byte time
    s (s/byte) per testbed (hosts, ranks per host, rate), in the overlapping form ``max(W, s x)`` and
    in the additive form ``W + s x``: least squares on log time, W on a grid and each testbed's s on a
    log grid (then a finer pass around the best). Per form: ``floor_s``, per testbed ``s_per_byte``
    and ``rate_fraction`` (8 / (rate x s): the in-step goodput as a fraction of the tc rate; None
    unshaped), ``mape``, ``max_error`` and ``worst`` (the row's label and signed error, fitted /
    measured - 1). ``engine``: the predicted phases' errors against the measured ones (``mape``,
    ``max_error``), and both forms fitted the same way to the predicted phases (``overlapping``,
    ``additive``: the shape the engine gives the phases). None with fewer than 4 rows."""
    use = [r for r in rows if (r.get("a2a_remote_bytes") or 0) > 0 and _phase_sum(r, "measured") > 0]
    if len(use) < 4:
        return None
    x = np.array([r["a2a_remote_bytes"] for r in use], dtype=float)
    y = np.array([_phase_sum(r, "measured") for r in use])

    def testbed(r: dict) -> tuple:
        return int(r["hosts"]), int(r.get("ranks_per_host") or 1), float(r.get("rate_bits") or 0.0)
    keys = sorted({testbed(r) for r in use})
    idx = np.array([keys.index(testbed(r)) for r in use])
    labels = [r.get("label") for r in use]
    out: dict = {"rows": len(use), **_fit_forms(x, y, idx, keys, labels, points)}
    eng = np.array([_phase_sum(r, "predicted") for r in use])
    ape = np.abs(eng / y - 1.0)
    out["engine"] = {"mape": float(ape.mean()), "max_error": float(ape.max()),
                     **(_fit_forms(x, eng, idx, keys, labels, points) if (eng > 0).all() else {})}
    return out
