"""How much of a core a testbed rank gets while it computes: the scheduler's view of a step.

    sudo python -m real_backend.schedprobe --out calibration/avx2/schedprobe.json
    sudo python -m real_backend.schedprobe --configs 4x1-150mbit-k8 --steps 20 --out probe.json
    python -m real_backend.schedprobe --show probe.json          # the per-thread table

On the on-one-machine testbed R ranks share C < R cores, so an op's time depends on how many other
ranks want a core at that moment. For each configuration (``HxR-RATE-kK``: testbed shape, tc rate,
top-k) this runs a CDAC step loop and its DCCA twin (the validation campaign's model,
``moesim.calibrate.campaign``) on ``real_backend.testbed`` and watches the rank processes from
outside, over the measured steps only (the run table's ``measured_window_unix``):

- every ``--period`` seconds, each rank's scheduler state (``/proc/PID/stat``: R = on a core or
  waiting for one): the fraction of time with n ranks runnable, each rank's runnable time split by
  n, and the share of a core a runnable rank would get if the cores were shared fairly
  (``min(1, C/n)``, averaged over its runnable samples);
- at the window's ends, each rank's CPU time and run-queue wait (``/proc/PID/task/*/schedstat``,
  nanoseconds, summed over the rank's threads): per step and rank, and the share the kernel actually
  gave, ``cpu / (cpu + run-queue wait)``;
- at the same ends, per rank and step for its main thread and its other threads apart (gloo's
  TCP event loop ``gloo_tcp_loop`` and ProcessGroupGloo's workers ``pt_gloo_runloop``, which run the
  collectives while the main thread blocks in them, and real_backend's watchdog, which wakes every
  0.5-5 s): how often they were put on a core, their voluntary (blocking)
  and involuntary (preempted) context switches (``/proc/PID/task/*/status``), and the mean run-queue
  wait each time before getting a core (``threads`` in the JSON);
- the machine's idle, system, softirq and steal fractions (``/proc/stat``).

The result (one JSON, written atomically) is data for the model, not a model: it tells whether one
core share for every op (what the calibrated profile assumes) holds for a given structure.
Needs root (network namespaces), like the testbed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from moesim.calibrate.campaign import failure_tail, model_args, proc_stat_cpu, repo_root, wait_quiet
from moesim.errors import MoesimError
from moesim.io import write_json_atomic

PROG = "real_backend.schedprobe"
DEFAULT_CONFIGS = ("4x1-150mbit-k8", "4x1-400mbit-k8", "4x1-none-k8", "2x2-150mbit-k8", "2x2-400mbit-k8",
                   "4x1-150mbit-k2")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_CONFIG_RE = re.compile(r"^(\d+)x(\d+)-(none|\d+(?:\.\d+)?[kmg]?bit)-k(\d+)$")


class ProbeError(MoesimError):
    """The probe cannot run or its run gave no usable window."""


# ---- pure parts (tested without a testbed) ----------------------------------------------------------
def parse_config(text: str) -> tuple[int, int, str, int]:
    """``'4x1-150mbit-k8'`` -> (hosts, ranks per host, rate, top-k)."""
    m = _CONFIG_RE.match(text.strip())
    if not m:
        raise ProbeError(f"configuration {text!r}: expected HOSTSxRANKS-RATE-kTOPK, e.g. 4x1-150mbit-k8 or 2x2-none-k4")
    hosts, rph, rate, k = int(m[1]), int(m[2]), m[3], int(m[4])
    if hosts < 2 or rph < 1 or k < 1:
        raise ProbeError(f"configuration {text!r}: needs at least 2 hosts, 1 rank per host and top-k >= 1")
    return hosts, rph, rate, k


def stat_state(stat_line: bytes) -> bytes:
    """The one-letter scheduler state of a ``/proc/PID/stat`` line (the field after the command
    name, which may itself hold spaces and parentheses)."""
    i = stat_line.rindex(b")")
    return stat_line[i + 2:i + 3]


def runnable_summary(runnable: np.ndarray, cores: int) -> dict:
    """Summary of scheduler samples. ``runnable``: (samples, ranks) booleans, True where a rank was
    running or waiting for a core. Fractions: ``time_by_runnable[n]`` of the samples had n ranks
    runnable; ``rank_runnable_by_n[n]`` of all ranks' runnable samples had n runnable (n >= 1);
    ``fair_core_share``: mean over runnable samples of ``min(1, cores / n)``."""
    a = np.asarray(runnable, dtype=bool)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ProbeError("no scheduler samples inside the measured window")
    if cores < 1:
        raise ProbeError(f"cores must be >= 1, got {cores}")
    ranks = a.shape[1]
    n = a.sum(axis=1)
    per_rank_samples = a.sum()
    time_by = [float(np.mean(n == i)) for i in range(ranks + 1)]
    by_n = [float(a[n == i].sum() / per_rank_samples) if per_rank_samples else 0.0 for i in range(1, ranks + 1)]
    share = np.minimum(1.0, cores / np.maximum(n, 1))
    fair = float((a * share[:, None]).sum() / per_rank_samples) if per_rank_samples else float("nan")
    return {"samples": int(a.shape[0]), "time_by_runnable": time_by, "rank_runnable_by_n": [0.0] + by_n,
            "runnable_fraction": float(a.mean()), "fair_core_share": fair}


def schedstat_summary(cpu_ns: np.ndarray, wait_ns: np.ndarray, seconds: float, step_s: float) -> dict:
    """Per rank CPU time and run-queue wait over a window of ``seconds``, scaled to one step of
    ``step_s`` seconds; ``core_share`` = cpu / (cpu + wait) over all ranks."""
    cpu = np.asarray(cpu_ns, dtype=float) / 1e9
    wait = np.asarray(wait_ns, dtype=float) / 1e9
    if seconds <= 0 or step_s <= 0:
        raise ProbeError(f"empty window ({seconds:.3g} s) or step ({step_s:.3g} s)")
    steps = seconds / step_s
    total = cpu.sum() + wait.sum()
    return {"window_s": float(seconds), "steps_in_window": float(steps),
            "cpu_s_per_step": (cpu / steps).tolist(), "runqueue_wait_s_per_step": (wait / steps).tolist(),
            "core_share": float(cpu.sum() / total) if total > 0 else float("nan")}


TASK_COUNTERS = ("cpu_ns", "runqueue_wait_ns", "timeslices", "voluntary_switches", "involuntary_switches")


def task_deltas(before: dict[int, list[int]], after: dict[int, list[int]], pid: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A rank's ``TASK_COUNTERS`` advanced over a window, from two ``_task_counters`` readings: (its main
    thread's, its other threads' summed, how many other threads). A thread born in the window counts
    from zero; one that ended in it is not seen at the end and is left out."""
    if pid not in after:
        raise ProbeError(f"rank process {pid}: its main thread was not seen at the window's end")
    main = np.zeros(len(TASK_COUNTERS))
    other = np.zeros(len(TASK_COUNTERS))
    for tid, b in after.items():
        a = before.get(tid, [0] * len(TASK_COUNTERS))
        d = np.array(b, dtype=float) - np.array(a, dtype=float)
        if (d < 0).any():
            raise ProbeError(f"rank process {pid}, thread {tid}: a scheduler counter went backwards")
        if tid == pid:
            main = d
        else:
            other += d
    return main, other, len(after) - 1


