"""The flow-level network model: ECMP routing, max-min fair fluid sharing, collectives as stages of flows.

>>> from moesim.topology.generators import bigmac_paper
>>> from moesim.network import NetworkParams, simulate_collective, collectives
>>> topo = bigmac_paper()
>>> res = simulate_collective(topo, collectives.all_to_all(range(32), 64e6, topo), NetworkParams())
>>> round(res.time_s * 1e3, 2)  # ms: 384 MB leave each machine through one 12.5 GB/s NIC
30.74
"""
from moesim.network import collectives
from moesim.network.fluid import CollectiveTiming, FluidNetwork
from moesim.network.params import NetworkParams
from moesim.network.maxmin import max_min_rates
from moesim.network.routing import Router, Routes, router_for
from moesim.network.simulate import CollectiveResult, simulate_collective
from moesim.network.stages import Collective, FlowStage, Stage, UniformStage

__all__ = ["NetworkParams", "FluidNetwork", "CollectiveTiming", "simulate_collective", "CollectiveResult",
           "collectives", "Collective", "Stage", "UniformStage", "FlowStage", "max_min_rates", "Router",
           "Routes", "router_for"]
