"""Parameters of the network model that do not come from the topology."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkParams:
    """latency_per_message_s: added to every flow's path latency (s), the alpha of an alpha-beta model.
    collective_overhead_s: launch overhead before a collective's first stage (s).
    receiver_wait_s: the least time a message takes from its stage's start (s), overlapped with its
    transfer (once per stage, a pipelined ring included): the wait for a receiver that is descheduled
    while the kernel already buffers its data (oversubscribed cores). 0 = off.
    The defaults are typical values; calibration profiles supply measured ones."""
    latency_per_message_s: float = 5e-6
    collective_overhead_s: float = 10e-6
    receiver_wait_s: float = 0.0

    def __post_init__(self):
        for name in ("latency_per_message_s", "collective_overhead_s", "receiver_wait_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"NetworkParams.{name} must be a finite number >= 0, got {v!r}")
