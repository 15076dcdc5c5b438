"""What a simulation returns: step time, breakdown on the critical rank (overlap not double
counted), exposed vs overlapped communication, per-rank timelines and per-link traffic, with
exports to pandas, JSON and Chrome trace (Perfetto / chrome://tracing)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from moesim.io import write_text_atomic
from moesim.workload.ops import COMM_PHASES, PHASES


class Span(NamedTuple):
    stream: str
    name: str
    phase: str
    layer: int
    direction: str
    start: float
    end: float


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of intervals (seconds)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


@dataclass
class SimResult:
    cfg: object
    program: object
    classes: object
    class_spans: list
    collective_spans: list
    end_time: np.ndarray
    link_bytes: pd.DataFrame
    topology: object
    profile: object
    cpu_pool: tuple | None = None     # (effective cores, alone factor) when ranks shared cores
    _cache: dict = field(default_factory=dict, repr=False)

    # ---- headline numbers ---------------------------------------------------------------------------
    @property
    def step_time_s(self) -> float:
        return float(self.end_time.max()) if self.end_time.size else 0.0

    @property
    def critical_class(self) -> int:
        return int(np.argmax(self.end_time))

    @property
    def critical_rank(self) -> int:
        return int(self.classes.members[self.critical_class][0])

    @property
    def tokens_per_s(self) -> float:
        return self.cfg.step_tokens / self.step_time_s if self.step_time_s > 0 else float("inf")

    def _class_breakdowns(self) -> list[dict]:
        """Per rank class, seconds per phase on its compute stream (compute ops plus the time it waits
        for a collective, attributed to that collective's phase)."""
        if "class_breakdowns" not in self._cache:
            per = []
            for spans in self.class_spans:
                out = dict.fromkeys(PHASES, 0.0)
                for s in spans:
                    out[s.phase] = out.get(s.phase, 0.0) + (s.end - s.start)
                per.append({k: float(v) for k, v in out.items()})
            self._cache["class_breakdowns"] = per
        return self._cache["class_breakdowns"]

    @property
    def breakdown_s(self) -> dict:
        """Seconds per phase on the critical rank's compute stream: compute ops, plus the time it
        waits for a collective (attributed to that collective's phase). Sums to the step time."""
        return self._class_breakdowns()[self.critical_class]

    @property
    def mean_breakdown_s(self) -> dict:
        """Seconds per phase averaged over the ranks (each rank class weighted by its ranks): compute
        ops plus the time a rank waits for a collective (attributed to its phase), as a real run's
        phase table gives them (``real_backend.run``: the mean over ranks). Sums to the mean over
        ranks of the time their compute streams end, not to the step time."""
        if "mean_breakdown" not in self._cache:
            sizes = [len(m) for m in self.classes.members]
            per = self._class_breakdowns()
            total = float(sum(sizes)) or 1.0
            phases = dict.fromkeys(k for bd in per for k in bd)
            self._cache["mean_breakdown"] = {k: sum(n * bd.get(k, 0.0) for n, bd in zip(sizes, per)) / total
                                             for k in phases}
        return self._cache["mean_breakdown"]

    def _waits(self, phase: str | None = None) -> float:
        return float(sum(s.end - s.start for s in self.class_spans[self.critical_class]
                         if s.name.startswith("wait:") and (phase is None or s.phase == phase)))

    @property
    def exposed_comm_s(self) -> float:
        """Time the critical rank's compute stream waited on communication (local permutes, which
        the breakdown counts under dispatch/combine as the real backend does, are compute)."""
        return self._waits()

    @property
    def comm_busy_s(self) -> float:
        """Time during which at least one collective was in flight."""
        return _union_length([(s.start, s.end) for s in self.collective_spans])

    @property
    def overlapped_comm_s(self) -> float:
        """Communication time hidden behind compute on the critical rank."""
        return max(0.0, self.comm_busy_s - self.exposed_comm_s)

    def compute_share(self) -> np.ndarray | None:
        """Per rank class, the share of a core its compute got: alone work (s) over the wall time (s)
        its compute ops took (1 = a core to itself); None when the ranks did not share cores. The
        scheduler probe (``real_backend.schedprobe``) measures the same kind of share on the testbed."""
        if self.cpu_pool is None:
            return None
        alone = self.classes.durations.sum(axis=1) * self.cpu_pool[1]
        wall = np.array([sum(s.end - s.start for s in spans if s.stream == "compute" and not s.name.startswith("wait:"))
                         for spans in self.class_spans])
        return np.divide(alone, wall, out=np.ones_like(alone), where=wall > 0)

    def comm_by_phase(self) -> dict:
        """Per communication phase: busy seconds (union of its collectives) and exposed seconds."""
        out = {}
        for ph in COMM_PHASES:
            busy = _union_length([(s.start, s.end) for s in self.collective_spans if s.phase == ph])
            out[ph] = {"busy_s": busy, "exposed_s": self._waits(ph)}
        return out

    @property
    def a2a_bytes(self) -> float:
        """All-to-All bytes of the step that left a rank (summed over ranks)."""
        return self.program.a2a_bytes()

    # ---- tables ------------------------------------------------------------------------------------------
    def timeline(self, ranks: str = "classes") -> pd.DataFrame:
        """One row per op span: compute spans (and waits) of each rank class (``rank`` is its lowest
        rank, ``ranks_in_class`` how many ranks share it) and the collectives on their channels."""
        rows = []
        for c, spans in enumerate(self.class_spans):
            rep, size = int(self.classes.members[c][0]), len(self.classes.members[c])
            rows.extend((c, rep, size, *s) for s in spans)
        rows.extend((-1, -1, self.cfg.world_size, *s) for s in self.collective_spans)
        df = pd.DataFrame(rows, columns=["rank_class", "rank", "ranks_in_class", "stream", "name", "phase",
                                         "layer", "direction", "start_s", "end_s"])
        df["duration_s"] = df["end_s"] - df["start_s"]
        return df

    def breakdown_frame(self) -> pd.DataFrame:
        bd = self.breakdown_s
        return pd.DataFrame({"phase": list(bd), "seconds": list(bd.values()),
                             "share": [v / self.step_time_s if self.step_time_s else 0.0 for v in bd.values()]})

    def links(self) -> pd.DataFrame:
        """Bytes and utilisation (bytes / (capacity * step time)) per directed link."""
        df = self.link_bytes.copy()
        if len(df) and self.step_time_s > 0:
            df["utilisation"] = df["bytes"] / (df["capacity"] * self.step_time_s)
        return df

    def bytes_by_link_class(self) -> dict:
        df = self.link_bytes
        if not len(df):
            return {}
        return {str(k): float(v) for k, v in df.groupby("link_class")["bytes"].sum().items()}

    # ---- exports -----------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """JSON-able summary (SI units)."""
        cfg = self.cfg
        return {
            "model": cfg.model.name,
            "structure": cfg.moe.structure,
            "mode": cfg.run.mode,
            "top_k": cfg.moe.top_k,
            "world_size": cfg.world_size,
            "parallel": {"dp": cfg.parallel.dp_size, "tp": cfg.parallel.tp, "ep": cfg.parallel.ep},
            "step_time_s": self.step_time_s,
            "tokens_per_step": cfg.step_tokens,
            "tokens_per_s": self.tokens_per_s,
            "breakdown_s": self.breakdown_s,
            "exposed_comm_s": self.exposed_comm_s,
            "overlapped_comm_s": self.overlapped_comm_s,
            "comm_by_phase": self.comm_by_phase(),
            "a2a_bytes_per_step": self.a2a_bytes,
            "bytes_by_link_class": self.bytes_by_link_class(),
            "critical_rank": self.critical_rank,
            "rank_classes": self.classes.count,
            "dropped_fraction": self.program.info.get("dropped_fraction", 0.0),
            "profile": {"name": self.profile.name, "status": self.profile.status},
            **({"cpu_pool": {"pool_cores": float(self.cpu_pool[0]), "alone_factor": float(self.cpu_pool[1]),
                             "compute_share": [float(x) for x in self.compute_share()]}}
               if self.cpu_pool is not None else {}),
        }

    def chrome_trace(self, max_classes: int = 64) -> dict:
        """Chrome trace-event JSON (microseconds): one process per rank class, threads per stream."""
        events = []
        for c, spans in enumerate(self.class_spans[:max_classes]):
            rep, size = int(self.classes.members[c][0]), len(self.classes.members[c])
            events.append({"ph": "M", "name": "process_name", "pid": c,
                           "args": {"name": f"rank {rep}" + (f" (+{size - 1} alike)" if size > 1 else "")}})
            events.extend(_event(s, c, 0) for s in spans if s.end > s.start)
        net_pid = len(self.class_spans[:max_classes])
        events.append({"ph": "M", "name": "process_name", "pid": net_pid, "args": {"name": "collectives"}})
        channels = sorted({s.stream for s in self.collective_spans})
        for s in self.collective_spans:
            events.append(_event(s, net_pid, 1 + channels.index(s.stream)))
        for i, ch in enumerate(channels):
            events.append({"ph": "M", "name": "thread_name", "pid": net_pid, "tid": 1 + i, "args": {"name": ch}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"step_time_s": self.step_time_s, "structure": self.cfg.moe.structure}}

    def write_chrome_trace(self, path) -> None:
        write_text_atomic(path, json.dumps(self.chrome_trace()))


def _event(s: Span, pid: int, tid: int) -> dict:
    return {"ph": "X", "name": s.name, "cat": s.phase, "pid": pid, "tid": tid, "ts": s.start * 1e6,
            "dur": (s.end - s.start) * 1e6, "args": {"phase": s.phase, "layer": s.layer, "direction": s.direction}}
