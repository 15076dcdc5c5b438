"""The calibration and validation campaign on the on-one-machine testbed, as one command:

    sudo python -m moesim.calibrate.campaign --out calibration/

It needs root, iproute2 (ip, tc) and torch, and takes about an hour on 2 cores (three rounds of
validation runs). Steps:

1. measurements (``<out>/measurements/``): GEMMs and memory ops on one process, GEMMs on 4
   processes at once (the core share), single-process training steps of the campaign model
   (framework overhead), All-to-All and all-reduce microbenchmarks on every testbed (2 hosts x 2
   ranks and 4 hosts x 1 rank at each rate); ``manifest.json`` records commands and load;
2. validation runs (``<out>/validation/``): the campaign model on every testbed, CDAC and DCCA,
   top-k 2, 4 and 8, with each run's topology, in ``--repeats`` whole rounds (``<config>-r<round>``;
   one round alone runs as ``<config>``), so that each configuration is judged on the median of
   its runs; the runs whose top-k is in ``--fit-top-k`` are the
   fit configurations (they calibrate the receiver wait and the two-way goodput penalty, see
   ``moesim.calibrate.insitu``),
   the others are held out;
3. ``moesim calibrate`` -> ``<out>/<name>.yaml``; the in-situ fit on the fit runs (with shared
   cores, using the All-to-All release spread of the ``--patterns`` tables); the manifest
   ``<out>/validation/manifest.json`` naming the profile, topologies and roles;
4. ``moesim validate <out>/validation`` prints the result.

Before every measurement it waits until the machine is quiet (1-minute load below ``--max-load``
and no other torchrun / pytest processes), because other jobs on a 2-core machine distort every
number; the load before each measurement is recorded. ``--only calibrate`` re-fits from the
committed tables without measuring anything. Each stage records its finished runs in a progress
ledger (``<stage>/progress.json``, :mod:`moesim.calibrate.ledger`); ``--resume`` continues an
interrupted campaign from it, on the same machine with the same options and measuring code.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from moesim.calibrate.fit import NIC_EFFICIENCY_DEFAULT, NIC_EFFICIENCY_FROM
from moesim.calibrate.ledger import Ledger, code_version, design_of
from moesim.calibrate.profile_io import machine_info, now_iso

PROG = "moesim.calibrate.campaign"
#: the All-to-All release probes the in-situ fit's shared-core model takes its spread from
DEFAULT_PATTERNS = "calibration/patterns/release-*.csv"
TWO_WAY_FROM = ("insitu", "sizesweep", "trains")
# moesim.calibrate.twoway's defaults (pandas-free here)
TWO_WAY_PATTERNS_DEFAULT = {"sizesweep": "calibration/patterns/sizesweep-*.csv",
                            "trains": "calibration/patterns/train-*.csv"}
MODEL = "real_backend/configs/small-gpt.yaml"
#: the campaign model: small-gpt sized so that one training step takes 0.1-2 s on 4 ranks / 2 cores
MODEL_SETS = ["moe.experts=16", "model.vocab=2048", "model.seq_len=64", "run.global_batch_tokens=768",
              "run.batch_size=8"]
SHAPES = ((2, 2), (4, 1))
RATES = ("150mbit", "400mbit", "none")
STRUCTURES = ("cdac", "dcca")
TOP_KS = (2, 4, 8)
GEMM_CONTENDED = ["1024,1024,1024", "2048,512,512", "1024,512,1024", "768,768,768"]
NET_SIZES = "16KiB,64KiB,256KiB,1MiB,4MiB"
TARGETS = {"mape": 0.10, "speedup_error": 0.10, "goal_mape": 0.05}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return [0.0, 0.0, 0.0]


def busy_processes() -> list[str]:
    """Other torchrun / pytest / real_backend processes (not ours) that would share the cores."""
    me = os.getpid()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (d / "stat").read_text().split()
        except OSError:
            continue
        if any(k in cmd for k in ("torch.distributed.run", "torchrun", "pytest", "real_backend.")) and stat[2] in "RD":
            out.append(f"{d.name}: {cmd[:100]}")
    return out


def proc_stat_cpu() -> list[int]:
    """The machine's ``cpu`` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq,
    steal, ... (clock ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def cpu_busy(window_s: float = 3.0) -> float:
    """Fraction of all cores busy over the next ``window_s`` seconds (from /proc/stat)."""
    def sample():
        f = proc_stat_cpu()
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f), idle
    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


_STARTED = {"quiet": False}


