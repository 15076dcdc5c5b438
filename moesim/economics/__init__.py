"""Cost estimation: turn simulated step times and traffic into training time, inference latency,
throughput and dollars (per step, per 1B tokens, per training run, per million generated tokens).

>>> from moesim.economics import CostInputs, StepMeasure, step_costs
>>> step = StepMeasure(mode="train", step_time_s=2.0, tokens_per_step=1_000_000, gpus=8)
>>> c = step_costs(step, CostInputs(gpu_hour_usd=3.6, train_tokens=1e9))
>>> round(c["usd_per_step"], 6), c["train_steps"], c["train_time_s"], round(c["train_usd"], 3)
(0.016, 1000, 2000.0, 16.0)
"""
from moesim.economics.model import (COST_FIELDS, CostInputs, StepMeasure, compare, internode_bytes, parse_count,
                                    serving_costs, step_costs)

__all__ = ["COST_FIELDS", "CostInputs", "StepMeasure", "compare", "internode_bytes", "parse_count",
           "serving_costs", "step_costs"]