def switch_summary(main: np.ndarray, other: np.ndarray, steps: float) -> dict:
    """Per rank and step, how often its threads got a core and left it: ``main`` and ``other`` are
    (ranks, ``TASK_COUNTERS``) arrays over a window of ``steps`` steps. ``wait_per_timeslice_s`` is
    the mean run-queue wait before each time a thread was put on a core (seconds)."""
    main = np.atleast_2d(np.asarray(main, dtype=float))
    other = np.atleast_2d(np.asarray(other, dtype=float))
    if steps <= 0:
        raise ProbeError(f"no steps in the window ({steps:.3g})")
    out = {}
    for name, d in (("main_thread", main), ("other_threads", other)):
        slices = d[:, 2]
        out[name] = {
            "cpu_s_per_step": (d[:, 0] / 1e9 / steps).tolist(),
            "runqueue_wait_s_per_step": (d[:, 1] / 1e9 / steps).tolist(),
            "timeslices_per_step": (slices / steps).tolist(),
            "voluntary_switches_per_step": (d[:, 3] / steps).tolist(),
            "involuntary_switches_per_step": (d[:, 4] / steps).tolist(),
            "wait_per_timeslice_s": float(d[:, 1].sum() / 1e9 / slices.sum()) if slices.sum() > 0 else float("nan"),
        }
    return out


def stat_fractions(before: list[int], after: list[int]) -> dict:
    """Fractions of all CPU time between two ``/proc/stat`` ``cpu`` lines."""
    d = [b - a for a, b in zip(before, after)]
    total = sum(d)
    if total <= 0:
        raise ProbeError("/proc/stat did not advance over the window")
    return {name: d[i] / total for i, name in enumerate(STAT_FIELDS) if i < len(d)}


