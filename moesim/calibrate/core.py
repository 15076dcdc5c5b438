"""``calibrate(paths) -> Calibration``: read microbenchmark tables, fit, assemble a measured profile.

Which rows feed which fit:

* GEMM and memory rows of single-process tables (world size 1): the per-core efficiency curve,
  memory bandwidth and per-op overhead (:func:`moesim.calibrate.fit.fit_compute`);
* GEMM rows of tables at the target world size (``ranks``, default: the largest world measured):
  the contention factor, the share of a core each rank gets (``fit_contention``); when there are
  no single-process GEMMs the curve is fitted on these rows directly (factor 1);
* All-to-All and all-reduce rows of any table: the network (``fit_network``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from moesim.calibrate import fit as F
from moesim.calibrate.profile_io import command_line, cpu_peak_flops_per_core, machine_info, now_iso
from moesim.calibrate.tables import Table, collective_medians, gemm_medians, memory_medians, read_table
from moesim.errors import InputFileError, MoesimError

MANIFEST = "manifest.json"


@dataclass
class Calibration:
    profile: dict
    compute: F.ComputeFit | None
    contention: F.ContentionFit | None
    network: F.NetworkFit | None
    tables: list = field(default_factory=list)
    residuals: dict = field(default_factory=dict)
    framework: F.FrameworkFit | None = None

    def residual_lines(self) -> list[str]:
        out = [f"{'fit':28s} {'rows':>5s} {'MAPE':>8s} {'max err':>8s}"]
        for key, r in self.residuals.items():
            if isinstance(r, dict) and "mape" in r:
                out.append(f"{key:28s} {r['rows']:5d} {100 * r['mape']:7.1f}% {100 * r['max_error']:7.1f}%")
        return out


def expand_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; a directory stands for its ``*.csv`` files (sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(x for x in p.glob("*.csv") if x.is_file())
            if not found:
                raise MoesimError(f"{p}: no *.csv measurement tables in this directory")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise MoesimError("no measurement files given")
    return out


def _load_notes(files: list[Path]) -> dict:
    """Per-file notes (e.g. the load average at measurement time) from a campaign manifest next to the files."""
    notes: dict = {}
    for d in sorted({f.parent for f in files}):
        m = d / MANIFEST
        if m.is_file():
            try:
                data = json.loads(m.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            for entry in data.get("measurements", []) if isinstance(data, dict) else []:
                if isinstance(entry, dict) and "file" in entry:
                    notes[(d / entry["file"]).resolve()] = entry
    return notes


def recorded_peak(tables: list[Table], files: list[Path]) -> tuple[float, str] | None:
    """The CPU peak (FLOP/s per core, fp32) recorded with the GEMM measurements themselves: in the
    GEMM tables' metadata, else in a campaign manifest next to them; None when neither has it."""
    peaks = {(float(t.meta["cpu_peak_flops_per_core"]), str(t.meta.get("cpu_peak_flops_from", "")))
             for t in tables if t.meta.get("cpu_peak_flops_per_core")}
    if len(peaks) > 1:
        raise MoesimError("the GEMM tables were measured on CPUs with different peaks "
                          f"({', '.join(f'{p:.4g}' for p, _ in sorted(peaks))} FLOP/s per core): calibrate them separately")
    if peaks:
        p, note = peaks.pop()
        return p, f"{note} (recorded in the measurement tables)"
    for d in sorted({f.parent for f in files}):
        m = d / MANIFEST
        try:
            mach = json.loads(m.read_text()).get("campaign", {}).get("machine", {}) if m.is_file() else {}
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(mach, dict) and mach.get("peak_flops_per_core"):
            return float(mach["peak_flops_per_core"]), f"{mach.get('peak_flops_from', '')} (recorded in {m.name})"
    return None


