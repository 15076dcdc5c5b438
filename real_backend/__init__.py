"""Real PyTorch backend for moesim: CDAC and BigMac (DCCA) MoE layers with expert parallelism,
per-phase timing, microbenchmarks and a network-namespace testbed.

Importing this package does not import torch; the torch modules are ``real_backend.layers``,
``real_backend.parallel``, ``real_backend.run``, ``real_backend.microbench`` ... The table reader
``real_backend.results`` works without torch too.
"""
from __future__ import annotations

from real_backend.phases import DIRECTIONS, PHASES

__all__ = ["PHASES", "DIRECTIONS"]