def failure_tail(output: str, n: int = 3) -> str:
    """What a failed run's output says of the cause, on one line: from the testbed's "host H failed
    first; its last lines:" line on when there is one (that host's own last lines), else the last
    ``n`` lines."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    mark = max((k for k, ln in enumerate(lines) if "real_backend.testbed: host" in ln and "; its last lines:" in ln),
               default=None)
    return " | ".join(lines[mark:] if mark is not None else lines[-n:])


def wait_quiet(max_load: float, timeout_s: float, log, max_busy: float = 0.15) -> list[float]:
    """Wait until nothing else runs: before the first measurement the 1-minute load must be below
    ``max_load``; between measurements (when our own previous run still lifts the load average)
    the cores must be idle (< ``max_busy`` busy over 3 s) and no other torchrun / pytest runs.
    Returns [load1, load5, load15, busy fraction]."""
    t0 = time.monotonic()
    while True:
        busy_procs = busy_processes()
        util = cpu_busy()
        la = loadavg()
        first_ok = _STARTED["quiet"] or la[0] < max_load
        if first_ok and util < max_busy and not busy_procs:
            _STARTED["quiet"] = True
            return la + [round(util, 3)]
        if time.monotonic() - t0 > timeout_s:
            raise SystemExit(f"{PROG}: the machine stayed busy for {timeout_s:.0f} s (load {la[0]:.2f}, cores "
                             f"{100 * util:.0f}% busy, other jobs: {busy_procs[:3]}); measurements taken now would "
                             "be distorted, so the campaign stops (re-run it when the machine is quiet)")
        time.sleep(2)


class Runner:
    """Runs a stage's measurements one at a time on a quiet machine, recording each in ``ledger``
    (a :class:`~moesim.calibrate.ledger.Ledger`; a run it already holds is kept, not repeated)."""

    def __init__(self, args, log, ledger: Ledger | None = None):
        self.args, self.log = args, log
        self.py = sys.executable
        self.records: list[dict] = []
        self.ledger = ledger

    def run(self, cmd: list[str], out: Path, extra_env: dict | None = None, tries: int = 3,
            also: tuple[Path, ...] = ()) -> dict:
        """Run ``cmd`` until it writes ``out`` (and the tables ``also``, e.g. a paired run's second;
        with their topology files on the testbed); the record is filed under each of them."""
        outs = (out, *also)
        topologies = [o.with_name(o.stem + ".topology.json") for o in outs]
        kept = [self.ledger.get(o.name) for o in outs] if self.ledger else [None]
        if all(k is not None for k in kept) and (all(t.is_file() for t in topologies)
                                                 or "real_backend.testbed" not in cmd):
            self.records.append(kept[0])
            self.log(f"  {', '.join(o.name for o in outs)}: kept (finished {kept[0].get('finished', '?')})")
            return kept[0]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra_env or {}))
        for attempt in range(1, tries + 1):
            la = wait_quiet(self.args.max_load, self.args.wait_timeout, self.log)
            t0 = time.monotonic()
            res = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True)
            wall = time.monotonic() - t0
            if res.returncode == 0 and all(o.is_file() for o in outs):
                rec = {"file": out.name, "command": " ".join(shlex.quote(c) for c in cmd), "loadavg_before": la,
                       "loadavg_after": loadavg(), "wall_s": round(wall, 1), "attempts": attempt, "finished": now_iso()}
                if also:
                    rec["also"] = [o.name for o in also]
                self.records.append(rec)
                if self.ledger:
                    for o in outs:
                        self.ledger.add(o.name, rec)
                self.log(f"  {', '.join(o.name for o in outs)}: {wall:.0f} s (load before {la[0]:.2f})")
                return rec
            self.log(f"  {out.name}: attempt {attempt} failed (exit {res.returncode}): "
                     f"{failure_tail(res.stderr or res.stdout)}")
            for p in (*outs, *topologies):
                if p.exists():
                    p.unlink()
            time.sleep(3)
        raise SystemExit(f"{PROG}: {out.name} failed {tries} times; see the messages above")

    def testbed(self, hosts: int, rph: int, rate: str, module: str, args: list[str], out: Path,
                paired_out: Path | None = None) -> dict:
        paired = ["--paired-out", str(paired_out)] if paired_out is not None else []
        cmd = [self.py, "-m", "real_backend.testbed", "--hosts", str(hosts), "--ranks-per-host", str(rph),
               "--rate", rate, "--deadline", "600", "--", module, *args, "--out", str(out), *paired, "--quiet"]
        return self.run(cmd, out, also=(paired_out,) if paired_out is not None else ())


def model_args(structure: str, top_k: int, extra: list[str] = ()) -> list[str]:
    out = ["--model", MODEL]
    for s in [*MODEL_SETS, f"moe.structure={structure}", f"moe.top_k={top_k}", *extra]:
        out += ["--set", s]
    return out


def stage_ledger(args, log, directory: Path, manifest: str) -> Ledger:
    """The progress ledger of one stage directory (whose finished stage writes ``manifest``), for
    this campaign's design (``--resume``)."""
    extra = {"reps": getattr(args, "reps", None), "rank_tokens": getattr(args, "rank_tokens", None),
             "code": code_version(repo_root())}
    return Ledger(directory, design_of(campaign_info(args), extra), bool(getattr(args, "resume", False)), log,
                  manifest)


