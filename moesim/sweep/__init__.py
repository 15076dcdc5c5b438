"""What-if sweeps: a YAML grid/list of scenarios (config keys, topology parameters, profile,
All-to-All algorithm, cost inputs) run in parallel (local processes or Dask), resumably, into
one tidy row per scenario (Parquet).

>>> from moesim.sweep import load_sweep
>>> spec = load_sweep({"base": {"model": "gpt3-medium"},
...                    "grid": {"moe.structure": ["cdac", "dcca"], "topology.nic_bandwidth": ["100 Gbit/s", "200 Gbit/s"]}})
>>> len(spec.scenarios), spec.scenarios[1].inputs["topology.nic_bandwidth"]
(4, 25000000000.0)
"""
from moesim.sweep.runner import SweepReport, check_sweep, run_sweep
from moesim.sweep.scenario import build_config, build_topology, default_layout, run_scenario, simulate_scenario
from moesim.sweep.spec import Scenario, SweepSpec, SweepSpecError, load_sweep, parse_spec
from moesim.sweep.store import journal_dir, read_table

__all__ = ["Scenario", "SweepReport", "SweepSpec", "SweepSpecError", "build_config", "build_topology",
           "check_sweep", "default_layout", "journal_dir", "load_sweep", "parse_spec", "read_table", "run_scenario",
           "run_sweep", "simulate_scenario"]
