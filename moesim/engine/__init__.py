"""The SimPy engine: simulate one training iteration or inference step on a topology."""
from moesim.engine.result import SimResult
from moesim.engine.simulator import SimOptions, Simulation, simulate

__all__ = ["SimOptions", "SimResult", "Simulation", "simulate"]