def measure(args, log, mdir: Path) -> None:
    mdir.mkdir(parents=True, exist_ok=True)
    ledger = stage_ledger(args, log, mdir, "manifest.json")
    if ledger.complete:
        log(f"measurements: complete in {mdir}, kept")
        return
    r = Runner(args, log, ledger)
    py = sys.executable
    reps = ["--reps", str(args.reps), "--warmup", "2"]
    log("measurements: compute")
    gemm_model = ["--model", MODEL, *sum((["--set", s] for s in [*MODEL_SETS, "parallel.ep=1",
                                                                    f"run.global_batch_tokens={args.rank_tokens}"]), [])]
    r.run([py, "-m", "real_backend.microbench", "--kinds", "gemm", "--threads", "1", *gemm_model,
           *sum((["--gemm", g] for g in GEMM_CONTENDED), []), *reps, "--out", str(mdir / "gemm-w1.csv"), "--quiet"],
          mdir / "gemm-w1.csv")
    r.run([py, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port", "29611", "-m",
           "real_backend.microbench", "--kinds", "gemm", "--threads", "1",
           *sum((["--gemm", g] for g in GEMM_CONTENDED), []), *reps, "--out", str(mdir / "gemm-w4.csv"), "--quiet"],
          mdir / "gemm-w4.csv")
    r.run([py, "-m", "moesim.calibrate.membench", "--reps", str(args.reps), "--out", str(mdir / "memory-w1.csv")],
          mdir / "memory-w1.csv")
    log("measurements: single-process steps (framework overhead)")
    for s in STRUCTURES:
        for k in TOP_KS:
            out = mdir / f"framework-w1-{s}-k{k}.csv"
            r.run([py, "-m", "real_backend.run", *model_args(s, k, ["parallel.ep=1",
                                                                    f"run.global_batch_tokens={args.rank_tokens}"]),
                   "--threads", "1", "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out),
                   "--quiet"], out)
    log("measurements: network microbenchmarks on the testbed")
    for hosts, rph in SHAPES:
        for rate in args.rates:
            out = mdir / f"net-{hosts}x{rph}-{rate}.csv"
            r.testbed(hosts, rph, rate, "microbench", ["--kinds", "all_to_all,all_reduce", "--a2a-sizes", NET_SIZES,
                                                       "--allreduce-sizes", NET_SIZES, *reps], out)
    write_manifest(mdir / "manifest.json", {"kind": "measurements", "campaign": campaign_info(args),
                                            "design": ledger.design, "measurements": r.records})
    ledger.close()


def validation_runs(args, log, vdir: Path) -> list[dict]:
    """Run every validation configuration ``--repeats`` times into ``vdir`` (whole rounds) and
    write ``vdir/runs.json``; returns its runs."""
    vdir.mkdir(parents=True, exist_ok=True)
    ledger = stage_ledger(args, log, vdir, "runs.json")
    if ledger.complete:
        log(f"validation runs: complete in {vdir}, kept")
        return ledger.complete["runs"]
    r = Runner(args, log, ledger)
    log("validation runs on the testbed")
    runs = []
    repeats = max(1, int(getattr(args, "repeats", 1)))
    warn_stray_tables(args, log, vdir, repeats)
    round_logged = 0
    paired = getattr(args, "paired", True)
    plan = list(validation_plan(args, repeats))
    for i, (rep, hosts, rph, rate, k, st, config, name) in enumerate(plan):
        if repeats > 1 and rep != round_logged:
            log(f"  round {rep} of {repeats}")
            round_logged = rep
        out = vdir / f"{name}.csv"
        partner = f"{plan[i ^ 1][-1]}.csv"     # CDAC and DCCA of a configuration sit at 2j and 2j + 1
        if paired and i % 2:                   # the pair's DCCA table came with its CDAC launch
            rec = runs[-1]
        else:
            rec = r.testbed(hosts, rph, rate, "run", [*model_args(st, k), "--steps", str(args.steps),
                                                      "--warmup", str(args.warmup)], out,
                            paired_out=vdir / partner if paired else None)
        runs.append({"file": out.name, "topology": f"{name}.topology.json", "config": config,
                     "repeat": rep, "role": "fit" if k in args.fit_top_k else "heldout",
                     "testbed": {"hosts": hosts, "ranks_per_host": rph, "rate": rate},
                     "structure": st, "top_k": k, "command": rec["command"],
                     "loadavg_before": rec["loadavg_before"],
                     "loadavg_after": rec["loadavg_after"], "finished": rec["finished"]})
        if paired:
            runs[-1]["paired_with"] = partner
    write_manifest(vdir / "runs.json", {"runs": runs, "campaign": campaign_info(args), "design": ledger.design})
    ledger.close()
    return runs


def validation_plan(args, repeats: int):
    """The validation runs in the order they are made: (round, hosts, ranks per host, rate, top-k,
    structure, configuration, table name without ``.csv``). Whole rounds one after another, so that
    slow drift of the machine touches every configuration alike; a configuration's CDAC and DCCA runs
    follow each other (their speedup is a paired ratio); unless ``--sequential``, they are one launch
    whose steps alternate (``real_backend.run --paired-out``)."""
    for rep in range(1, repeats + 1):
        for hosts, rph in SHAPES:
            for rate in args.rates:
                for k in args.top_k:
                    for st in STRUCTURES:
                        config = f"{hosts}x{rph}-{rate}-{st}-k{k}"
                        yield rep, hosts, rph, rate, k, st, config, (f"{config}-r{rep}" if repeats > 1 else config)