def comm_cpu_per_block(runs: list[dict]) -> np.ndarray:
    """Per run, the CPU (seconds) a rank's other threads (gloo's, which run the collectives) spend per
    block of its main thread (one per collective call it waits in): mean over ranks of their CPU per
    step over the mean blocks per step. The gradient all-reduce is one of those calls."""
    out = []
    for r in runs:
        t = r["threads"]
        blocks = float(np.mean(t["main_thread"]["voluntary_switches_per_step"]))
        out.append(float(np.mean(t["other_threads"]["cpu_s_per_step"])) / blocks if blocks > 0 else float("nan"))
    return np.array(out)


def thread_table(runs: list[dict], source: str = "probe") -> str:
    """A markdown table of the probe's per-thread numbers (``threads``), one row per run: per rank-step
    (mean over ranks), the main thread's CPU, run-queue wait, blocking (voluntary) and preempted
    (involuntary) switches, and the other threads' CPU, run-queue wait, times put on a core and wait
    per time; the last column is the other threads' run-queue wait per main-thread block, in ms."""
    head = ("| testbed | top-k | structure | step | main: CPU | main: run-queue wait | main: blocks | main: preempted "
            "| others: CPU | others: run-queue wait | others: on a core | others: wait each | others' wait per block |\n"
            + "|---" * 13 + "|")
    rows = [head]
    for i, r in enumerate(runs):
        t = r.get("threads")
        if not isinstance(t, dict) or "main_thread" not in t or "other_threads" not in t:
            raise ProbeError(f"{source}: runs[{i}] has no per-thread numbers ('threads'): it was recorded before "
                             f"the probe read them; run the probe again")
        m, o = t["main_thread"], t["other_threads"]
        mean = lambda d, k: float(np.mean(d[k]))              # noqa: E731
        blocks = mean(m, "voluntary_switches_per_step")
        per_block = 1e3 * mean(o, "runqueue_wait_s_per_step") / blocks if blocks > 0 else float("nan")
        rows.append(f"| {r['testbed']} {r['rate']} | {r['top_k']} | {r['structure'].upper()} | {1e3 * r['step_s']:.0f} ms "
                    f"| {1e3 * mean(m, 'cpu_s_per_step'):.0f} ms | {1e3 * mean(m, 'runqueue_wait_s_per_step'):.0f} ms "
                    f"| {blocks:.1f} | {mean(m, 'involuntary_switches_per_step'):.0f} "
                    f"| {1e3 * mean(o, 'cpu_s_per_step'):.0f} ms | {1e3 * mean(o, 'runqueue_wait_s_per_step'):.0f} ms "
                    f"| {mean(o, 'timeslices_per_step'):.0f} | {1e3 * o['wait_per_timeslice_s']:.2f} ms "
                    f"| {per_block:.1f} ms |")
    per_block = 1e3 * comm_cpu_per_block(runs)
    rows.append(f"\ngloo's threads' CPU per main-thread block: median {np.nanmedian(per_block):.2f} ms "
                f"(range {np.nanmin(per_block):.2f}-{np.nanmax(per_block):.2f} ms over {len(runs)} runs)")
    return "\n".join(rows)


# ---- sampling ------------------------------------------------------------------------------------------
def _rank_pids() -> list[int]:
    """PIDs of real_backend.run worker processes (not their torchrun launchers)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"real_backend.run" in argv and not any(b"torch.distributed" in a or b"torchrun" in a for a in argv):
            out.append(int(d.name))
    return sorted(out)


def _task_counters(pid: int) -> dict[int, list[int]]:
    """Per thread of ``pid`` (by TID): its ``TASK_COUNTERS`` from ``/proc/PID/task/TID/schedstat`` (CPU ns,
    run-queue wait ns, times put on a core) and ``.../status`` (voluntary and involuntary context
    switches). A thread that exits while it is read is left out."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            f = (t / "schedstat").read_text().split()
            status = (t / "status").read_text()
        except OSError:
            continue
        switches = dict(re.findall(r"^(voluntary|nonvoluntary)_ctxt_switches:\s*(\d+)", status, re.M))
        out[int(t.name)] = [int(f[0]), int(f[1]), int(f[2]),
                            int(switches.get("voluntary", 0)), int(switches.get("nonvoluntary", 0))]
    return out


