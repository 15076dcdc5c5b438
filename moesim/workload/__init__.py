"""Workload builder: a config becomes one step's operation graph (compute ops + collectives)."""
from moesim.workload.builder import build_program
from moesim.workload.ops import COMM_PHASES, PHASES, CollectiveSpec, Compute, Launch, Program, Wait
from moesim.workload.routing import RoutingPlan, expert_pick_probability, plan_routing

__all__ = ["build_program", "Program", "Compute", "CollectiveSpec", "Launch", "Wait", "PHASES", "COMM_PHASES",
           "RoutingPlan", "expert_pick_probability", "plan_routing"]