def validation_table_names(args, repeats: int) -> set[str]:
    """The run tables a validation stage of ``repeats`` rounds writes (file names)."""
    return {f"{plan[-1]}.csv" for plan in validation_plan(args, repeats)}


def warn_stray_tables(args, log, vdir: Path, repeats: int) -> list[str]:
    """Name the ``*.csv`` in ``vdir`` that this stage does not write (another campaign's tables): they
    are left alone, and the fit and ``moesim validate`` read only the runs the manifest lists."""
    ours = validation_table_names(args, repeats)
    stray = sorted(p.name for p in vdir.glob("*.csv") if p.name not in ours)
    if stray:
        log(f"  warning: {vdir} holds {len(stray)} table(s) this campaign does not write ({', '.join(stray[:3])}"
            f"{', ...' if len(stray) > 3 else ''}); they stay, and the fit and moesim validate read only the "
            f"runs its manifest lists: move them away to keep the directory one campaign's")
    return stray


def campaign_info(args) -> dict:
    return {"command": " ".join(["python -m", PROG, *map(shlex.quote, getattr(args, "argv", []))]), "date": now_iso(),
            "machine": machine_info(), "model": MODEL, "model_overrides": MODEL_SETS, "steps": args.steps,
            "warmup": args.warmup, "rates": list(args.rates), "shapes": [f"{h}x{r}" for h, r in SHAPES],
            "top_k": list(args.top_k), "repeats": int(getattr(args, "repeats", 1)), "max_load": args.max_load,
            "paired": bool(getattr(args, "paired", True))}


