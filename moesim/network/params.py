"""Parameters of the network model that do not come from the topology."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkParams:
    """latency_per_message_s: added to every flow's path latency (s), the alpha of an alpha-beta model.
    collective_overhead_s: launch overhead before a collective's first stage (s).
    The defaults are typical values; calibration profiles supply measured ones."""
    latency_per_message_s: float = 5e-6
    collective_overhead_s: float = 10e-6

    def __post_init__(self):
        for name in ("latency_per_message_s", "collective_overhead_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"NetworkParams.{name} must be a finite number >= 0, got {v!r}")
