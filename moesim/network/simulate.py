"""Simulate one collective alone on an idle network."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.network.fluid import FluidNetwork
from moesim.network.params import NetworkParams
from moesim.network.stages import Collective
from moesim.topology.model import Topology

RECORD_LIMIT = 1_000_000


@dataclass
class CollectiveResult:
    """Outcome of :func:`simulate_collective` (times in seconds, sizes in bytes).

    time_s: from the start to the last byte of the last stage (launch overhead included).
    stage_times: duration of each stage run, in order (a stage with ``repeat`` k appears k times).
    flow_finish_times: per stage run, when each flow's last byte arrived (s after the start), aligned
    with ``stage.src`` / ``stage.dst``; None when not recorded (more than ``RECORD_LIMIT`` flows).
    link_bytes: per directed link: src, dst, link_class, capacity, latency, cost, bytes.
    bytes_by_class: bytes summed per link class (a byte crossing three links counts three times).
    """
    time_s: float
    stage_times: list[float]
    flow_finish_times: list[np.ndarray] | None
    link_bytes: pd.DataFrame
    bytes_by_class: dict[str, float]


def simulate_collective(topology: Topology, collective: Collective, params: NetworkParams | None = None,
                        record_flows: bool | None = None) -> CollectiveResult:
    """Run ``collective`` alone on an idle ``topology`` from t = 0."""
    net = FluidNetwork(topology, params)
    n_flows = sum(s.num_flows * s.repeat for s in collective.stages)
    record = n_flows <= RECORD_LIMIT if record_flows is None else bool(record_flows)
    net.start(collective, "collective", 0.0, record_flows=record)
    net.run_until_idle()
    timing = net.timings["collective"]
    ends = timing.stage_end_s
    starts = [timing.start_s + net.params.collective_overhead_s] + list(ends[:-1])
    finish = [t - timing.start_s for t in net.flow_finish_times("collective")] if record else None
    return CollectiveResult(timing.time_s, [e - s for e, s in zip(ends, starts)], finish,
                            net.link_traffic(), net.bytes_by_class())