def write_manifest(path: Path, data: dict) -> None:
    from moesim.io import write_json_atomic
    write_json_atomic(path, data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="calibration", help="calibration directory (default: calibration)")
    ap.add_argument("--name", default="cpu-testbed", help="profile name (default cpu-testbed)")
    ap.add_argument("--only", choices=("all", "measure", "validation", "calibrate", "repeat"), default="all",
                    help="calibrate: re-fit from the tables already in --out, measure nothing; repeat: run the "
                         "validation configurations (--rates, --top-k) again into <out>/repeat/<n> (a new n each "
                         "time; --resume: the last) and compare "
                         "their step times with the committed ones (run-to-run spread)")
    ap.add_argument("--rates", default=",".join(RATES))
    ap.add_argument("--top-k", default=",".join(map(str, TOP_KS)))
    ap.add_argument("--fit-top-k", default="4", help="top-k values whose testbed runs are fit configurations")
    ap.add_argument("--tbf-effects", action="store_true",
                    help="let the network microbenchmark fit choose a two-way penalty and burst too, so that "
                         "efficiency and latencies are fitted beside them (the in-situ fit on the fit runs "
                         "then sets both; off: pure-rate links in the microbenchmark fit)")
    ap.add_argument("--patterns", default=DEFAULT_PATTERNS,
                    help="real_backend.patterns tables with release times (glob, relative to the repository): "
                         "the in-situ fit then models the shared cores (moesim.calibrate.insitu); 'none': the "
                         "fixed core share (default calibration/patterns/release-*.csv)")
    ap.add_argument("--a2a-start", choices=("together", "pairwise"), default="pairwise",
                    help="shared-core model: each rank pair of an All-to-All starts as soon as both ranks are "
                         "there (pairwise, default; moesim.engine.netbridge), or the All-to-All when all are "
                         "(together)")
    ap.add_argument("--a2a-cpu", type=a2a_cpu_mode, default="none", metavar="none|fit|last-arriver|SECONDS",
                    help="shared-core model: the CPU an All-to-All call costs each member rank once its data has "
                         "landed: none (default); fitted in situ with the pool's cores and alone factor over "
                         "0, 2 and 4 ms (fit; moesim.calibrate.insitu.A2A_CPU_GRID_S); set by the unshaped fit "
                         "runs' last-arriver time per call, 0-8 ms, then held while the rest is refitted on step "
                         "and last-arriver times (last-arriver; moesim.calibrate.skew); or SECONDS measured "
                         "elsewhere (e.g. gloo's threads' CPU per call, real_backend.schedprobe --show), held")
    ap.add_argument("--release-spread", type=release_spread_mode, default="patterns", metavar="patterns|FRACTION",
                    help="shared-core model: which All-to-Alls release their members apart: those over shaped "
                         "links, over the spread the --patterns tables measured in isolated calls (patterns, "
                         "default), or every one across hosts, shaped or not, over FRACTION of its time, "
                         "measured in steps (the 'step release spread' python -m moesim.calibrate.arrivals "
                         "prints for real_backend.run --timeline tables), held")
    ap.add_argument("--compute-first", action="store_true",
                    help="shared-core model: with time slices, a rank that returns from a collective computes "
                         "ahead of the All-to-All CPU (--a2a-cpu) of the ranks still in a call for its first "
                         "slice (the kernel runs a thread that slept first; moesim.engine.cpupool)")
    ap.add_argument("--a2a-cpu-overlap", action="store_true",
                    help="shared-core model: a rank's All-to-All CPU (--a2a-cpu) runs beside the call's transfer "
                         "from the rank's arrival, and the call returns when both are done (gloo's threads take "
                         "the data as it comes; the kernel moves it while they wait for a core); off: after "
                         "its data has landed (moesim.engine.simulator)")
    ap.add_argument("--continuous-bucket", action="store_true",
                    help="shaped links' token buckets accounted continuously (each fills at its rate less what "
                         "its flows send, and stage runs take what it holds when they start), not per stage: "
                         "a rank pair of a pairwise All-to-All that starts while other pairs hold the link "
                         "still finds the tokens it gained (moesim.network.fluid)")
    ap.add_argument("--two-way-active", action="store_true",
                    help="shaped links' two-way loss holds a flow only while its reverse flow still sends (a "
                         "rank pair of a pairwise All-to-All whose peer has sent its share runs one-way), not "
                         "for the whole stage (moesim.network.fluid)")
    ap.add_argument("--peer-accounting", choices=("shared", "all"), default="shared",
                    help="shaped links' peer term c: 'shared' (default) counts only the peer links that other "
                         "hosts' two-way flows also cross (a last arriver whose peers are done with each other "
                         "pays b alone); 'all' counts every peer link (moesim.network.fluid; models AK and AL in "
                         "calibration/README.md)")
    ap.add_argument("--two-way-rate", action="store_true",
                    help="shared-core model: the shaped links' two-way loss depends on the rate: b and c hold at "
                         "the fit runs' lowest tc rate and scale by (rate / that rate) ** -gamma, gamma fitted in "
                         "situ with the rest (moesim.calibrate.insitu.TWO_WAY_RATE_EXPONENT_GRID); off: one loss "
                         "at every rate")
    ap.add_argument("--two-way-rate-min", type=float, metavar="GAMMA",
                    help="with --two-way-rate: the least rate exponent the fit may take (e.g. 0: a loss that "
                         "does not grow with the rate, as the rate sweeps of real_backend.patterns measure); "
                         "default: the search's own bound, -2")
    ap.add_argument("--pool", choices=("fit", "measured", "compute-phases"), default="fit",
                    help="shared-core model: the pool's effective cores and alone factor fitted in situ with the "
                         "rest (fit, default), or held at what was measured (measured: the machine's cores, and "
                         "the contention microbenchmarks' core share, so that an op's alone work is its "
                         "single-process time; moesim.calibrate.phasecpu measures it in steps), or the machine's "
                         "cores with the alone factor set by the fit runs' compute phase times, then held while "
                         "the rest is refitted (compute-phases; with --a2a-cpu last-arriver the two are set in "
                         "turn until the alone factor holds, then the rest is refitted)")
    ap.add_argument("--fit-a2a-phase", action="store_true",
                    help="shared-core model: the in-situ fit's loss takes each fit run's All-to-All phase time "
                         "(dispatch + combine) beside its step time, so the fit splits the step between exchange "
                         "and compute as measured (moesim.calibrate.insitu)")
    ap.add_argument("--time-slice", default="skew",
                    help="shared-core model: the CPU scheduler's time slice, 'skew' (default: chosen by the fit "
                         "runs' measured rank skew, moesim.calibrate.skew) or seconds (0: processor sharing)")
    ap.add_argument("--burst", choices=("fit", "whole"), default="whole",
                    help="the usable token-bucket burst of shaped links: the whole bucket, as the rate sweep of "
                         "real_backend.patterns measures for All-to-Alls (whole, default), or chosen by the "
                         "in-situ fit among 0, half and all of the bucket (fit)")
    ap.add_argument("--nic-efficiency", choices=NIC_EFFICIENCY_FROM, default=NIC_EFFICIENCY_DEFAULT,
                    help="rows of the network microbenchmark fit that set the tc-shaped links' efficiency: the "
                         "4 MiB one-way rings of three or more ranks alone (one-way, default), so that the "
                         "All-to-Alls' two-way loss is left to the in-situ two-way penalty, or all (joint)")
    ap.add_argument("--two-way", choices=TWO_WAY_FROM, default="insitu",
                    help="the tc-shaped links' two-way loss (b, c): fitted in situ on the fit runs' steps with "
                         "the waiting (insitu, default), or on real_backend.patterns tables (--two-way-patterns; "
                         "moesim.calibrate.twoway) and held in the in-situ fit: the isolated All-to-Alls of the "
                         "size sweep (sizesweep) or the trains of back-to-back ones, costed like a step's (trains)")
    ap.add_argument("--two-way-patterns", default=None,
                    help="the tables for --two-way sizesweep|trains (glob, relative to the repository; default "
                         + ", ".join(f"{k}: {v}" for k, v in TWO_WAY_PATTERNS_DEFAULT.items()) + ")")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of every validation configuration, in whole rounds (default 3); validation "
                         "compares predictions with the median over a configuration's runs")
    ap.add_argument("--sequential", dest="paired", action="store_false",
                    help="measure a configuration's CDAC and DCCA runs as two launches one after the other "
                         "(the campaigns before 2026-12-03 did); default: one launch whose steps alternate "
                         "between the structures (real_backend.run --paired-out), so that the machine's drift "
                         "in speed touches both alike")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=7, help="microbenchmark repetitions")
    ap.add_argument("--rank-tokens", type=int, default=192, help="tokens per rank of the campaign model (single-process runs)")
    ap.add_argument("--max-load", type=float, default=0.5, help="wait for a 1-minute load below this before measuring")
    ap.add_argument("--wait-timeout", type=float, default=3600.0,
                    help="give up (exit non-zero) when the machine stays busy this long (s)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted campaign in --out: keep the runs its progress ledger "
                         "(<stage>/progress.json) records, measure the rest (the same options, machine and "
                         "measuring code are required)")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.rates = [x for x in args.rates.split(",") if x]
    args.top_k = [int(x) for x in args.top_k.split(",") if x]
    args.fit_top_k = {int(x) for x in args.fit_top_k.split(",") if x}
    if args.two_way_rate_min is not None and not args.two_way_rate:
        ap.error("--two-way-rate-min bounds the rate exponent of --two-way-rate: give both")
    if args.two_way_rate and (args.two_way != "insitu" or args.patterns == "none"):
        ap.error("--two-way-rate fits the two-way loss in situ on shared cores: it needs --two-way insitu "
                 "and --patterns tables")
    if args.time_slice != "skew":
        try:
            if not 0.0 <= float(args.time_slice) <= 1.0:
                raise ValueError
        except ValueError:
            print(f"{PROG}: error: --time-slice must be 'skew' or seconds in [0, 1], got {args.time_slice!r}",
                  file=sys.stderr)
            return 2
    out = Path(args.out).resolve()
    mdir, vdir = out / "measurements", out / "validation"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.only in ("all", "measure", "validation", "repeat"):
        if os.geteuid() != 0:
            print(f"{PROG}: error: the testbed needs root", file=sys.stderr)
            return 2
    if args.repeats < 1:
        print(f"{PROG}: error: --repeats must be at least 1", file=sys.stderr)
        return 2
    if args.only == "repeat":
        args.repeats = 1
        rdir = repeat_dir(out / "repeat", bool(getattr(args, "resume", False)))
        log(f"repeat runs into {rdir}")
        validation_runs(args, log, rdir)
        return compare_repeat(rdir, vdir)
    if args.only in ("all", "measure"):
        measure(args, log, mdir)
    if args.only in ("all", "validation"):
        validation_runs(args, log, vdir)
    return finish(args, log, out, mdir, vdir)