def _queued_ops(tables: list[Table]) -> bool:
    """Whether GPU GEMM / memory tables time ops in a queue (``--ops-per-timing`` N > 1: an op
    costs max(issue, kernel)) rather than alone (N = 1: launch latency + kernel); mixed tables are
    refused, since one profile cannot be both."""
    per = {t.path.name: int(t.meta.get("ops_per_timing") or 1) for t in tables
           if set(t.df["kind"]) & {"gemm", "memory"}}
    if len({n > 1 for n in per.values()}) > 1:
        raise MoesimError("the GPU tables mix ops timed alone and ops timed in a queue (ops_per_timing: "
                          + ", ".join(f"{f} {n}" for f, n in sorted(per.items()))
                          + "): the two price the per-op overhead differently; calibrate them separately")
    return bool(per) and min(per.values()) > 1


def calibrate(paths: Sequence[str | os.PathLike], name: str = "cpu-testbed", peak_flops: float | None = None,
              ranks: int | None = None, min_contended_s: float = 5e-3, description: str | None = None,
              topology: str | None = None, tbf_effects: bool = False, nic_efficiency: str = F.NIC_EFFICIENCY_DEFAULT) -> Calibration:
    """Fit a measured profile from microbenchmark tables (and single-process run tables for the
    framework overhead). ``topology``: the machines the measurements ran on, for tables without
    testbed metadata (hosts and ranks per host; a ``tc_rate_bits`` graph attribute for the rate).
    ``nic_efficiency``: which collective rows fit the shaped links' efficiency (``fit.fit_network``)."""
    files = expand_paths(paths)
    all_tables: list[Table] = [read_table(f) for f in files]
    tables = [t for t in all_tables if t.kind == "microbench"]
    runs = [t for t in all_tables if t.kind == "run"]
    for t in runs:
        if t.world_size != 1:
            raise InputFileError(t.path, f"a run table of {t.world_size} ranks: calibrate takes single-process "
                                         "run tables (the framework overhead); judge multi-rank runs with "
                                         "`moesim validate`")
    if topology:
        _apply_topology(tables, topology)
    notes = _load_notes(files)
    gemm = gemm_medians(tables)
    mem = memory_medians(tables)
    coll = collective_medians(tables)
    worlds = sorted({t.world_size for t in tables})
    target = int(ranks or max(worlds))
    cores = next((int(t.meta["cpu_count"]) for t in tables if t.meta.get("cpu_count")), os.cpu_count() or 1)
    peak_note = "given with --peak-flops"
    peak_given = peak_flops is not None  # a datasheet ceiling: the efficiency is fitted <= 1
    gpus = sorted({str(t.meta["gpu_name"]) for t in all_tables if t.meta.get("gpu_name")})
    if len(gpus) > 1:
        raise MoesimError(f"the tables were measured on different GPUs ({', '.join(gpus)}): calibrate them separately")
    if gpus and peak_flops is None:
        gemm_files = [t.path.name for t in tables if "gemm" in set(t.df["kind"])]
        raise MoesimError(f"the GEMM tables ({', '.join(gemm_files) or 'none'}) were measured on a GPU ({gpus[0]}), "
                          f"whose peak no table records: give its datasheet peak for the GEMMs' dtype with "
                          f"--peak-flops (FLOP/s, e.g. 989e12 for an H100/H200 SXM in bf16)")
    if peak_flops is None:
        rec = recorded_peak([t for t in tables if t.kind == "microbench"], files)
        if rec is not None:
            peak_flops, peak_note = rec
        else:
            peak_flops, peak_note = cpu_peak_flops_per_core()
            peak_note += " of the machine fitting now: the tables record no peak of their own"
    overlapped = _queued_ops(tables) if gpus else False
    residuals: dict = {}

    compute = contention = None
    g1 = gemm[gemm["world_size"] == 1]
    m1 = mem[mem["world_size"] == 1]
    if len(g1):
        compute = F.fit_compute(g1, m1, peak_flops, bounded=peak_given, overlapped=overlapped)
        contention = F.fit_contention(gemm, cores, target, min_contended_s) if target > 1 else None
    elif len(gemm):
        gt = gemm[gemm["world_size"] == target]
        mt = mem[mem["world_size"] == target]
        compute = F.fit_compute(gt, mt, peak_flops, bounded=peak_given, overlapped=overlapped)
    network = F.fit_network(coll, tbf_effects=tbf_effects, nic_efficiency=nic_efficiency) if len(coll) else None
    framework = None
    if runs:
        if compute is None:
            raise MoesimError("single-process run tables need GEMM microbenchmarks too (the framework fit "
                              "starts from the GEMM curve)")
        from moesim.config import load_config
        from moesim.validate.core import REAL_BACKEND_BUCKET_BYTES, measured_times
        fw_runs = []
        for t in runs:
            try:
                cfg = load_config(t.meta["config"])
            except MoesimError as exc:
                raise InputFileError(t.path, f"the config in '# meta' is not valid: {exc}") from None
            fw_runs.append((cfg, measured_times(t)[1]))
        framework = F.fit_framework(fw_runs, compute, REAL_BACKEND_BUCKET_BYTES)
    if compute is None and network is None:
        raise MoesimError("the measurement tables hold neither GEMM nor collective rows: nothing to fit")
    factor = contention.factor if contention else 1.0

    if compute:
        residuals.update({k: v for k, v in compute.residuals.items() if isinstance(v, dict)})
        if contention and contention.rows_used:
            # the contended GEMMs predicted with the shared-core profile
            shared = gemm[(gemm["world_size"] == target)]
            long = shared.merge(g1[["m", "n", "k", "seconds"]].rename(columns={"seconds": "alone"}), on=["m", "n", "k"])
            long = long[long["alone"] >= min_contended_s]
            if len(long):
                pred = compute.gemm_seconds(long["m"], long["n"], long["k"]) / factor
                residuals["gemm_shared"] = F.residual_summary(pred, long["seconds"])
    if framework:
        residuals.update(framework.residuals)
    if network:
        residuals.update(network.residuals)

    machine = machine_info()
    gpu_memory = min((float(t.meta["gpu_memory_bytes"]) for t in all_tables if t.meta.get("gpu_memory_bytes")),
                     default=None)      # bytes of one GPU (a rank's own), None for CPU tables
    mem_total = None if gpu_memory else _mem_total()
    sources = []
    for t in all_tables:
        n = notes.get(t.path.resolve(), {})
        sources.append({k: v for k, v in {
            "file": t.path.name, "sha256": t.sha256, "world_size": t.world_size,
            "testbed": ({k2: t.testbed[k2] for k2 in ("hosts", "ranks_per_host", "rate_bits")} if t.testbed else None),
            "created": t.meta.get("created"), "host": t.meta.get("host"), "rows": int(len(t.df)),
            "table": t.kind, "kinds": sorted(set(t.df["kind"])) if t.kind == "microbench" else None,
            "config": (f"{t.meta['config']['moe']['structure']} top-{t.meta['config']['moe']['top_k']}"
                       if t.kind == "run" else None),
            "loadavg": n.get("loadavg_before"),
        }.items() if v is not None})
    torch_versions = sorted({str(t.meta["torch_version"]) for t in all_tables if t.meta.get("torch_version")})
    prov = {
        "source": description or (f"moesim calibrate: fitted from real_backend.microbench GEMM and "
                                  f"moesim.calibrate.membench tables measured on one {gpus[0]}" if gpus else
                                  "moesim calibrate: fitted from real_backend microbenchmarks (GEMM, memory, "
                                  "All-to-All, all-reduce) on the on-one-machine testbed"),
        "date": now_iso(),
        "machine": {k: machine[k] for k in ("hostname", "cpu_model", "cores", "platform")},
        "measured_on": sorted({str(t.meta.get("host")) for t in all_tables if t.meta.get("host")}),
        "torch_version": torch_versions[0] if len(torch_versions) == 1 else torch_versions,
        "command": command_line(),
        "sources": sources,
        "note": (f"one rank of {target} processes sharing {cores} cores: peak, memory bandwidth and per-op "
                 f"overhead are the single-core fit scaled by the measured core share {factor:.3g} "
                 f"(nominal cores/ranks = {min(1.0, cores / target):.3g})") if not gpus else
                (f"one {gpus[0]} GPU per rank: GEMM efficiency curve, memory bandwidth and per-op overhead "
                 f"fitted on its CUDA-event timings, against the peak {peak_note}"
                 + ("; ops timed in a queue (issued back to back), so an op costs the larger of the per-op "
                    "overhead (its issue time) and its kernel time (device.op_overhead_overlaps)" if overlapped else
                    "; ops timed alone with the GPU idle, so the per-op overhead (launch latency) adds to "
                    "the kernel time")),
    }
    if gpus:
        prov["gpu"] = {"name": gpus[0], "memory_bytes": gpu_memory,
                       "cuda": sorted({str(t.meta["cuda"]) for t in all_tables if t.meta.get("cuda")})}
    device: dict = {}
    if compute:
        eff = compute.efficiency_max
        bw = compute.memory_bandwidth or compute.peak_flops / 4.0
        overhead = compute.op_overhead_s
        if framework:
            # what the real step's ops cost, per modelled op and byte (see fit.fit_framework)
            eff, overhead, bw = eff / framework.gemm_scale, framework.op_overhead_s, framework.memory_bandwidth
        dtype = str(g1["dtype"].mode().iloc[0]) if len(g1) and "dtype" in g1 else "fp32"
        peaks = {dtype: compute.peak_flops * factor}
        if dtype in ("bf16", "fp16"):
            peaks = {"bf16": peaks[dtype], "fp16": peaks[dtype]}
        device = {
            "peak_flops": peaks,
            "memory_bandwidth": bw * factor,
            "memory_bytes": gpu_memory or ((mem_total / max(1, target)) if mem_total else 0),
            "gemm": {"efficiency_max": min(1.0, eff), "half_size": compute.half_size},
            "memory_efficiency": 1.0,
            "op_overhead_s": overhead / factor,
        }
        if overlapped and not framework:   # the framework fit's per-op overhead adds to the work
            device["op_overhead_overlaps"] = True
    else:
        raise MoesimError("no GEMM measurements: a profile needs the device section (add a GEMM microbench table)")
    net: dict = {}
    cal: dict = {"ranks_per_machine": target, "cores": cores,
                 "per_core": {"peak_flops": compute.peak_flops, "peak_flops_from": peak_note,
                              "efficiency_max": compute.efficiency_max, "half_size": compute.half_size,
                              "memory_bandwidth": compute.memory_bandwidth, "op_overhead_s": compute.op_overhead_s,
                              **({"op_overhead_overlaps": True} if overlapped else {})}}
    if framework:
        cal["framework"] = {"gemm_scale": framework.gemm_scale, "op_overhead_s": framework.op_overhead_s,
                            "memory_bandwidth": framework.memory_bandwidth, "runs": len(runs),
                            "meaning": "single-process steps of the model: real GEMM phases are gemm_scale x the "
                                       "torch.mm curve; each modelled op costs op_overhead_s more (dispatch, "
                                       "autograd, element-wise kernels); memory-bound work moves bytes at "
                                       "memory_bandwidth per modelled byte"}
    if contention:
        cal["contention"] = {"core_share": contention.factor, "nominal_cores_per_rank": contention.nominal,
                             "gemm_rows_used": contention.rows_used, "min_seconds_alone": min_contended_s,
                             "detail": contention.detail}
    if network:
        nic = network.links.get("nic")
        net = {"latency_per_message_s": network.latency_per_message_s,
               "collective_overhead_s": network.collective_overhead_s}
        if nic and nic.efficiency is not None:
            net["link_efficiency"] = {"nic": nic.efficiency}
            cal["nic_efficiency_from"] = {
                **network.efficiency_from,
                "meaning": ("joint: the tbf efficiency fitted with the other network parameters on all collective "
                            "rows; one-way: then re-fitted alone on the shaped rows of at least 4 MiB that the "
                            "two-way penalty does not touch (rings of three or more ranks), the others held, so "
                            "that the All-to-Alls' two-way loss is left to links.nic.two_way_penalty")}
        # the stack and loopback links' rates are the kernel's TCP copies on the ranks' cores, measured with
        # every rank copying at once; the ranks of a step meet in an All-to-All and copy together the same
        # way (their compute, shared by the core pool or the core share, does not overlap it), so a step
        # uses the microbenchmark fit as it is
        cal["links"] = {k: v.to_dict() for k, v in network.links.items()}
        cal["links_note"] = ("stack and loopback max_bandwidth: the kernel's TCP copies with every rank copying "
                             "at once (as in a step's All-to-All); nic: tbf efficiency of the tc rate, an unshaped "
                             "veth is not a limit of its own")
        cal["alpha_beta"] = _alpha_beta(network)
    cal["residuals"] = residuals
    note = compute.residuals.get("note") if compute else None
    if isinstance(note, str):
        cal["fit_notes"] = [note]     # what the numbers alone do not say (e.g. an efficiency at its bound)
    profile = {"name": name, "status": "measured", "provenance": prov, "device": device}
    if net:
        profile["network"] = net
    profile["calibration"] = cal
    out = Calibration(profile, compute, contention, network, all_tables, residuals)
    out.framework = framework
    return out


