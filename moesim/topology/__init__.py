"""Cluster topologies: the file format (node-link JSON or GraphML), validation, generators, summaries.

>>> from moesim.topology.generators import bigmac_paper
>>> topo = bigmac_paper()
>>> topo.num_gpus, topo.hosts[:2], topo.host_of(9), topo.device_of(0)
(32, ['node0', 'node1'], 'node1', 'paper-gpu-48gb')
"""
from moesim.topology.fileio import load_topology, save_topology
from moesim.topology.model import Topology
from moesim.topology.schema import KINDS
from moesim.topology.summary import bisection_bandwidth, summarize

__all__ = ["Topology", "load_topology", "save_topology", "KINDS", "summarize", "bisection_bandwidth"]