def repeat_dir(base: Path, resume: bool = False) -> Path:
    """Where ``--only repeat`` writes: ``base/<n>``, one numbered directory per invocation so that
    earlier repeats stay (n = one more than the highest there); with ``resume``, the highest one,
    to finish an interrupted repeat."""
    taken = [int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    if resume and taken:
        return base / str(max(taken))
    return base / str(max(taken, default=0) + 1)


def committed_runs(vdir: Path, config: str) -> list[Path]:
    """The committed tables of one validation configuration (e.g. ``2x2-400mbit-dcca-k8``): the runs
    its manifest (``runs.json`` while a campaign is unfinished) lists for it, so that stray tables
    in the directory do not count; without either, ``<config>.csv`` and ``<config>-r<round>.csv``."""
    for name in ("manifest.json", "runs.json"):
        if (vdir / name).is_file():
            runs = json.loads((vdir / name).read_text()).get("runs") or []
            return [vdir / r["file"] for r in runs if r.get("config") == config and (vdir / r["file"]).is_file()]
    return [x for x in (vdir / f"{config}.csv", *sorted(vdir.glob(f"{config}-r*.csv"))) if x.is_file()]


def compare_repeat(rdir: Path, vdir: Path) -> int:
    """Print each repeated run's step time next to the committed runs of the same configuration
    (their median over rounds), and the DCCA-over-CDAC speedups of both."""
    from moesim.validate.core import RunSpec, load_run, measured_config

    def median_step(paths) -> float:
        return measured_config([load_run(RunSpec(x)) for x in paths])[0] if paths else float("nan")
    steps = {}
    print(f"{'run':28s} {'committed':>10s} {'repeat':>10s} {'change':>8s}")
    for f in sorted(rdir.glob("*.csv")):
        committed = committed_runs(vdir, f.stem)
        new_s, old_s = median_step([f]), median_step(committed)
        steps[f.stem] = (old_s, new_s)
        print(f"{f.stem:28s} {old_s * 1e3:8.0f} ms {new_s * 1e3:8.0f} ms {new_s / old_s - 1:+7.1%}")
    for name, (old_c, new_c) in steps.items():
        if "-cdac-" in name and name.replace("-cdac-", "-dcca-") in steps:
            old_d, new_d = steps[name.replace("-cdac-", "-dcca-")]
            label = name.replace("-cdac", "")
            print(f"speedup {label:20s} committed {old_c / old_d:.3f}x  repeat {new_c / new_d:.3f}x  "
                  f"change {(new_c / new_d) / (old_c / old_d) - 1:+.1%}")
    return 0


def a2a_cpu_mode(text: str) -> str:
    """``--a2a-cpu``: 'none', 'fit', 'last-arriver' or seconds in [0, 0.5] (returned as given)."""
    if text in ("none", "fit", "last-arriver"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected none, fit, last-arriver or seconds, got {text!r}") from None
    if not 0.0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"the All-to-All CPU must be in [0, 0.5] s, got {text}")
    return text


def release_spread_mode(text: str) -> str:
    """``--release-spread``: 'patterns' or a fraction in [0, 1) (returned as given)."""
    if text == "patterns":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected patterns or a fraction, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"the step release spread is a fraction of an All-to-All's time, in "
                                         f"[0, 1), got {text}")
    return text


