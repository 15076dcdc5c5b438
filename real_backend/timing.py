"""Per-phase timing without barriers, and a ledger of the bytes passed to collectives.

Forward phases are timed by ``with rec.fwd(phase):`` (a stamp on entry and one on exit).
Backward phases are timed by markers: ``x = rec.mark(x, phase)`` at the *input* of a phase inserts
an identity autograd node whose backward fires when the gradient w.r.t. the phase's input is
complete, i.e. when the phase's backward has finished. Each marker firing closes an interval that
started at the previous backward stamp (``bwd_begin`` or the previous marker), so the backward
phase times add up exactly to the backward wall time. The autograd engine runs ready nodes in
reverse creation order, so with the layers' forward ordering each interval holds its own phase's
backward (see the MoE layer's comments).

Stamps are ``time.perf_counter()`` on CPU (ops are synchronous there, so host time is the op
time) and CUDA events on GPU (resolved after the step, one synchronisation per step). On CPU each
interval also carries the CPU time its recording thread spent in it (``time.thread_time()``, s: the
rank's main thread, which runs the forward, the backward of CPU tensors and the collective calls;
gloo's own threads are not in it), or None where it cannot be read (GPU, or a backward marker fired
on another thread).
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from typing import Any, Iterator, Optional

import torch


class Progress:
    """What this rank is doing now; read by the watchdog thread (plain attribute writes, no locks)."""

    __slots__ = ("step", "phase", "direction", "collective", "last", "stage")

    def __init__(self) -> None:
        self.step = -1
        self.phase = "setup"
        self.direction = "none"
        self.collective: Optional[str] = None
        self.stage = "setup"
        self.last = time.monotonic()

    def touch(self, phase: str | None = None, direction: str | None = None) -> None:
        if phase is not None:
            self.phase = phase
        if direction is not None:
            self.direction = direction
        self.last = time.monotonic()

    @contextlib.contextmanager
    def collective_call(self, name: str) -> Iterator[None]:
        """Mark the time inside a collective. On an exception the name stays set, so the failure
        handler can tell where the rank stopped."""
        self.collective = name
        self.last = time.monotonic()
        yield
        self.collective = None
        self.last = time.monotonic()

    def describe(self) -> dict:
        return {"step": self.step, "phase": self.phase, "direction": self.direction,
                "collective": self.collective, "stage": self.stage,
                "stalled_s": round(time.monotonic() - self.last, 3)}


class Recorder:
    """Collects phase intervals and collective byte counts for one step at a time.

    ``enabled=False`` makes every method a cheap no-op (markers are not inserted)."""

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True,
                 progress: Optional[Progress] = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.enabled = enabled
        self.progress = progress or Progress()
        self.fail_hook = None  # test-only failure injection: callable(phase, direction)
        self.reset()

    # ---- stamps ----------------------------------------------------------------------------
    def stamp(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def reset(self) -> None:
        #: (phase, direction, start stamp, end stamp, CPU s of the recording thread or None)
        self.intervals: list[tuple[str, str, Any, Any, Optional[float]]] = []
        self.comm: list[tuple[str, str, int, Optional[int]]] = []
        self._bwd_last = None
        self._bwd_cpu: Optional[float] = None
        self._lock = threading.Lock()
        self._thread = threading.get_ident()

    def cpu_stamp(self) -> Optional[float]:
        """CPU seconds of the calling thread so far (``time.thread_time``) when it is the recording
        thread of a CPU run; None otherwise (GPU stamps are not host time)."""
        if self.cuda or threading.get_ident() != self._thread:
            return None
        return time.thread_time()

    @staticmethod
    def cpu_between(a: Optional[float], b: Optional[float]) -> Optional[float]:
        """CPU seconds between two :meth:`cpu_stamp` values (None if either is None)."""
        return None if a is None or b is None else b - a

    # ---- forward / generic intervals -----------------------------------------------------------
    @contextlib.contextmanager
    def interval(self, phase: str, direction: str) -> Iterator[None]:
        self.progress.touch(phase, direction)
        if self.fail_hook is not None:
            self.fail_hook(phase, direction)
        if not self.enabled:
            yield
            return
        c0, t0 = self.cpu_stamp(), self.stamp()
        yield
        t1 = self.stamp()
        self.intervals.append((phase, direction, t0, t1, self.cpu_between(c0, self.cpu_stamp())))

    def fwd(self, phase: str):
        return self.interval(phase, "fwd")

    # ---- backward markers ---------------------------------------------------------------------
    def mark(self, x: torch.Tensor, phase: str) -> torch.Tensor:
        """Identity on ``x``; its backward closes the ``phase`` backward interval."""
        if not self.enabled or not torch.is_grad_enabled() or not x.requires_grad:
            return x
        return _Mark.apply(x, self, phase)

    def bwd_begin(self) -> None:
        self.progress.touch("lm_head", "bwd")
        if self.enabled:
            self._bwd_cpu, self._bwd_last = self.cpu_stamp(), self.stamp()

    def bwd_event(self, phase: str) -> None:
        self.progress.touch(phase, "bwd")
        if self.fail_hook is not None:
            self.fail_hook(phase, "bwd")
        if not self.enabled or self._bwd_last is None:
            return
        t, c = self.stamp(), self.cpu_stamp()
        with self._lock:
            self.intervals.append((phase, "bwd", self._bwd_last, t, self.cpu_between(self._bwd_cpu, c)))
            self._bwd_last, self._bwd_cpu = t, c

    def bwd_end(self, phase: str = "embedding") -> None:
        """Call after ``backward()`` returns: the remaining time (embedding gradient) goes to ``phase``."""
        self.bwd_event(phase)
        self._bwd_last = self._bwd_cpu = None

    # ---- bytes ---------------------------------------------------------------------------------
    def add_bytes(self, phase: str, direction: str, nbytes: int, remote: Optional[int] = None) -> None:
        if self.enabled:
            self.comm.append((phase, direction, int(nbytes), None if remote is None else int(remote)))

    # ---- results -------------------------------------------------------------------------------
    def _seconds(self, a: Any, b: Any) -> float:
        if self.cuda:
            return a.elapsed_time(b) / 1e3
        return b - a

    def summary(self) -> dict[tuple[str, str], dict]:
        """{(phase, direction): {seconds, count, bytes, bytes_remote}} for the intervals since reset."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        out: dict[tuple[str, str], dict] = defaultdict(
            lambda: {"seconds": 0.0, "count": 0, "bytes": 0, "bytes_remote": None})
        for phase, direction, a, b, _cpu in self.intervals:
            rec = out[(phase, direction)]
            rec["seconds"] += self._seconds(a, b)
            rec["count"] += 1
        for phase, direction, nbytes, remote in self.comm:
            rec = out[(phase, direction)]
            rec["bytes"] += nbytes
            if remote is not None:
                rec["bytes_remote"] = (rec["bytes_remote"] or 0) + remote
        return dict(out)

    def bytes_by(self, phase: str, direction: str | None = None, remote: bool = False) -> int:
        """Sum of the recorded bytes for ``phase`` (and ``direction``); ``remote``: only bytes to other ranks."""
        total = 0
        for p, d, nbytes, rem in self.comm:
            if p == phase and (direction is None or d == direction):
                total += (rem or 0) if remote else nbytes
        return total


class _Mark(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rec, phase):  # noqa: D401 - autograd API
        ctx.rec = rec
        ctx.phase = phase
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.rec.bwd_event(ctx.phase)
        return grad, None, None


NULL = Recorder(enabled=False)
