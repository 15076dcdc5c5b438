"""CPU a testbed rank spends per step, measured against what the model's compute ops need.

The scheduler probe (``real_backend.schedprobe``) records each rank's CPU time per step (all its
threads, user and system, from ``/proc/PID/task/*/schedstat``). The model's compute is the alone
work of a rank's ops in a step (priced seconds x the profile's alone factor, the CPU they take on
a core of their own). The difference is CPU the model does not book as compute: communication
(gloo's messages, the kernel's TCP copies, Python around them) and compute made slower by sharing
the machine. The engine books communication as link time that takes no core.

``python -m moesim.calibrate.cpuwork PROBE.json CAMPAIGN_DIR`` prints one row per probed
configuration that the campaign also measured (its profile, topologies and measured traffic).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from moesim.errors import InputFileError, MoesimError

PROG = "python -m moesim.calibrate.cpuwork"


def load_probe(path: str | Path) -> list[dict]:
    """The runs of a schedprobe JSON, checked for the fields used here."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"malformed JSON: {exc.msg} at line {exc.lineno}") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not runs:
        raise InputFileError(path, "expected a real_backend.schedprobe result with a non-empty 'runs' list")
    for i, r in enumerate(runs):
        for k in ("testbed", "rate", "structure", "top_k", "step_s", "compute_phases_s"):
            if k not in r:
                raise InputFileError(path, f"runs[{i}] has no '{k}'")
        cpu = (r.get("schedstat") or {}).get("cpu_s_per_step")
        if not isinstance(cpu, list) or not cpu or not all(isinstance(x, (int, float)) and x >= 0 for x in cpu):
            raise InputFileError(path, f"runs[{i}].schedstat.cpu_s_per_step must be a list of CPU seconds per rank")
    return runs


def compare(probe: str | Path, campaign: str | Path) -> list[dict]:
    """One row per probed configuration the campaign measured: probe step, compute phases and CPU
    per rank-step (mean over ranks), the model's alone compute work per rank-step, and the
    difference (seconds). A probe run ``4x1``/``400mbit``/``cdac``/top-2 is the campaign's
    configuration ``4x1-400mbit-cdac-k2`` (its committed runs, :func:`~moesim.calibrate.campaign.committed_runs`)."""
    from moesim.calibrate.configsim import CampaignSimulator
    runs = load_probe(probe)
    sim = CampaignSimulator(campaign)
    rows = []
    for r in runs:
        res = sim.simulate(f"{r['testbed']}-{r['rate']}-{r['structure']}-k{int(r['top_k'])}")
        if res is None:
            continue
        factor = res.cpu_pool[1] if res.cpu_pool else 1.0
        alone = float(np.mean([np.sum(d) for d in res.classes.durations])) * factor
        cpu = float(np.mean(r["schedstat"]["cpu_s_per_step"]))
        rows.append({"testbed": r["testbed"], "rate": r["rate"], "structure": r["structure"], "top_k": int(r["top_k"]),
                     "probe_step_s": float(r["step_s"]), "probe_compute_phases_s": float(r["compute_phases_s"]),
                     "cpu_per_rank_step_s": cpu, "model_alone_work_s": alone, "outside_model_s": cpu - alone})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", help="real_backend.schedprobe JSON")
    ap.add_argument("campaign", help="campaign directory (validation/ with manifest.json)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (seconds)")
    args = ap.parse_args(argv)
    try:
        rows = compare(args.probe, args.campaign)
    except MoesimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no probed configuration is in the campaign")
        return 0
    print(f"{'configuration':26s} {'step':>7s} {'compute':>8s} {'CPU':>7s} {'model':>7s} {'outside':>8s}  "
          "(ms per rank-step; CPU: the probe's, all threads; model: alone work of the compute ops)")
    for r in rows:
        label = f"{r['testbed']} {r['rate']} {r['structure']} k{r['top_k']}"
        cells = [1e3 * r[k] for k in ("probe_step_s", "probe_compute_phases_s", "cpu_per_rank_step_s",
                                      "model_alone_work_s", "outside_model_s")]
        print(f"{label:26s} {cells[0]:7.0f} {cells[1]:8.0f} {cells[2]:7.0f} {cells[3]:7.0f} {cells[4]:+8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
