"""Run the config's steps for real and record per-phase times, per rank and per step.

    torchrun --nproc_per_node=4 -m real_backend.run --model real_backend/configs/small-gpt.yaml \\
        --set parallel.ep=4 --steps 5 --warmup 2 --out small.csv
    python -m real_backend.run --model small.yaml --steps 3 --out one.csv      # world size 1

``run.mode`` train: fwd, bwd, gradient all-reduce, Adam (micro-batches from
``run.micro_batch_tokens``); prefill: one forward over ``batch_size/dp`` prompts of ``prompt_len``;
decode: one token per sequence against a KV cache at the mean context of the generation.

Output (rank 0 gathers every rank's rows, then writes atomically): a tidy CSV, one row per
(step, rank, phase, direction) with columns ``results.RUN_COLUMNS``; ``phase`` is in the shared
vocabulary plus ``step`` (the whole step, direction ``none``); ``bytes`` are the bytes of the
tensors this rank passed to the phase's collectives (All-to-All payload only, the small count
exchange excluded), ``bytes_remote`` the part addressed to other ranks (All-to-All only).

``--paired-out FILE`` measures a CDAC/DCCA pair in one launch: the same processes also build the
other structure (everything else equal) and alternate the two step by step (its warm-up steps too),
so that both see the same machine. A shared machine's speed drifts by tens of percent within
seconds to a minute (measured on the testbed), which two separate runs see apart and a ratio of
them does not cancel. Each structure's table is written as a run of its own (``paired_with`` in
its metadata names the other).

``--timeline FILE`` also writes every timed interval of the measured steps, per rank and in order,
with its start and end on ``time.perf_counter`` (``results.TIMELINE_COLUMNS``; CPU runs only). The
ranks of one machine (the on-one-machine testbed) share that clock, so the table shows when each
rank entered and left each collective call (``moesim.calibrate.arrivals``). ``cpu_s`` is the CPU
time the rank's main thread spent in the interval (``time.thread_time``; where the step's CPU goes,
``moesim.calibrate.phasecpu``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Any, Optional

from moesim.config import Config, load_config
from moesim.errors import ConfigError, MoesimError

PROG = "real_backend.run"
AUX_COEF = 0.01
AMP = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt3-xl", metavar="PRESET|FILE",
                    help="preset (gpt3-medium, gpt3-xl, gpt3-2.7b, gpt3-6.7b) or YAML config file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set moe.structure=dcca (repeatable)")
    ap.add_argument("--steps", type=int, default=5, help="measured steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="unrecorded warm-up steps first (default 2)")
    ap.add_argument("--out", required=True, help="output CSV (written by rank 0, atomically)")
    ap.add_argument("--paired-out", default=None, metavar="FILE",
                    help="also run the other MoE structure (cdac <-> dcca) in the same processes, alternating "
                         "steps with this one, and write its table to FILE")
    ap.add_argument("--timeline", default=None, metavar="FILE",
                    help="also write every timed interval of the measured steps with its start and end "
                         "(perf_counter seconds, one clock for the ranks of one machine; CPU runs only)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds without progress (e.g. in a collective) before a rank gives up (default 300)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads per rank")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    ap.add_argument("--quiet", action="store_true", help="no summary on stdout")
    # test-only failure injection
    ap.add_argument("--fail-rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fail-mode", choices=("crash", "hang", "raise"), default="crash", help=argparse.SUPPRESS)
    ap.add_argument("--fail-step", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def _fail_hook(args, rank: int, progress):
    if args.fail_rank is None or args.fail_rank != rank:
        return None

    def hook(phase: str, direction: str) -> None:
        if progress.step == args.fail_step and phase == "experts" and direction == "fwd":
            if args.fail_mode == "crash":
                os._exit(86)  # abrupt death, as a segfault would be
            if args.fail_mode == "raise":
                raise RuntimeError("injected failure")
            while True:  # hang outside any collective
                time.sleep(3600)
    return hook


class Workload:
    """Synthetic inputs for the config's mode on this rank."""

    def __init__(self, cfg: Config, rank: int, device, dtype):
        import torch
        self.cfg = cfg
        m, run = cfg.model, cfg.run
        dp = cfg.parallel.dp_size
        gen = torch.Generator().manual_seed(run.seed * 7919 + rank + 1)
        self.mode = run.mode
        if run.mode == "train":
            local = cfg.tokens_per_dp_rank
            micro = run.micro_batch_tokens or local
            seq = min(m.seq_len, micro)
            if micro % seq:
                raise ConfigError("run.micro_batch_tokens", f"the tokens per micro-batch ({micro}) are not a "
                                                            f"whole number of sequences of {seq} tokens")
            self.micro = [(torch.randint(0, m.vocab, (micro // seq, seq), generator=gen).to(device),
                           torch.randint(0, m.vocab, (micro // seq, seq), generator=gen).to(device))
                          for _ in range(local // micro)]
            self.tokens = local
        elif run.mode == "prefill":
            b = run.batch_size // dp
            self.ids = torch.randint(0, m.vocab, (b, run.prompt_len), generator=gen).to(device)
            self.tokens = b * run.prompt_len
        else:
            b = run.batch_size // dp
            ctx = max(1, round(run.prompt_len + (run.gen_len - 1) / 2))
            hd = m.hidden // m.heads
            self.ids = torch.randint(0, m.vocab, (b, 1), generator=gen).to(device)
            self.past = [(torch.randn(b, m.heads, ctx, hd, generator=gen).to(device, dtype),
                          torch.randn(b, m.heads, ctx, hd, generator=gen).to(device, dtype))
                         for _ in range(m.layers)]
            self.tokens = b


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        print(f"{PROG}: error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if args.timeline is not None and os.path.abspath(args.timeline) in {
            os.path.abspath(p) for p in (args.out, args.paired_out) if p is not None}:
        print(f"{PROG}: error: --timeline {args.timeline}: the same file as a run table", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.model, args.overrides)
        cfgs = [cfg]
        if args.paired_out is not None:
            cfgs.append(paired_config(args, cfg))
    except MoesimError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    import torch
    import torch.distributed as dist

    from real_backend.comm import sync_gradients
    from real_backend.parallel import (build_groups, check_layout, finish_process_group, gather_rows_to_rank0,
                                       init_distributed, torch_meta)
    from real_backend.results import RUN_COLUMNS, TIMELINE_COLUMNS, write_table
    from real_backend.timing import Progress, Recorder
    from real_backend.watchdog import Watchdog, report

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = Progress()
    rank = int(os.environ.get("RANK", "0"))
    watchdog: Optional[Watchdog] = None
    try:
        backend, device = init_distributed(args.timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
        try:
            check_layout(cfg, world)
        except MoesimError as exc:
            if rank == 0:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        if args.timeline is not None and device.type != "cpu":
            if rank == 0:
                print(f"{PROG}: error: --timeline needs a CPU run (CUDA events have no common clock across "
                      f"processes)", file=sys.stderr)
            return 2
        groups = build_groups(cfg, backend, device)
        rec = Recorder(device, progress=progress)
        rec.fail_hook = _fail_hook(args, rank, progress)
        amp = getattr(torch, AMP[cfg.model.dtype]) if AMP[cfg.model.dtype] else None
        train = cfg.run.mode == "train"
        data = Workload(cfg, rank, device, amp or torch.float32)
        runs = [_Measured(c, groups, rec, device, amp, train, args.lr) for c in cfgs]
        autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
        watchdog = Watchdog(progress, rank, world, args.timeout, PROG)
        watchdog.start()

        window = [None, None]       # wall clock (Unix s) of the measured steps, for outside probes
        for turn in range((args.warmup + args.steps) * len(runs)):
            run, it = runs[turn % len(runs)], turn // len(runs)    # paired: the structures take turns
            if it == args.warmup and window[0] is None:
                window[0] = time.time()
            model, opt, dense, experts, rows = run.model, run.opt, run.dense, run.experts, run.rows
            progress.step = it
            progress.touch("step", "none")
            rec.reset()
            c0, t0 = rec.cpu_stamp(), rec.stamp()
            if train:
                opt.zero_grad(set_to_none=True)
                for ids, tgt in data.micro:
                    with autocast():
                        loss, aux = model(ids, tgt)
                        total = (loss + AUX_COEF * aux) / len(data.micro)
                    rec.bwd_begin()
                    total.backward()
                    rec.bwd_end("embedding")
                with rec.interval("grad_allreduce", "bwd"):
                    sync_gradients(dense, experts, groups.dp_group, groups.dp_size, groups.expert_dp_group, rec)
                with rec.interval("optimizer", "none"):
                    opt.step()
            else:
                with torch.no_grad(), autocast():
                    model(data.ids, past=getattr(data, "past", None))
            t1 = rec.stamp()
            c1 = rec.cpu_stamp()
            summary = rec.summary()
            if it < args.warmup:
                continue
            step = it - args.warmup
            for (phase, direction), v in summary.items():
                rows.append({"step": step, "rank": rank, "phase": phase, "direction": direction,
                             "seconds": v["seconds"], "count": v["count"], "bytes": v["bytes"],
                             "bytes_remote": v["bytes_remote"]})
            rows.append({"step": step, "rank": rank, "phase": "step", "direction": "none",
                         "seconds": rec._seconds(t0, t1), "count": 1, "bytes": 0, "bytes_remote": None})
            if args.timeline is not None:
                spans = [("step", "none", t0, t1, rec.cpu_between(c0, c1))] + list(rec.intervals)
                run.timeline.extend({"step": step, "rank": rank, "seq": i, "phase": ph, "direction": d,
                                     "start_s": a, "end_s": b, "cpu_s": cpu}
                                    for i, (ph, d, a, b, cpu) in enumerate(spans))
        window[1] = time.time()
        tagged = [dict(r, _run=i) for i, run in enumerate(runs) for r in run.rows]
        tagged += [dict(r, _run=i, _timeline=True, structure=run.cfg.moe.structure)
                   for i, run in enumerate(runs) for r in run.timeline]
        everything = gather_rows_to_rank0(tagged, progress, watchdog)
        if rank == 0:
            timeline = sorted(({k: v for k, v in r.items() if k[0] != "_"} for r in everything if r.get("_timeline")),
                              key=lambda r: (r["structure"], r["step"], r["rank"], r["seq"]))
            everything = [r for r in everything if not r.get("_timeline")]
            gathered = [[{k: v for k, v in r.items() if k != "_run"} for r in everything if r["_run"] == i]
                        for i in range(len(runs))]
            outs = [args.out, args.paired_out][:len(runs)]
            tables = []
            for i, (run, rows) in enumerate(zip(runs, gathered)):
                c = run.cfg
                extra = {}
                if len(runs) > 1:
                    other = runs[1 - i].cfg.moe.structure
                    extra["paired_with"] = {"structure": other, "table": os.path.basename(outs[1 - i]),
                                            "order": [r.cfg.moe.structure for r in runs],
                                            "note": "steps alternate with the other structure's, one each"}
                meta = torch_meta("run", backend, device, cuda=torch.version.cuda, config=c.to_dict(),
                                  steps=args.steps, warmup=args.warmup,
                                  argv=sys.argv[1:] if argv is None else list(argv), tokens_per_rank=data.tokens,
                                  timing="cuda_events" if device.type == "cuda" else "perf_counter",
                                  measured_window_unix=window,
                                  phase_directions="fwd/bwd; optimizer and step: none", **extra)
                common = {"run_id": meta["run_id"], "host": meta["host"], "backend": backend, "world_size": world,
                          "structure": c.moe.structure, "mode": c.run.mode, "ep": c.parallel.ep,
                          "dp": c.parallel.dp_size}
                all_rows = [dict(r, **common) for r in rows]
                all_rows.sort(key=lambda r: (r["step"], r["rank"], r["phase"], r["direction"]))
                tables.append((outs[i], all_rows, meta, c))
            for out, all_rows, meta, c in tables:
                write_table(out, RUN_COLUMNS, all_rows, meta)
            if args.timeline is not None:
                write_table(args.timeline, TIMELINE_COLUMNS, timeline, dict(
                    tables[0][2], kind="timeline", tables=[os.path.basename(t[0]) for t in tables],
                    clock="time.perf_counter (CLOCK_MONOTONIC): one clock for the ranks of one machine"))
            if not args.quiet:
                for out, all_rows, meta, c in tables:
                    with contextlib.suppress(BrokenPipeError):
                        _print_summary(all_rows, c, world, out)
        finish_process_group(PROG)
        return 0
    except KeyboardInterrupt:
        report(f"{PROG}: rank {rank}: interrupted", 130)
    except MoesimError as exc:
        report(f"{PROG}: rank {rank}: error: {exc}", 2)
    except Exception as exc:  # noqa: BLE001 - one line naming the rank, then a bounded exit
        msg = f"{PROG}: rank {rank} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if progress.collective is not None and watchdog is not None:
            msg += "\n" + watchdog.diagnose(settle=2.0)
        report(msg, 1)
    return 1


OTHER_STRUCTURE = {"cdac": "dcca", "dcca": "cdac"}


def paired_config(args, cfg: Config) -> Config:
    """The other structure's config for ``--paired-out``: the same overrides, then
    ``moe.structure`` switched (cdac <-> dcca)."""
    if cfg.moe.structure not in OTHER_STRUCTURE:
        raise ConfigError("moe.structure", f"--paired-out pairs cdac with dcca; {cfg.moe.structure!r} has no pair")
    if os.path.abspath(args.paired_out) == os.path.abspath(args.out):
        raise ConfigError("--paired-out", f"names the same file as --out ({args.out})")
    return load_config(args.model, [*args.overrides, f"moe.structure={OTHER_STRUCTURE[cfg.moe.structure]}"])


class _Measured:
    """One structure's model, optimizer and recorded rows in a (possibly paired) run."""

    def __init__(self, cfg: Config, groups, rec, device, amp, train: bool, lr: float):
        import torch

        from real_backend.layers import build_model
        self.cfg = cfg
        self.model = build_model(cfg, groups, rec, device=device, dtype=torch.float32)
        self.model.set_comm_dtype(amp)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr) if train else None
        self.dense, self.experts = self.model.dense_parameters(), self.model.expert_parameters()
        self.rows: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []     # --timeline: every interval of the measured steps


def _print_summary(rows: list[dict], cfg: Config, world: int, out: str) -> None:
    steps = [r["seconds"] for r in rows if r["phase"] == "step"]
    per_phase: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["phase"] != "step":
            per_phase[(r["phase"], r["direction"])].append(r["seconds"])
    nsteps = len({r["step"] for r in rows})
    print(f"{PROG}: {cfg.model.name} {cfg.moe.structure} {cfg.run.mode}, world {world}: "
          f"step median {statistics.median(steps):.4f} s over {nsteps} steps x {world} ranks -> {out}")
    for (phase, direction), vals in sorted(per_phase.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {phase:15s} {direction:4s} {sum(vals) / len(steps):.4f} s/step/rank")



if __name__ == "__main__":
    from real_backend.parallel import exit_process
    exit_process(main())
