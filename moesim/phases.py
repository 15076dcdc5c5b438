"""The one phase vocabulary used by simulator breakdowns, real measurements and plots.
``dispatch`` and ``combine`` are the All-to-Alls."""
from __future__ import annotations

PHASES = ("embedding", "attention", "tp_comm", "gate", "descend", "dispatch", "experts", "shared_experts",
          "combine", "ascend", "lm_head", "grad_allreduce", "optimizer")
COMM_PHASES = ("tp_comm", "dispatch", "combine", "grad_allreduce")
