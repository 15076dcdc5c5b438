"""The phase vocabulary shared with the simulator (DESIGN.md section 2) and the direction values."""
from __future__ import annotations

from moesim.phases import PHASES  # noqa: F401  (one vocabulary for simulator and backend)

#: Values of the ``direction`` column: forward, backward, or neither (optimizer, whole step).
DIRECTIONS = ("fwd", "bwd", "none")
