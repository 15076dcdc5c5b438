"""Simulate one of a campaign's configurations as it was measured: the campaign's profile, and the
topology and All-to-All traffic of its committed runs of that configuration."""
from __future__ import annotations

from pathlib import Path

from moesim.errors import MoesimError


class CampaignSimulator:
    """The campaign directory ``campaign`` (``validation/`` with a manifest naming its profile), loaded
    once; :meth:`simulate` runs any of its configurations (e.g. ``4x1-400mbit-cdac-k2``)."""

    def __init__(self, campaign: str | Path):
        from moesim.calibrate.profile_io import raw_profile
        from moesim.validate.core import resolve_inputs
        self.campaign = Path(campaign)
        camp = resolve_inputs([campaign])
        if not camp.profile:
            raise MoesimError(f"{campaign}: a campaign directory with a manifest naming its profile is needed")
        self.profile, _ = raw_profile(camp.profile)
        self._specs = {s.path.name: s for s in camp.runs}

    def simulate(self, config: str, **engine):
        """The SimResult of ``config`` simulated like its committed runs (their first run's topology, their
        mean All-to-All copies, real_backend's gradient bucket); None when the campaign has no run of it.
        ``engine``: what-if overrides of the engine's shared-core settings
        (:data:`moesim.validate.core.ENGINE_WHAT_IF`)."""
        from moesim.calibrate.campaign import committed_runs
        from moesim.engine import SimOptions, simulate
        from moesim.validate.core import REAL_BACKEND_BUCKET_BYTES, check_engine, load_run, mean_copies, topology_for
        engine = check_engine(engine)
        runs = [load_run(self._specs[x.name]) for x in committed_runs(self.campaign, config) if x.name in self._specs]
        if not runs:
            return None
        topo, _ = topology_for(runs[0].spec, runs[0].table)
        return simulate(runs[0].cfg, topo, self.profile, SimOptions(bucket_bytes=REAL_BACKEND_BUCKET_BYTES,
                                                                     a2a_copies=mean_copies(runs), **engine))
