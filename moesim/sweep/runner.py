"""Run a sweep: skip the scenarios already in the journal, run the rest on local processes (default)
or a Dask distributed cluster, record each as it finishes, then assemble the table atomically.

Workers only compute; the parent process alone writes the journal. Interrupting (Ctrl-C, SIGTERM,
kill) loses at most the scenarios in flight; running the same command again finishes the rest.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from moesim.errors import MoesimError
from moesim.sweep.scenario import run_scenario
from moesim.sweep.spec import Scenario, SweepSpec, load_sweep
from moesim.sweep.store import Journal, check_output, rows_frame, write_table

MAX_POOL_RESTARTS = 2


@dataclass
class SweepReport:
    out: str
    total: int
    already_done: int = 0
    ran: int = 0
    ok: int = 0
    errors: int = 0
    missing: int = 0
    elapsed_s: float = 0.0
    error_messages: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.missing == 0


# ---- local worker processes ------------------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # the sweep process died (e.g. SIGKILL): do not linger
            os._exit(3)


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _kill_pool(ex: ProcessPoolExecutor) -> None:
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.terminate()
        except Exception:  # noqa: BLE001 - already gone
            pass
    for p in procs:
        p.join(timeout=2)


def _run_local(todo: list[Scenario], jobs: int, record: Callable[[dict], None]) -> list[Scenario]:
    """Run ``todo`` on ``jobs`` processes (in-process when jobs == 1); returns scenarios not run
    because worker processes kept dying."""
    if jobs <= 1:
        for sc in todo:
            record(run_scenario(sc))
        return []
    pending = list(todo)
    restarts = 0
    ctx = multiprocessing.get_context("spawn")
    while pending:
        ex = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx,
                                 initializer=_worker_init, initargs=(os.getpid(),))
        futs = {ex.submit(run_scenario, sc): sc for sc in pending}
        broken = False
        try:
            not_done = set(futs)
            while not_done:
                done, not_done = wait(not_done, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in done:
                    try:
                        row = f.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    record(row)
                    pending.remove(futs[f])
                if broken:
                    break
        except BaseException:
            _kill_pool(ex)
            raise
        if broken:
            _kill_pool(ex)
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                return pending
            print(f"moesim sweep: a worker process died; restarting the pool for {len(pending)} scenarios",
                  file=sys.stderr)
        else:
            ex.shutdown(wait=True)
    return []


# ---- Dask distributed ------------------------------------------------------------------------------------
def _run_dask(todo: list[Scenario], scheduler: str, record: Callable[[dict], None],
              connect_timeout: float = 20.0) -> list[Scenario]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MoesimError("--scheduler needs Dask distributed: pip install 'dask[distributed]' "
                          "(or the extra: pip install 'moesim[whatif]')") from None
    try:
        client = Client(scheduler, timeout=f"{connect_timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise MoesimError(f"cannot connect to the Dask scheduler at {scheduler} ({exc})") from None
    token = uuid.uuid4().hex[:8]
    futs = []
    try:
        futs = client.map(run_scenario, todo, key=[f"moesim-{sc.id}-{token}" for sc in todo], pure=False)
        by_key = {f.key: sc for f, sc in zip(futs, todo)}
        for fut in as_completed(futs, loop=client.loop):
            sc = by_key[fut.key]
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the scenario kills workers
                row = _infra_error_row(sc, f"{type(exc).__name__}: {exc}")
            record(row)
            fut.release()
    except BaseException:
        if futs:
            client.cancel(futs)
        raise
    finally:
        client.close()
    return []


def _infra_error_row(sc: Scenario, message: str) -> dict:
    import json
    row = {"scenario_id": sc.id, "index": sc.index, "status": "error", "error": message,
           "label": sc.inputs.get("label"), "inputs_json": json.dumps(dict(sc.inputs), sort_keys=True),
           "resolved_json": json.dumps(dict(sc.resolved), sort_keys=True)}
    for k, v in sc.inputs.items():
        row[f"in.{k}"] = v
    return row


# ---- the sweep -------------------------------------------------------------------------------------------
def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        return None
    return tqdm(total=total, initial=initial, desc="sweep", unit="scenario", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.2)


def run_sweep(spec: SweepSpec | str | os.PathLike | Mapping, out: str | os.PathLike, jobs: int | None = None,
              scheduler: str | None = None, retry_errors: bool = False, fresh: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None,
              connect_timeout: float = 20.0) -> SweepReport:
    """Run every scenario of ``spec`` not yet in ``out``'s journal and write ``out``.

    ``jobs``: local worker processes (default: CPU count; 1 runs in this process). ``scheduler``: a
    Dask scheduler address instead. ``retry_errors``: run again the scenarios whose row says error.
    ``fresh``: forget the journal first. ``connect_timeout``: seconds to reach the Dask scheduler."""
    t0 = time.perf_counter()
    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec)
    check_output(out)
    if jobs is not None and jobs < 1:
        raise MoesimError(f"--jobs must be >= 1, got {jobs}")
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    report = SweepReport(out=str(out), total=len(spec.scenarios))
    with Journal(out) as journal:
        if fresh:
            journal.clear()
        finished = journal.finished()
        ids = [sc.id for sc in spec.scenarios]
        done = {sid for sid in ids if sid in finished and (finished[sid] == "ok" or not retry_errors)}
        todo = [sc for sc in spec.scenarios if sc.id not in done]
        report.already_done = len(done)
        if done:
            log(f"resuming: {len(done)} of {len(ids)} scenarios already finished, {len(todo)} to run")
        bar = _progress(len(ids), len(done), progress and bool(todo))
        errors = sum(1 for sid in done if finished[sid] != "ok")

        def record(row: dict) -> None:
            nonlocal errors
            journal.write(row)
            report.ran += 1
            if row.get("status") != "ok":
                errors += 1
            if bar is not None:
                bar.update(1)
                if errors:
                    bar.set_postfix(errors=errors, refresh=False)

        try:
            if todo:
                if scheduler:
                    left = _run_dask(todo, scheduler, record, connect_timeout)
                else:
                    left = _run_local(todo, jobs, record)
            else:
                left = []
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
                bar = None
            log(f"interrupted: {report.already_done + report.ran} of {report.total} scenarios finished and saved "
                f"in {journal.dir}; run the same command again to finish the rest")
            raise
        finally:
            if bar is not None:
                bar.close()
        rows = journal.rows(ids)
    df = rows_frame(rows)
    write_table(df, out)
    report.missing = len(left)
    report.ok = int((df["status"] == "ok").sum()) if len(df) else 0
    report.errors = int((df["status"] != "ok").sum()) if len(df) else 0
    if report.errors:
        report.error_messages = [f"scenario {r['index']} ({r['scenario_id']}): {r['error']}"
                                 for r in rows if r.get("status") != "ok"]
    report.elapsed_s = time.perf_counter() - t0
    return report


def check_sweep(spec: SweepSpec) -> list[tuple[Scenario, str]]:
    """Build every scenario's topology and config without simulating; (scenario, error) pairs."""
    from moesim.sweep.scenario import check_scenario
    out = []
    for sc in spec.scenarios:
        err = check_scenario(sc)
        if err:
            out.append((sc, err))
    return out


def iter_rows(out: str | os.PathLike, spec: SweepSpec) -> Iterable[dict]:
    """Finished rows of ``spec`` in ``out``'s journal (for inspection while a sweep runs)."""
    return Journal(out).rows(sc.id for sc in spec.scenarios)


__all__ = ["SweepReport", "run_sweep", "check_sweep", "iter_rows"]
