"""Build, check and write measured profiles (YAML with provenance), and read back the calibrated
link section that :mod:`moesim.validate` applies to testbed topologies.

A measured profile is a normal ``moesim.cost`` profile (``status: measured``) plus a ``calibration``
section that the cost model ignores: the per-link-class parameters (see
:mod:`moesim.calibrate.netmodel`), the contention factor, the fit residuals and the inputs.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from moesim.calibrate.netmodel import LinkParams
from moesim.cost.profile import Profile, find_profile, load_profile, parse_profile
from moesim.errors import InputFileError
from moesim.io import write_text_atomic


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_peak_flops_per_core(dtype: str = "fp32") -> tuple[float, str]:
    """Theoretical FP32 FLOP/s of one core from /proc/cpuinfo: FMA lanes per cycle (AVX-512: 2 FMA x 16
    lanes; AVX2+FMA: 2 x 8; else SSE 2 x 4), times 2 FLOP per FMA, times the clock. Returns (value,
    how it was derived)."""
    flags, mhz = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.lower().startswith("cpu mhz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    ghz = (mhz or 2000.0) / 1e3
    peak = 2 * lanes * 2 * ghz * 1e9
    isa = "AVX-512" if lanes == 16 else "AVX2+FMA" if lanes == 8 else "SSE"
    return peak, f"{isa}: 2 FMA pipes x {lanes} fp32 lanes x 2 FLOP x {ghz:.3f} GHz (/proc/cpuinfo)"


def machine_info() -> dict:
    try:
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        load = None
    out = {"hostname": socket.gethostname(), "cpu_model": cpu_model(), "cores": os.cpu_count(),
           "platform": platform.platform(), "python": platform.python_version(), "loadavg": load}
    try:
        out["peak_flops_per_core"], out["peak_flops_from"] = cpu_peak_flops_per_core()
    except Exception:  # noqa: BLE001 - no /proc/cpuinfo (not Linux): the peak is then given by hand
        pass
    return out


def _clean(obj: Any) -> Any:
    """YAML-safe plain data (floats as floats, inf as null, numpy scalars unwrapped)."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.6g}")
    return obj


def write_profile(path: str | os.PathLike, data: Mapping) -> Profile:
    """Validate ``data`` as a profile (the same checks ``load_profile`` makes), then write it atomically."""
    p = Path(path)
    data = _clean(data)
    prof = parse_profile(data, p)  # raises InputFileError before anything is written
    header = ("# Measured profile written by `moesim calibrate` (see the provenance section for how to\n"
              "# reproduce it). Do not edit by hand: re-run the calibration instead.\n")
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110)
    write_text_atomic(p, text)
    return prof


def raw_profile(profile: str | os.PathLike | Profile) -> tuple[Profile, dict]:
    """The parsed profile and its raw mapping (with the sections the cost model ignores)."""
    prof = profile if isinstance(profile, Profile) else find_profile(profile)
    raw: dict = {}
    if prof.path and Path(prof.path).is_file():
        try:
            raw = yaml.safe_load(Path(prof.path).read_text()) or {}
        except yaml.YAMLError as exc:  # pragma: no cover - load_profile parsed it already
            raise InputFileError(prof.path, f"not valid YAML ({exc})") from None
    return prof, raw


def link_params(raw: Mapping) -> dict:
    """Calibrated per-class link parameters of a measured profile ({} for datasheet profiles)."""
    cal = raw.get("calibration") if isinstance(raw, Mapping) else None
    links = cal.get("links") if isinstance(cal, Mapping) else None
    if not isinstance(links, Mapping):
        return {}
    return {str(k): LinkParams.from_dict(v) for k, v in links.items() if isinstance(v, Mapping)}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    return " ".join(["moesim" if Path(sys.argv[0]).name in ("moesim", "__main__.py") else sys.argv[0], *sys.argv[1:]])


__all__ = ["write_profile", "raw_profile", "link_params", "machine_info", "cpu_peak_flops_per_core", "load_profile"]
