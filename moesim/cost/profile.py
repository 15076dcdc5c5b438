"""Device and network profiles: YAML files in ``calibration/`` with provenance and a status
``datasheet`` or ``measured``. Loading validates every field and names the file and field at fault."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from moesim.errors import InputFileError, MoesimError
from moesim.io import read_yaml_file

STATUSES = ("datasheet", "measured")
DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class DeviceProfile:
    """One accelerator. Units: FLOP/s, bytes/s, bytes, seconds."""

    peak_flops: Mapping[str, float]
    memory_bandwidth: float
    memory_bytes: float
    gemm_efficiency_max: float
    gemm_half_size: float
    memory_efficiency: float
    op_overhead_s: float
    #: the per-op overhead overlaps the op's work instead of adding to it: an op costs
    #: ``max(op_overhead_s, work)`` (a GPU stream fed asynchronously, ``device.op_overhead_overlaps``)
    op_overhead_overlaps: bool = False
    #: measured profiles of a shared machine: the priced speed is ``core_share`` of a rank's speed
    #: alone when ``ranks_per_machine`` ranks compute together (``calibration.contention``); 1 / None else
    core_share: float = 1.0
    ranks_per_machine: int | None = None
    #: fitted shared-core pool (``calibration.cpu_pool``): effective cores of the machine, and the alone
    #: work of an op per priced second (:mod:`moesim.engine.cpupool`); None when not calibrated
    pool_cores: float | None = None
    alone_factor: float | None = None
    #: the pool's scheduler: 0 = processor sharing, else round-robin time slices of this many seconds
    #: on the machine's cores (``calibration.cpu_pool.time_slice_s``)
    time_slice_s: float = 0.0
    #: All-to-All rank pairs start their exchange as soon as both ranks arrive
    #: (``calibration.cpu_pool.pairwise_a2a``; :mod:`moesim.engine.netbridge`)
    pairwise_a2a: bool = False
    #: CPU an All-to-All call costs each member rank after its data has landed (s of alone work in the
    #: pool: gloo's and the layer's own work around the exchange; ``calibration.cpu_pool.a2a_cpu_s``)
    a2a_cpu_s: float = 0.0
    #: the members of every All-to-All whose group spans hosts leave over the last this fraction of its
    #: time, shaped links or not (measured in steps by ``moesim.calibrate.arrivals``;
    #: ``calibration.cpu_pool.step_release_spread``; 0: only shaped links' measured spread applies)
    step_release_spread: float = 0.0
    #: with time slices, a rank's compute goes ahead of the All-to-All CPU of ranks still in a call for
    #: its first slice (``calibration.cpu_pool.compute_first``; :class:`moesim.engine.cpupool.CorePool`)
    compute_first: bool = False
    #: the All-to-All CPU (``a2a_cpu_s``) runs beside the call's transfer from the rank's arrival, and the
    #: call returns when both are done (``calibration.cpu_pool.a2a_cpu_overlap``); off: after its data landed
    a2a_cpu_overlap: bool = False


@dataclass(frozen=True)
class NetworkProfile:
    """Communication parameters the network model takes (seconds; link_efficiency is a factor on
    the topology's bandwidth per link class)."""

    latency_per_message_s: float = 5e-6
    collective_overhead_s: float = 20e-6
    receiver_wait_s: float = 0.0     # least time of a message from its stage's start, overlapped (s)
    link_efficiency: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str
    status: str
    provenance: Mapping[str, Any]
    device: DeviceProfile
    network: NetworkProfile
    path: str = ""


def _overlaps(path: Path, dev: Mapping) -> bool:
    """``device.op_overhead_overlaps``: true or false (default false: the overhead adds to the work)."""
    value = dev.get("op_overhead_overlaps", False)
    if not isinstance(value, bool):
        raise InputFileError(path, f"field 'device.op_overhead_overlaps' must be true or false, got {value!r}")
    return value


def _num(path: Path, where: str, value: Any, *, positive: bool = True, allow_zero: bool = False,
         at_most: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InputFileError(path, f"field '{where}' must be a number, got {value!r}") from None
        else:
            raise InputFileError(path, f"field '{where}' must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise InputFileError(path, f"field '{where}' must be finite, got {value!r}")
    if positive and (x < 0 or (x == 0 and not allow_zero)):
        raise InputFileError(path, f"field '{where}' must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    if at_most is not None and x > at_most:
        raise InputFileError(path, f"field '{where}' must be at most {at_most}, got {value!r}")
    return x


def _section(path: Path, data: Mapping, key: str, required: bool = True) -> Mapping:
    sec = data.get(key)
    if sec is None:
        if required:
            raise InputFileError(path, f"missing section '{key}'")
        return {}
    if not isinstance(sec, Mapping):
        raise InputFileError(path, f"section '{key}' must be a mapping")
    return sec


def _req(path: Path, sec: Mapping, key: str, where: str) -> Any:
    if key not in sec:
        raise InputFileError(path, f"missing field '{where}'")
    return sec[key]


def _contention(path: Path, data: Mapping) -> dict:
    """``core_share`` and ``ranks_per_machine`` of a measured profile's ``calibration`` section."""
    cal = data.get("calibration")
    if not isinstance(cal, Mapping):
        return {}
    out: dict = {}
    con = cal.get("contention")
    if isinstance(con, Mapping) and con.get("core_share") is not None:
        out["core_share"] = _num(path, "calibration.contention.core_share", con["core_share"], at_most=1.0)
    if cal.get("ranks_per_machine") is not None:
        out["ranks_per_machine"] = int(_num(path, "calibration.ranks_per_machine", cal["ranks_per_machine"]))
    pool = cal.get("cpu_pool")
    if pool is not None:
        if not isinstance(pool, Mapping):
            raise InputFileError(path, "field 'calibration.cpu_pool' must be a mapping (pool_cores, alone_factor)")
        out["pool_cores"] = _num(path, "calibration.cpu_pool.pool_cores", _req(path, pool, "pool_cores",
                                                                               "calibration.cpu_pool.pool_cores"))
        out["alone_factor"] = _num(path, "calibration.cpu_pool.alone_factor",
                                   _req(path, pool, "alone_factor", "calibration.cpu_pool.alone_factor"), at_most=1.0)
        if pool.get("time_slice_s") is not None:
            out["time_slice_s"] = _num(path, "calibration.cpu_pool.time_slice_s", pool["time_slice_s"],
                                       allow_zero=True, at_most=1.0)
        for flag in ("pairwise_a2a", "compute_first", "a2a_cpu_overlap"):
            if pool.get(flag) is not None:
                if not isinstance(pool[flag], bool):
                    raise InputFileError(path, f"field 'calibration.cpu_pool.{flag}' must be true or false, "
                                               f"got {pool[flag]!r}")
                out[flag] = pool[flag]
        if pool.get("a2a_cpu_s") is not None:
            out["a2a_cpu_s"] = _num(path, "calibration.cpu_pool.a2a_cpu_s", pool["a2a_cpu_s"],
                                    allow_zero=True, at_most=0.5)
        if pool.get("step_release_spread") is not None:
            v = _num(path, "calibration.cpu_pool.step_release_spread", pool["step_release_spread"], allow_zero=True)
            if not v < 1.0:
                raise InputFileError(path, f"field 'calibration.cpu_pool.step_release_spread' must lie in [0, 1) "
                                           f"(a fraction of an All-to-All's time), got {v!r}")
            out["step_release_spread"] = v
    return out


def _check_link_fields(path: Path, data: Mapping) -> None:
    """The per-class link fields read with the links by :func:`moesim.calibrate.profile_io.link_params`
    that the profile checks: ``calibration.links.CLASS.two_way_onset_s`` (s, the two-way loss's onset)
    must be a number in [0, 1), ``burst_continuous``, ``two_way_active`` and ``peer_shared`` true or false,
    ``two_way_rate_exponent`` a number that, unless 0, comes with a positive ``two_way_reference_rate``
    (bytes/s)."""
    cal = data.get("calibration")
    links = cal.get("links") if isinstance(cal, Mapping) else None
    if not isinstance(links, Mapping):
        return
    for cls, lp in links.items():
        for flag in ("burst_continuous", "two_way_active", "peer_shared"):
            if isinstance(lp, Mapping) and lp.get(flag) is not None and not isinstance(lp[flag], bool):
                raise InputFileError(path, f"field 'calibration.links.{cls}.{flag}' must be true or false, "
                                           f"got {lp[flag]!r}")
        if isinstance(lp, Mapping) and lp.get("two_way_rate_exponent") is not None:
            where = f"calibration.links.{cls}.two_way_rate_exponent"
            gamma = _num(path, where, lp["two_way_rate_exponent"], positive=False)
            if gamma != 0.0:
                ref = lp.get("two_way_reference_rate")
                if ref is None:
                    raise InputFileError(path, f"field '{where}' is {gamma!r}, so field 'calibration.links.{cls}."
                                               f"two_way_reference_rate' (bytes/s) is required")
                _num(path, f"calibration.links.{cls}.two_way_reference_rate", ref)
        if isinstance(lp, Mapping) and lp.get("two_way_onset_s") is not None:
            where = f"calibration.links.{cls}.two_way_onset_s"
            v = _num(path, where, lp["two_way_onset_s"], allow_zero=True)
            if not v < 1.0:
                raise InputFileError(path, f"field '{where}' must lie in [0, 1) s (how long a shaped link "
                                           f"carries two-way traffic before its loss sets in), got {v!r}")


def parse_profile(data: Any, path: Path) -> Profile:
    """Validate a profile mapping (as read from YAML)."""
    if not isinstance(data, Mapping):
        raise InputFileError(path, "a profile must be a mapping with 'name', 'status', 'device'")
    status = data.get("status")
    if status not in STATUSES:
        raise InputFileError(path, f"field 'status' must be one of {STATUSES}, got {status!r}")
    prov = data.get("provenance")
    if not isinstance(prov, Mapping) or not prov:
        raise InputFileError(path, "field 'provenance' must be a non-empty mapping (source, date, ...)")
    dev = _section(path, data, "device")
    peaks = _req(path, dev, "peak_flops", "device.peak_flops")
    if not isinstance(peaks, Mapping) or not peaks:
        raise InputFileError(path, "field 'device.peak_flops' must map dtypes (bf16, fp16, fp32) to FLOP/s")
    peak = {}
    for k, v in peaks.items():
        if k not in DTYPES:
            raise InputFileError(path, f"field 'device.peak_flops.{k}': unknown dtype (expected {DTYPES})")
        peak[k] = _num(path, f"device.peak_flops.{k}", v)
    gemm = _section(path, dev, "gemm")
    _check_link_fields(path, data)
    device = DeviceProfile(
        peak_flops=peak,
        memory_bandwidth=_num(path, "device.memory_bandwidth", _req(path, dev, "memory_bandwidth", "device.memory_bandwidth")),
        memory_bytes=_num(path, "device.memory_bytes", dev.get("memory_bytes", 0), allow_zero=True),
        gemm_efficiency_max=_num(path, "device.gemm.efficiency_max",
                                 _req(path, gemm, "efficiency_max", "device.gemm.efficiency_max"), at_most=1.0),
        gemm_half_size=_num(path, "device.gemm.half_size", gemm.get("half_size", 0), allow_zero=True),
        memory_efficiency=_num(path, "device.memory_efficiency", dev.get("memory_efficiency", 1.0), at_most=1.0),
        op_overhead_s=_num(path, "device.op_overhead_s", dev.get("op_overhead_s", 0.0), allow_zero=True),
        op_overhead_overlaps=_overlaps(path, dev),
        **_contention(path, data),
    )
    net = _section(path, data, "network", required=False)
    eff = net.get("link_efficiency", {}) or {}
    if not isinstance(eff, Mapping):
        raise InputFileError(path, "field 'network.link_efficiency' must map link classes to factors")
    network = NetworkProfile(
        latency_per_message_s=_num(path, "network.latency_per_message_s", net.get("latency_per_message_s", 5e-6), allow_zero=True),
        collective_overhead_s=_num(path, "network.collective_overhead_s", net.get("collective_overhead_s", 20e-6), allow_zero=True),
        receiver_wait_s=_num(path, "network.receiver_wait_s", net.get("receiver_wait_s", 0.0), allow_zero=True),
        link_efficiency={str(k): _num(path, f"network.link_efficiency.{k}", v, at_most=1.0) for k, v in eff.items()},
    )
    name = data.get("name") or path.stem
    return Profile(str(name), status, dict(prov), device, network, str(path))


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and validate one profile file."""
    p = Path(path)
    return parse_profile(read_yaml_file(p, "a device profile"), p)


def profile_search_path() -> list[Path]:
    """Where profiles are looked up by name: $MOESIM_PROFILE_PATH (os.pathsep-separated), ./calibration,
    then the repository's calibration/ next to the installed package."""
    dirs = [Path(d) for d in os.environ.get("MOESIM_PROFILE_PATH", "").split(os.pathsep) if d]
    dirs.append(Path.cwd() / "calibration")
    dirs.append(Path(__file__).resolve().parents[2] / "calibration")
    seen, out = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def find_profile(name_or_path: str | os.PathLike) -> Profile:
    """A profile by file path, or by name (``h100-sxm``) on the search path."""
    text = str(name_or_path)
    p = Path(text)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return load_profile(p)
    for d in profile_search_path():
        cand = d / f"{text}.yaml"
        if cand.is_file():
            return load_profile(cand)
    raise MoesimError(f"no device profile named '{text}' (looked in: {', '.join(str(d) for d in profile_search_path())})")