def a2a_cpu_fit_args(mode: str) -> dict:
    """The in-situ fit's arguments (``moesim.calibrate.insitu.fit_insitu``) for an ``--a2a-cpu`` mode."""
    from moesim.calibrate.insitu import A2A_CPU_GRID_S, A2A_CPU_LAST_ARRIVER_GRID_S
    if mode == "none":
        return {}
    if mode == "fit":
        return {"a2a_cpu_grid": A2A_CPU_GRID_S}
    if mode == "last-arriver":
        return {"a2a_cpu_last_arriver_grid": A2A_CPU_LAST_ARRIVER_GRID_S}
    return {"a2a_cpu_grid": (float(a2a_cpu_mode(mode)),)}          # measured elsewhere: held


def fit_command(out: str, name: str, patterns: str, a2a_start: str = "pairwise", time_slice: str = "skew",
                burst: str = "whole", nic_efficiency: str = NIC_EFFICIENCY_DEFAULT, two_way: str = "insitu",
                two_way_patterns: str | None = None, a2a_cpu: str = "none", release: str = "patterns",
                compute_first: bool = False, continuous_bucket: bool = False, a2a_phase: bool = False,
                two_way_rate: bool = False, pool: str = "fit", a2a_cpu_overlap: bool = False,
                two_way_rate_min: float | None = None, two_way_active: bool = False,
                peer_accounting: str = "shared") -> str:
    """The command that re-creates a campaign profile (options at their defaults left out)."""
    opts = "".join(f" {k} {shlex.quote(v)}" for k, v, default in
                   (("--name", name, "cpu-testbed"), ("--patterns", patterns, DEFAULT_PATTERNS),
                    ("--a2a-start", a2a_start, "pairwise"), ("--time-slice", time_slice, "skew"),
                    ("--burst", burst, "whole"), ("--nic-efficiency", nic_efficiency, NIC_EFFICIENCY_DEFAULT),
                    ("--two-way", two_way, "insitu"), ("--two-way-patterns", two_way_patterns, None),
                    ("--a2a-cpu", a2a_cpu, "none"), ("--release-spread", release, "patterns"),
                    ("--pool", pool, "fit"), ("--peer-accounting", peer_accounting, "shared"),
                    ("--two-way-rate-min", None if two_way_rate_min is None else f"{two_way_rate_min:g}", None))
                   if v != default)
    flags = "".join(f for f, on in ((" --compute-first", compute_first), (" --continuous-bucket", continuous_bucket),
                                    (" --fit-a2a-phase", a2a_phase), (" --two-way-rate", two_way_rate),
                                    (" --a2a-cpu-overlap", a2a_cpu_overlap),
                                    (" --two-way-active", two_way_active)) if on)
    base = f"python -m {PROG} --out {out}{opts}{flags}"
    return f"{base}  (this fit alone: {base} --only calibrate)"


def _two_way_from_sweep(cal, root: Path, pattern: str, log, source: str = "sizesweep"):
    """(b, c) of the shaped links fitted on the patterns tables ``pattern`` (moesim.calibrate.twoway:
    the size sweep's isolated All-to-Alls, or the trains of back-to-back ones) with the links just
    fitted and the testbed's bucket."""
    from moesim.calibrate.netmodel import TESTBED_TBF_BURST_S
    from moesim.calibrate.profile_io import link_params
    from moesim.calibrate.twoway import SOURCE_PATTERN, fit_two_way, read_size_sweep
    files = sorted(glob.glob(str(root / pattern)))
    if not files:
        raise SystemExit(f"{PROG}: --two-way-patterns {pattern}: no such tables (measure them with "
                         f"real_backend.patterns, or use --two-way insitu)")
    fit = fit_two_way(read_size_sweep(files, SOURCE_PATTERN[source]), link_params(cal.profile),
                      float(cal.profile["network"]["latency_per_message_s"]), TESTBED_TBF_BURST_S, source=source)
    rec = fit.record()
    log(f"two-way loss from the {source} ({rec['rows']} tables): b = {fit.penalty:.3f}, c = {fit.peer:.3f} "
        f"(rms log error {rec['rms_log_error']:.3f}, max error {rec['max_error']:.1%})")
    return fit