def _apply_topology(tables: list, path: str) -> None:
    """Give tables without testbed metadata the layout of ``path`` (hosts, ranks per host, tc rate)."""
    from moesim.topology import load_topology
    topo = load_topology(path)
    hosts = topo.hosts
    rph = {len(topo.ranks_of_host(h)) for h in hosts}
    if len(rph) != 1:
        raise InputFileError(path, "calibration needs the same number of ranks on every host")
    rate = float(topo.graph.graph.get("tc_rate_bits") or 0.0)
    for t in tables:
        if not t.testbed:
            if t.world_size not in (1, topo.num_gpus):
                raise InputFileError(t.path, f"measured with {t.world_size} ranks but the topology {path} has "
                                             f"{topo.num_gpus} GPUs")
            if t.world_size > 1:
                t.meta["testbed"] = {"hosts": len(hosts), "ranks_per_host": rph.pop() if len(rph) == 1 else 1,
                                     "rate_bits": rate}
                rph = {t.meta["testbed"]["ranks_per_host"]}


def _alpha_beta(nf: F.NetworkFit) -> dict:
    """Human summary per link class: alpha = latency of one message, beta = effective bandwidth."""
    out = {}
    for cls, lp in nf.links.items():
        hops = 2 if cls == "nic" else 0
        out[cls] = {"alpha_s": nf.latency_per_message_s + hops * lp.latency_s,
                    "beta": ("max_bandwidth" if lp.efficiency is None
                             else "efficiency * tc_rate (unshaped: not limited)" if math.isinf(lp.max_bandwidth)
                             else "min(efficiency * tc_rate, max_bandwidth)"),
                    "beta_unshaped_bytes_per_s": None if math.isinf(lp.max_bandwidth) else lp.max_bandwidth}
        if lp.efficiency is not None:
            out[cls]["beta_at_100mbit_bytes_per_s"] = lp.bandwidth(100e6 / 8)
            out[cls]["beta_at_300mbit_bytes_per_s"] = lp.bandwidth(300e6 / 8)
    return out


def _mem_total() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def fit_tables_frame(c: Calibration) -> pd.DataFrame:
    """All fitted rows (compute and network) with measured and fitted seconds, for reports."""
    frames = []
    if c.compute is not None and c.compute.table is not None:
        frames.append(c.compute.table)
    if c.network is not None and c.network.table is not None:
        t = c.network.table
        frames.append(pd.DataFrame({"kind": t["kind"] + ":" + t["group"],
                                    "shape": [f"{int(h)}x{int(r)} {('%gMbit' % (b / 1e6)) if b else 'unshaped'} {int(s)}B"
                                              for h, r, b, s in zip(t["hosts"], t["ranks_per_host"], t["rate_bits"],
                                                                    t["size_bytes"])],
                                    "measured_s": t["seconds"], "fitted_s": t["fitted_s"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
