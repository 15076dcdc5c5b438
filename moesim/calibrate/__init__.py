"""Calibration: read real_backend measurement tables, fit the cost model's compute, memory and
network parameters, and write measured profiles with provenance (``moesim calibrate``).

Importing this package needs neither torch nor scipy; :mod:`moesim.calibrate.membench` (a
microbenchmark) and :mod:`moesim.calibrate.campaign` (the testbed campaign) run torch in
subprocesses or when executed."""
from moesim.calibrate.core import Calibration, calibrate, expand_paths
from moesim.calibrate.netmodel import LinkParams, effective_topology
from moesim.calibrate.profile_io import link_params, raw_profile, write_profile
from moesim.calibrate.tables import Table, read_table

__all__ = ["calibrate", "Calibration", "expand_paths", "read_table", "Table", "write_profile", "raw_profile",
           "link_params", "LinkParams", "effective_topology"]
