"""Run configuration: schema, presets and loading with dotted overrides."""
from moesim.config.schema import (DTYPE_BYTES, Config, ModelSpec, MoESpec, ParallelSpec, RunSpec)
from moesim.config.loader import PRESETS, apply_overrides, load_config, preset_names

__all__ = ["Config", "ModelSpec", "MoESpec", "ParallelSpec", "RunSpec", "DTYPE_BYTES",
           "PRESETS", "apply_overrides", "load_config", "preset_names"]
