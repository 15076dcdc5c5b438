"""Predicted vs measured step and phase times (``moesim validate``)."""
from moesim.validate.core import REAL_BACKEND_BUCKET_BYTES, measured_times, resolve_inputs, validate

__all__ = ["validate", "measured_times", "resolve_inputs", "REAL_BACKEND_BUCKET_BYTES"]
