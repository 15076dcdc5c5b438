"""Compute first on the shared cores: a rank that returns from a collective computes ahead of the
All-to-All CPU of the ranks still in a call for one slice (moesim.engine.cpupool), which is how a call
releases its ranks apart; the engine option and the campaign's command (the profile field: test_shared_cores)."""
import dataclasses

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.calibrate import netmodel
from moesim.calibrate.arrivals import call_spreads, simulated_timeline
from moesim.calibrate.campaign import fit_command
from moesim.cost import find_profile
from moesim.engine import SimOptions, simulate
from moesim.engine.cpupool import CorePool
from moesim.topology import Topology
from test_shared_cores import _campaign_cfg

AVX2 = "calibration/avx2/cpu-testbed-avx2.yaml"


def _exits(compute_first: bool, quantum=2.0, exchange=1.0, work=5.0):
    """Four ranks leave a call at t = 0: each runs ``exchange`` s of All-to-All CPU, then ``work`` s of
    compute, on 2 cores in slices of ``quantum``. Returns (exchange done, compute done) per rank."""
    env = simpy.Environment()
    pool = CorePool(env, 2.0, quantum, 2, compute_first)
    out = [[None, None] for _ in range(4)]

    def rank(i):
        yield pool.run(exchange, exchange=True)
        out[i][0] = env.now
        yield pool.run(work)
        out[i][1] = env.now

    for i in range(4):
        env.process(rank(i))
    env.run()
    return np.array(out)


def test_compute_first_closed_form():
    """Ranks 0 and 1 finish their exchange at 1 s. Compute first: their compute takes both cores for a
    2 s slice, so ranks 2 and 3 finish their exchange at 4 s (3 s apart); then the four computes share
    the cores in slices. Without it, 2 and 3 run next and leave at 2 s (1 s apart)."""
    on = _exits(True)
    assert on[:, 0] == pytest.approx([1.0, 1.0, 4.0, 4.0])
    # from 4 s: 0 and 1 have 3 s left (they ran [1, 3]), 2 and 3 have 5 s; slices of 2 s round-robin
    # over [0, 1, 2, 3]: 0, 1 run [4, 6] (1 s left), 2, 3 run [6, 8] (3 s left), 0, 1 end at 9, and
    # 2, 3 then have the cores to themselves and end at 12
    assert on[:, 1] == pytest.approx([9.0, 9.0, 12.0, 12.0])
    off = _exits(False)
    assert off[:, 0] == pytest.approx([1.0, 1.0, 2.0, 2.0])
    # without slices the option does nothing (processor sharing has no queue to go ahead in)
    assert _exits(True, quantum=0.0)[:, 0] == pytest.approx(_exits(False, quantum=0.0)[:, 0])
    assert _exits(True, quantum=0.0)[:, 0] == pytest.approx([2.0] * 4)


def test_compute_first_never_pushes_compute_off_a_core():
    """Only exchange work yields: a compute job on a core keeps it when another compute job arrives."""
    env = simpy.Environment()
    pool = CorePool(env, 2.0, 1.0, 2, compute_first=True)
    done = {}

    def job(name, at, work, exchange=False):
        yield env.timeout(at)
        yield pool.run(work, exchange=exchange)
        done[name] = env.now

    # at 0: [c1, x1, x2]; at 1 the slices of c1 and x1 end: [x2, c1, x1], c1 on a core behind x2;
    # at 1.5 c2 arrives and takes x2's core, not c1's: c1 keeps running and ends at 1.8, within its slice
    env.process(job("c1", 0.0, 1.8))
    env.process(job("x1", 0.0, 10.0, True))
    env.process(job("x2", 0.0, 10.0, True))
    env.process(job("c2", 1.5, 0.2))
    env.run()
    assert done["c1"] == pytest.approx(1.8)
    assert done["c2"] == pytest.approx(1.7)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.05, 3.0), st.booleans()), min_size=1, max_size=6),
       st.sampled_from([1, 2, 3]), st.sampled_from([0.01, 0.3, 1.0]))
def test_compute_first_conserves_work(jobs, cores, quantum):
    """Whatever the order, no job runs faster than alone, the cores never do more than they can, and
    the cores finish the same total work no later than they would idle-free plus one slice per job."""
    env = simpy.Environment()
    pool = CorePool(env, float(cores), quantum, cores, compute_first=True)
    ends = [None] * len(jobs)

    def job(i, at, work, exchange):
        yield env.timeout(at)
        yield pool.run(work, exchange=exchange)
        ends[i] = env.now

    for i, (at, work, exchange) in enumerate(jobs):
        env.process(job(i, at, work, exchange))
    env.run()
    ends = np.array(ends)
    starts = np.array([a for a, _, _ in jobs])
    works = np.array([w for _, w, _ in jobs])
    assert np.all(ends >= starts + works - 1e-9)
    assert ends.max() >= starts.min() + works.sum() / cores - 1e-9
    assert ends.max() <= starts.max() + works.sum() + 1e-9


def _cfg():
    return _campaign_cfg("dcca", top_k=2)


def test_compute_first_releases_the_ranks_of_an_unshaped_call_apart():
    """In a step on 4 ranks and 2 cores, the released ranks' compute delays the All-to-All CPU of those
    still in the call by a slice: the calls release their ranks several ms apart (the runs: 3-9 ms) and
    the next call inherits it, where without it they leave about one a2a_cpu apart."""
    prof = find_profile(AVX2)
    topo = Topology(netmodel.testbed_graph(4, 1, None, cores=2), source="<t>")
    opts = dict(cpu_pool=True, pairwise_a2a=True, time_slice_s=0.004, a2a_cpu_s=0.00142)
    spreads = {}
    for on in (False, True):
        res = simulate(_cfg(), topo, prof, SimOptions(compute_first=on, **opts))
        s = call_spreads(simulated_timeline(res, "dcca"), source="model")
        spreads[on] = (float(s.exit_spread.median()), float(s.entry_spread.median()))
    assert spreads[False][0] < 0.0025
    assert spreads[True][0] > 0.003
    assert spreads[True][1] > spreads[False][1]
    # the profile's field is the default, the option overrides it
    fitted = dataclasses.replace(prof, device=dataclasses.replace(prof.device, compute_first=True))
    a = simulate(_cfg(), topo, fitted, SimOptions(**opts)).step_time_s
    assert a == pytest.approx(simulate(_cfg(), topo, prof, SimOptions(compute_first=True, **opts)).step_time_s,
                              rel=1e-12)
    assert simulate(_cfg(), topo, fitted, SimOptions(compute_first=False, **opts)).step_time_s == pytest.approx(
        simulate(_cfg(), topo, prof, SimOptions(**opts)).step_time_s, rel=1e-12)


def test_campaign_command_records_compute_first():
    cmd = fit_command("calibration/x", "cpu-testbed-x", "calibration/patterns/release-*.csv", a2a_cpu="0.00142",
                      compute_first=True)
    assert "--a2a-cpu 0.00142 --compute-first" in cmd
    assert "--compute-first" not in fit_command("calibration/x", "cpu-testbed-x", "calibration/patterns/release-*.csv")