class Sampler:
    """Watch ``expected`` rank processes until ``proc`` exits."""

    def __init__(self, proc: subprocess.Popen, expected: int, period_s: float, appear_timeout_s: float = 120.0):
        self.proc, self.expected, self.period = proc, expected, period_s
        self.appear_timeout = appear_timeout_s

    def run(self) -> dict:
        t0 = time.monotonic()
        pids: list[int] = []
        while len(pids) < self.expected:
            if self.proc.poll() is not None:
                raise ProbeError(f"the testbed exited (code {self.proc.returncode}) before its {self.expected} "
                                 f"ranks started")
            if time.monotonic() - t0 > self.appear_timeout:
                raise ProbeError(f"only {len(pids)} of {self.expected} rank processes appeared in "
                                 f"{self.appear_timeout:.0f} s")
            time.sleep(0.1)
            pids = _rank_pids()
        pids = pids[:self.expected]
        files = [open(f"/proc/{p}/stat", "rb", buffering=0) for p in pids]
        times, states, coarse = [], [], []
        next_coarse = 0.0
        cpu0, wall0 = time.process_time(), time.monotonic()
        try:
            while self.proc.poll() is None:
                now = time.time()
                row = []
                try:
                    for f in files:
                        f.seek(0)
                        row.append(stat_state(f.read(512)) == b"R")
                except (OSError, ValueError):
                    break  # a rank exited: the run is ending
                times.append(now)
                states.append(row)
                if now >= next_coarse:
                    try:
                        coarse.append((now, [_task_counters(p) for p in pids], proc_stat_cpu()))
                    except (OSError, ValueError, IndexError):
                        break
                    next_coarse = now + 0.2
                time.sleep(self.period)
        finally:
            for f in files:
                f.close()
            sampler_cpu = (time.process_time() - cpu0) / max(1e-9, time.monotonic() - wall0)
        return {"times": np.array(times), "states": np.array(states, dtype=bool), "pids": pids,
                "coarse": coarse, "sampler_cpu_fraction": sampler_cpu}


def summarise(samples: dict, window: tuple[float, float], step_s: float, cores: int) -> dict:
    """The probe's numbers for one run, restricted to the measured ``window`` (Unix s)."""
    w0, w1 = window
    t = samples["times"]
    inside = (t >= w0) & (t <= w1)
    out = runnable_summary(samples["states"][inside], cores)
    span = float(t[inside][-1] - t[inside][0]) if inside.sum() > 1 else 0.0
    out["period_s"] = span / max(1, int(inside.sum()) - 1)
    coarse = [c for c in samples["coarse"] if w0 <= c[0] <= w1]
    if len(coarse) < 2:
        raise ProbeError("the measured window is too short for the schedstat samples (run more --steps)")
    (ta, sa, pa), (tb, sb, pb) = coarse[0], coarse[-1]
    deltas = [task_deltas(a, b, pid) for pid, a, b in zip(samples["pids"], sa, sb)]
    main = np.array([d[0] for d in deltas])
    other = np.array([d[1] for d in deltas])
    total = main + other
    out["schedstat"] = schedstat_summary(total[:, 0], total[:, 1], tb - ta, step_s)
    out["threads"] = switch_summary(main, other, out["schedstat"]["steps_in_window"])
    out["threads"]["other_thread_count"] = [d[2] for d in deltas]
    out["machine"] = stat_fractions(pa, pb)
    out["sampler_cpu_fraction"] = float(samples["sampler_cpu_fraction"])   # of one core, the probe's own cost
    return out


