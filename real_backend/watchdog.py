"""Bounded failure: a per-rank watchdog thread that ends the process when it makes no progress,
and names the rank at fault.

Each rank's main thread updates a ``Progress`` (phase, step, current collective) at every phase
boundary. The watchdog thread publishes a heartbeat (pid, host, progress, wall time) in the
process group's store every ``period`` seconds. After ``timeout`` seconds without progress it
prints one message and exits the process (status 124):

* stuck *outside* a collective: "rank R is hung ... in phase P";
* stuck *inside* a collective: "rank R timed out waiting in collective C; hung or failed rank(s): ..."
  naming peers whose process is gone (same host: pid check), whose heartbeat stopped, or that are
  stuck outside a collective.

A collective that fails at once because a peer died (connection reset) goes through the same
diagnosis (``diagnose``) from the runner's exception handler. The process-group timeout is set to
the same value as a second line of defence.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Optional

from real_backend.timing import Progress

EXIT_TIMEOUT = 124
_report_lock = threading.Lock()


def _store():
    try:
        import torch.distributed as dist
        if not dist.is_initialized():
            return None
        from torch.distributed import distributed_c10d
        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - diagnosis is best effort
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Watchdog(threading.Thread):
    def __init__(self, progress: Progress, rank: int, world: int, timeout: float, prog: str = "real_backend.run",
                 period: Optional[float] = None):
        super().__init__(name="moesim-watchdog", daemon=True)
        self.progress = progress
        self.rank, self.world = rank, world
        self.timeout = float(timeout)
        self.prog = prog
        self.period = period or max(0.5, min(5.0, self.timeout / 10))
        self.host = socket.gethostname()
        self._stop_event = threading.Event()
        self.poll = max(0.05, min(0.5, self.timeout / 20))
        self._store_lock = threading.Lock()

    def start(self) -> None:
        self.publish()  # first heartbeat before any failure can happen
        super().start()

    def stop(self) -> None:
        self._stop_event.set()

    @staticmethod
    def _key(rank: int) -> str:
        return f"moesim_watchdog/{rank}"

    def publish(self) -> None:
        """Heartbeat: this rank's state, pid, host and wall time in the store."""
        if self.world <= 1:
            return
        store = _store()
        if store is None:
            return
        state = dict(self.progress.describe(), rank=self.rank, pid=os.getpid(), host=self.host, wall=time.time())
        try:
            with self._store_lock:
                store.set(self._key(self.rank), json.dumps(state))
        except Exception:  # noqa: BLE001
            pass

    def peers(self) -> dict[int, Optional[dict]]:
        store = _store()
        out: dict[int, Optional[dict]] = {}
        if store is None:
            return out
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                with self._store_lock:
                    out[r] = json.loads(store.get(self._key(r)).decode()) if store.check([self._key(r)]) else None
            except Exception:  # noqa: BLE001
                out[r] = None
        return out

    def suspects(self) -> list[str]:
        """Peers that look dead, unresponsive, or hung outside a collective."""
        found = []
        now = time.time()
        for r, st in sorted(self.peers().items()):
            if st is None:
                found.append(f"rank {r} (never reported: not started or unreachable)")
            elif st.get("host") == self.host and not pid_alive(int(st.get("pid", -1))):
                found.append(f"rank {r} (its process {st.get('pid')} has exited; last seen in phase "
                             f"'{st.get('phase')}' of step {st.get('step')})")
            elif now - st.get("wall", 0) > 3 * self.period + 1:
                found.append(f"rank {r} (no heartbeat for {now - st.get('wall', 0):.0f} s: exited or frozen; last "
                             f"seen in phase '{st.get('phase')}' of step {st.get('step')})")
            elif st.get("collective") is None and st.get("stalled_s", 0) > self.timeout / 2:
                found.append(f"rank {r} (stuck in phase '{st.get('phase')}' ({st.get('direction')}) of step "
                             f"{st.get('step')}, outside any collective)")
        return found

    def diagnose(self, stalled: Optional[float] = None, settle: float = 0.0) -> str:
        p = self.progress
        stalled = time.monotonic() - p.last if stalled is None else stalled
        where = f"phase '{p.phase}' ({p.direction}) of step {p.step}"
        if p.collective is None:
            return (f"{self.prog}: rank {self.rank} is hung: no progress for {stalled:.0f} s in {where}, "
                    f"outside any collective")
        msg = f"{self.prog}: rank {self.rank} stopped in collective '{p.collective}' after {stalled:.1f} s ({where})"
        if self.world > 1:
            self.publish()
            deadline = time.monotonic() + settle
            found = self.suspects()
            while not found and time.monotonic() < deadline:
                time.sleep(0.1)
                found = self.suspects()
            msg += "; hung or failed: " + "; ".join(found) if found else "; no peer identified as the cause"
        return msg

    def run(self) -> None:
        last_beat = 0.0
        while not self._stop_event.wait(self.poll):
            now = time.monotonic()
            if now - last_beat >= self.period:
                self.publish()
                last_beat = now
            stalled = now - self.progress.last
            if stalled > self.timeout:
                report(self.diagnose(stalled, settle=min(2.0, self.period)), EXIT_TIMEOUT)


def report(message: str, code: int) -> None:
    """Print ``message`` once per process and exit at once with ``code`` (no cleanup that could hang)."""
    if _report_lock.acquire(blocking=False):
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        print(message, file=sys.stderr, flush=True)
        os._exit(code)
    while True:  # another thread is already reporting: it ends the process
        time.sleep(1)