def finish(args, log, out: Path, mdir: Path, vdir: Path) -> int:
    """Fit the profile from the measurements (+ the in-situ fit on the fit runs) and write the
    validation manifest; then print the validation."""
    from moesim.calibrate import calibrate, write_profile
    from moesim.calibrate.insitu import TWO_WAY_RATE_EXPONENT_GRID, fit_insitu
    prof_path = out / f"{args.name}.yaml"
    root = repo_root()
    patterns = [] if args.patterns == "none" else sorted(
        os.path.relpath(f, root) for f in glob.glob(str(root / args.patterns)))
    if args.patterns != "none" and not patterns:
        raise SystemExit(f"{PROG}: --patterns {args.patterns}: no such tables (measure them with "
                         f"real_backend.patterns, or pass --patterns none)")
    log("fitting the profile")
    nic_efficiency = getattr(args, "nic_efficiency", NIC_EFFICIENCY_DEFAULT)
    cal = calibrate([mdir], name=args.name, tbf_effects=args.tbf_effects, nic_efficiency=nic_efficiency)
    runs = json.loads((vdir / "runs.json").read_text())["runs"]
    fit_runs = [vdir / r["file"] for r in runs if r["role"] == "fit"]
    a2a_start, time_slice = getattr(args, "a2a_start", "pairwise"), getattr(args, "time_slice", "skew")
    burst, a2a_cpu = getattr(args, "burst", "whole"), getattr(args, "a2a_cpu", "none")
    release = getattr(args, "release_spread", "patterns")
    two_way, two_way_patterns = getattr(args, "two_way", "insitu"), getattr(args, "two_way_patterns", None)
    held = None
    two_way_rate = getattr(args, "two_way_rate", False)
    if two_way != "insitu":
        held = _two_way_from_sweep(cal, root, two_way_patterns or TWO_WAY_PATTERNS_DEFAULT[two_way], log, two_way)
    continuous = getattr(args, "continuous_bucket", False)
    # shaped-link engine settings, written to the links the in-situ fit then simulates
    nic = cal.profile.get("calibration", {}).get("links", {}).get("nic")
    for flag, on, field in (("--continuous-bucket", continuous, "burst_continuous"),
                            ("--two-way-active", getattr(args, "two_way_active", False), "two_way_active")):
        if on:
            if nic is None:
                raise SystemExit(f"{PROG}: {flag}: the fitted profile has no shaped (nic) links")
            nic[field] = True
    if nic is not None and getattr(args, "peer_accounting", "shared") == "shared":   # the default; moot unshaped
        nic["peer_shared"] = True
    if fit_runs:
        cal = fit_insitu(cal, fit_runs, patterns=[root / f for f in patterns] or None,
                         pairwise_a2a=a2a_start == "pairwise",
                         time_slice_s=None if time_slice == "skew" else float(time_slice),
                         two_way=None if held is None else (held.penalty, held.peer),
                         **({"burst_fractions": (1.0,)} if burst == "whole" else {}),
                         **a2a_cpu_fit_args(a2a_cpu),
                         **({} if release == "patterns" else {"step_release_spread": float(release)}),
                         **({"compute_first": True} if getattr(args, "compute_first", False) else {}),
                         **({"a2a_cpu_overlap": True} if getattr(args, "a2a_cpu_overlap", False) else {}),
                         **({"a2a_phase": True} if getattr(args, "fit_a2a_phase", False) else {}),
                         **({"rate_exponent_grid": TWO_WAY_RATE_EXPONENT_GRID} if two_way_rate else {}),
                         **({"rate_exponent_min": args.two_way_rate_min}
                            if getattr(args, "two_way_rate_min", None) is not None else {}),
                         **({"pool_held": args.pool} if getattr(args, "pool", "fit") != "fit" else {}))
    if held is not None:
        cal.profile["calibration"]["two_way_from"] = held.record()
    cal.profile["provenance"]["command"] = fit_command(args.out, args.name, args.patterns, a2a_start, time_slice,
                                                       burst, nic_efficiency, two_way, two_way_patterns, a2a_cpu,
                                                       release, getattr(args, "compute_first", False), continuous,
                                                       getattr(args, "fit_a2a_phase", False), two_way_rate,
                                                       getattr(args, "pool", "fit"),
                                                       getattr(args, "a2a_cpu_overlap", False),
                                                       getattr(args, "two_way_rate_min", None),
                                                       getattr(args, "two_way_active", False),
                                                       getattr(args, "peer_accounting", "shared"))
    if patterns:
        cal.profile["provenance"]["release_patterns"] = patterns
    write_profile(prof_path, cal.profile)
    manifest = {"kind": "validation", "profile": os.path.relpath(prof_path, vdir), "targets": TARGETS,
                "runs": runs, "campaign": json.loads((vdir / "runs.json").read_text()).get("campaign"),
                "note": "role 'fit': the runs the in-situ receiver wait and two-way penalty were fitted on; "
                        "'heldout': judged only"}
    write_manifest(vdir / "manifest.json", manifest)
    res = subprocess.run([sys.executable, "-m", "moesim", "validate", str(vdir)], cwd=repo_root())
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