# ---- driver ----------------------------------------------------------------------------------------------
def _run_one(hosts: int, rph: int, rate: str, structure: str, top_k: int, steps: int, period: float,
             workdir: Path) -> dict:
    from real_backend.results import read_table
    out = workdir / f"{hosts}x{rph}-{rate}-{structure}-k{top_k}.csv"
    cmd = [sys.executable, "-m", "real_backend.testbed", "--hosts", str(hosts), "--ranks-per-host", str(rph),
           "--rate", rate, "--deadline", "600", "--", "run",
           *model_args(structure, top_k, [f"parallel.ep={hosts * rph}"]),
           "--steps", str(steps), "--warmup", "3", "--out", str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=repo_root(), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            samples = Sampler(proc, hosts * rph, period).run()
            proc.wait(timeout=660)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        if proc.returncode != 0 or not out.is_file():
            log.seek(0)
            cause = failure_tail(log.read().decode(errors="replace"))
            raise TestbedRunFailed(f"{out.name}: the testbed run failed (exit {proc.returncode}): {cause}")
    df, meta = read_table(out)
    window = meta.get("measured_window_unix")
    if not window or None in window:
        raise ProbeError(f"{out.name}: the run table has no measured_window_unix (real_backend.run too old?)")
    step = df[df["phase"] == "step"].groupby("step")["seconds"].median()
    comp = df[~df["phase"].isin(["step", "dispatch", "combine", "grad_allreduce"])]
    compute_s = float(comp.groupby(["step", "rank"])["seconds"].sum().median())
    res = summarise(samples, (float(window[0]), float(window[1])), float(step.median()), os.cpu_count() or 1)
    res.update({"testbed": f"{hosts}x{rph}", "rate": rate, "structure": structure, "top_k": top_k,
                "step_s": float(step.median()), "compute_phases_s": compute_s,
                "command": " ".join(cmd[1:]).replace(str(out), "RUN.csv")})
    return res


class TestbedRunFailed(ProbeError):
    """A testbed launch failed (its hosts' torchrun exited non-zero); another try may succeed."""


def with_tries(launch, tries: int, log) -> dict:
    """``launch()`` up to ``tries`` times while it raises :class:`TestbedRunFailed` (a testbed run can fail
    for reasons outside the probe, as ``moesim.calibrate.campaign`` retries its runs too); each failed
    try is logged with its cause, and the last one is raised."""
    for attempt in range(1, tries + 1):
        try:
            return launch()
        except TestbedRunFailed as exc:
            if attempt == tries:
                raise TestbedRunFailed(f"{exc} (try {attempt} of {tries})") from None
            log(f"{PROG}: try {attempt} of {tries} failed: {exc}")
    raise ValueError(f"tries must be >= 1, got {tries}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help="comma list of HOSTSxRANKS-RATE-kTOPK (default: %(default)s)")
    ap.add_argument("--structures", default="cdac,dcca", help="comma list (default: cdac,dcca)")
    ap.add_argument("--steps", type=int, default=25, help="measured steps per run (default 25)")
    ap.add_argument("--period", type=float, default=2e-3, help="seconds between scheduler samples (default 0.002)")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="wait until the 1-minute load is below this before the first run (default 1.0)")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (tests)")
    ap.add_argument("--tries", type=int, default=2,
                    help="launches of a testbed run before its failure stops the probe (default 2)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", help="output JSON (written atomically)")
    what.add_argument("--show", metavar="PROBE.json",
                      help="print the per-thread table of a probe result instead of running the probe")
    args = ap.parse_args(argv)
    if args.show:
        from moesim.calibrate.cpuwork import load_probe
        try:
            print(thread_table(load_probe(args.show), args.show))
        except MoesimError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        configs = [parse_config(c) for c in args.configs.split(",") if c.strip()]
        structures = [s.strip() for s in args.structures.split(",") if s.strip()]
        bad = [s for s in structures if s not in ("cdac", "dcca")]
        if bad or not structures or not configs:
            raise ProbeError(f"--structures must name cdac and/or dcca (got {args.structures!r}) and "
                             f"--configs at least one configuration")
        if args.steps < 5 or not 0 < args.period <= 0.1 or args.tries < 1:
            raise ProbeError("--steps must be >= 5, --period in (0, 0.1] s and --tries >= 1")
        if os.geteuid() != 0:
            raise ProbeError("the testbed needs root (network namespaces and tc)")
        from moesim.calibrate.profile_io import machine_info
        runs = []
        with tempfile.TemporaryDirectory(prefix="schedprobe-") as tmp:
            for hosts, rph, rate, k in configs:
                for s in structures:
                    if not args.no_wait:
                        wait_quiet(args.max_load, 600, lambda m: print(m, file=sys.stderr))
                    r = with_tries(lambda: _run_one(hosts, rph, rate, s, k, args.steps, args.period, Path(tmp)),
                                   args.tries, lambda m: print(m, file=sys.stderr))
                    runs.append(r)
                    print(f"{PROG}: {r['testbed']} {rate} {s} k{k}: step {1e3 * r['step_s']:.0f} ms, "
                          f"core share {r['schedstat']['core_share']:.2f} (fair {r['fair_core_share']:.2f}), "
                          f"runnable alone {100 * r['rank_runnable_by_n'][1]:.0f} %, all "
                          f"{100 * r['rank_runnable_by_n'][-1]:.0f} %; per rank-step, main thread "
                          f"{np.mean(r['threads']['main_thread']['voluntary_switches_per_step']):.1f} blocks, "
                          f"other threads {np.mean(r['threads']['other_threads']['timeslices_per_step']):.0f} "
                          f"times on a core after "
                          f"{1e3 * r['threads']['other_threads']['wait_per_timeslice_s']:.2f} ms each in the "
                          f"run queue", file=sys.stderr)
        write_json_atomic(args.out, {
            "kind": "schedprobe", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": f"python -m {PROG} " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_info(), "cores": os.cpu_count(), "steps": args.steps, "runs": runs})
    except MoesimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
