"""Parsing and formatting of physical quantities at the edges. Inside moesim everything is SI:
seconds, bytes, bytes/s, FLOP.

>>> parse_bandwidth("100 Gbit/s")
12500000000.0
>>> parse_duration("1.5 us")
1.5e-06
"""
from __future__ import annotations

import math
import re

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}

_BW_RE = re.compile(rf"^\s*{_NUM}\s*([kKMGTP]i?)?\s*(bit|bps|b|B|byte|bytes)\s*(?:/\s*s|ps)?\s*$")
_BYTES_RE = re.compile(rf"^\s*{_NUM}\s*([kKMGTP]i?)?\s*(B|bytes?)?\s*$")
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_TIME_RE = re.compile(rf"^\s*{_NUM}\s*(s|ms|us|µs|ns)?\s*$")


def _positive_finite(value: float, what: str, text: object) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not finite")
    return value


def parse_bandwidth(value: object) -> float:
    """Bandwidth in bytes/s from a number (already bytes/s) or a string such as "100 Gbit/s",
    "25 GB/s", "400Gbps", "1.5 MiB/s". Bits are divided by 8."""
    if isinstance(value, bool):
        raise ValueError(f"bandwidth {value!r} is not a number or a string with units")
    if isinstance(value, (int, float)):
        return _positive_finite(float(value), "bandwidth", value)
    if not isinstance(value, str):
        raise ValueError(f"bandwidth {value!r} is not a number or a string with units")
    m = _BW_RE.match(value)
    if not m:
        try:
            return _positive_finite(float(value), "bandwidth", value)
        except ValueError:
            raise ValueError(f"cannot parse bandwidth {value!r} (expected e.g. '100 Gbit/s' or '25 GB/s')") from None
    number, prefix, unit = float(m.group(1)), m.group(2) or "", m.group(3)
    scale = _PREFIX[prefix]
    if unit in ("bit", "bps", "b"):
        scale /= 8.0
    return _positive_finite(number * scale, "bandwidth", value)


def parse_duration(value: object) -> float:
    """Duration in seconds from a number (already seconds) or a string such as "1.5 us", "2ms"."""
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} is not a number or a string with units")
    if isinstance(value, (int, float)):
        return _positive_finite(float(value), "duration", value)
    if not isinstance(value, str):
        raise ValueError(f"duration {value!r} is not a number or a string with units")
    m = _TIME_RE.match(value)
    if not m:
        raise ValueError(f"cannot parse duration {value!r} (expected e.g. '1.5 us' or '2 ms')")
    return _positive_finite(float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"], "duration", value)


def parse_bytes(value: object) -> float:
    """Size in bytes from a number or a string such as "64 MiB", "1e6", "2 GB"."""
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is not a number or a string with units")
    if isinstance(value, (int, float)):
        return _positive_finite(float(value), "size", value)
    if not isinstance(value, str):
        raise ValueError(f"size {value!r} is not a number or a string with units")
    m = _BYTES_RE.match(value)
    if not m:
        raise ValueError(f"cannot parse size {value!r} (expected e.g. '64 MiB' or '1e6')")
    return _positive_finite(float(m.group(1)) * _PREFIX[m.group(2) or ""], "size", value)


def fmt_seconds(t: float) -> str:
    """Human-readable duration."""
    if t == 0:
        return "0 s"
    a = abs(t)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if a >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t:.3g} s"


def fmt_si(x: float, unit: str = "") -> str:
    """Human-readable number with an SI prefix, e.g. fmt_si(3.2e12, 'FLOP') -> '3.2 TFLOP'."""
    a = abs(x)
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()
