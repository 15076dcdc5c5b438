"""What the validation replays and fits beyond the microbenchmarks: measured All-to-All traffic,
the recorded CPU peak of the GEMM tables, the traffic-pattern probe."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.calibrate.core import recorded_peak
from moesim.calibrate.tables import read_table
from moesim.config import load_config
from moesim.errors import InputFileError, MoesimError
from moesim.validate.traffic import _ipf, measured_dispatch_copies
from moesim.workload import build_program
from real_backend.patterns import PATTERNS, _pairs, bottleneck_bytes, call_times, mean_release, release_times

ROOT = Path(__file__).resolve().parents[1]
OLD_DEFAULT = ROOT / "calibration" / "avx512-1r"   # the default campaign until 2026-12-03
VAL = OLD_DEFAULT / "validation"


def _margins(table, phase):
    df = table.df
    x = df[(df["phase"] == phase) & (df["direction"] == "fwd")]
    x = x.assign(b=x["bytes"] / x["count"], r=x["bytes_remote"] / x["count"])
    g = x.groupby(["step", "rank"])[["b", "r"]].sum().groupby(level="rank").mean()
    return g["b"].to_numpy(), g["r"].to_numpy()


@pytest.mark.parametrize("name", ["4x1-150mbit-cdac-k8.csv", "2x2-400mbit-dcca-k2.csv"])
def test_measured_traffic_keeps_what_each_rank_sent_kept_and_received(name):
    t = read_table(VAL / name, expect="run")
    cfg = load_config(t.meta["config"])
    per_copy = cfg.a2a_dim * cfg.model.dtype_bytes
    m = measured_dispatch_copies(t, cfg.parallel.ep, cfg.a2a_dim, cfg.model.dtype_bytes) * per_copy
    sent, sent_remote = _margins(t, "dispatch")
    received, _ = _margins(t, "combine")
    assert np.allclose(np.diag(m), sent - sent_remote, rtol=1e-9)
    assert np.allclose(m.sum(axis=1), sent, rtol=1e-6)
    # columns: what each rank received (scaled by < 0.1% so rows and columns carry the same total)
    assert np.allclose(m.sum(axis=0), received, rtol=2e-3)
    assert (m >= 0).all()
    # the real router is not uniform: the busiest rank sends or receives more than the mean
    off = m - np.diag(np.diag(m))
    assert max(off.sum(axis=1).max(), off.sum(axis=0).max()) > 1.01 * off.sum(axis=1).mean()


def test_ipf_matches_margins_on_the_off_diagonal():
    rows, cols = np.array([3.0, 5.0, 4.0]), np.array([4.0, 4.0, 4.0])
    m = _ipf(rows, cols, ~np.eye(3, dtype=bool))
    assert np.allclose(m.sum(axis=1), rows) and np.allclose(m.sum(axis=0), cols)
    assert np.allclose(np.diag(m), 0.0)


def test_measured_traffic_drives_the_dispatch_collectives():
    cfg = load_config(str(ROOT / "real_backend/configs/small-gpt.yaml"), ["parallel.ep=4", "moe.experts=16"])
    copies = np.array([[10.0, 20, 30, 40], [5, 5, 5, 5], [0, 1, 2, 3], [7, 7, 7, 7]])
    prog = build_program(cfg, a2a_copies=copies)
    per_copy = cfg.a2a_dim * cfg.model.dtype_bytes
    disp = [c for c in prog.collectives.values() if c.name == "dispatch" and c.direction == "fwd"]
    assert disp and np.allclose(disp[0].matrix, copies * per_copy)
    assert prog.info["routing"].startswith("measured")
    with pytest.raises(ValueError, match="4x4"):
        build_program(cfg, a2a_copies=np.ones((3, 3)))


def test_measured_traffic_rejects_inconsistent_tables(tmp_path):
    t = read_table(VAL / "4x1-150mbit-cdac-k8.csv", expect="run")
    t.df.loc[t.df["phase"] == "dispatch", "bytes_remote"] = t.df["bytes"] * 2
    with pytest.raises(InputFileError, match="inconsistent"):
        measured_dispatch_copies(t, 4, 256, 4)
    with pytest.raises(InputFileError, match="ep = world"):
        measured_dispatch_copies(t, 2, 256, 4)


def test_gemm_peak_is_the_measuring_machines_not_the_fitters():
    mdir = OLD_DEFAULT / "measurements"
    files = sorted(mdir.glob("*.csv"))
    tables = [read_table(f) for f in files if f.name.startswith("gemm")]
    peak, note = recorded_peak(tables, files)
    manifest = json.loads((mdir / "manifest.json").read_text())
    assert peak == manifest["campaign"]["machine"]["peak_flops_per_core"]
    assert "recorded in manifest.json" in note
    # a table that records its own peak wins over the manifest
    tables[0].meta["cpu_peak_flops_per_core"], tables[0].meta["cpu_peak_flops_from"] = 1.5e11, "test"
    assert recorded_peak(tables[:1], files)[0] == 1.5e11


def test_pattern_bottlenecks_closed_form():
    host = lambda r: r  # noqa: E731 - one rank per host
    nb = 100
    assert bottleneck_bytes(_pairs("single", 4), nb, host) == nb
    assert bottleneck_bytes(_pairs("pair_two_way", 4), nb, host) == nb
    assert bottleneck_bytes(_pairs("fan_in", 4), nb, host) == 3 * nb
    assert bottleneck_bytes(_pairs("ring", 4), nb, host) == nb
    assert bottleneck_bytes(_pairs("all_to_all", 4), nb, host) == 3 * nb
    # 2 hosts x 2 ranks: same-host pairs use no host link
    assert bottleneck_bytes(_pairs("all_to_all", 4), nb, lambda r: r // 2) == 4 * nb
    assert bottleneck_bytes(_pairs("single", 4), nb, lambda r: r // 2) == 0
    # --uneven: rank 0's pairs carry more each way; on 4x1 its host link is the busiest
    assert bottleneck_bytes(_pairs("all_to_all", 4), nb, host, rank0_bytes=150) == 3 * 150
    assert bottleneck_bytes(_pairs("ring", 4), nb, host, rank0_bytes=150) == 150


def _run_patterns(tmp_path, *args):
    """``real_backend.patterns`` on 2 real gloo ranks (64 KiB per pair, 2 repetitions, no gap) with
    ``args``; its table and meta."""
    pytest.importorskip("torch")
    out = tmp_path / "pat.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "real_backend.patterns", "--out", str(out), "--bytes", "65536", "--reps", "2",
                          "--gap", "0", *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    from real_backend.results import read_table as rb_read
    return rb_read(out)


@pytest.mark.torch
def test_patterns_probe_runs_on_real_gloo(tmp_path):
    df, meta = _run_patterns(tmp_path, "--patterns", "single,pair_two_way,all_to_all,all_to_all_train",
                             "--train", "3", "--train-compute", "5")
    assert meta["kind"] == "patterns" and meta["world_size"] == 2
    assert set(df["pattern"]) == {"single", "pair_two_way", "all_to_all", "all_to_all_train"} and len(df) == 8
    train = df["pattern"] == "all_to_all_train"
    assert (df.loc[train, "calls"] == 3).all() and (df.loc[~train, "calls"] == 1).all()
    assert (df.loc[train, "compute_matmuls"] == 5).all() and (df.loc[~train, "compute_matmuls"] == 0).all()
    assert (df["release_first_s"] <= df["release_mean_s"] + 1e-9).all()
    assert (df["release_mean_s"] <= df["release_last_s"] + 1e-9).all()
    assert (df["call_arrival_skew_s"] >= 0).all() and (df["call_after_last_arrival_s"] >= 0).all()
    # a rank's time in one call lies within the whole pattern's time (from the earliest start)
    assert (df["call_rank_mean_s"] > 0).all() and (df["call_rank_mean_s"] <= df["release_last_s"] + 1e-6).all()
    assert (df["seconds"] > 0).all() and df["goodput"].isna().all()      # not shaped: no rate to compare
    assert set(PATTERNS) >= set(df["pattern"])
    # every rank is released after the first and no later than the whole pattern (closing barrier)
    assert (df["release_first_s"] > 0).all() and (df["release_first_s"] <= df["release_last_s"]).all()
    assert (df["release_last_s"] <= df["seconds"] + 0.05).all()
    assert df["release_spread"].between(0, 1).all()


@pytest.mark.torch
def test_patterns_probe_uneven_all_to_all_on_real_gloo(tmp_path):
    """``--uneven 1.5``: rank 0 exchanges 1.5 x the bytes with every peer (split sizes), recorded."""
    df, _ = _run_patterns(tmp_path, "--patterns", "all_to_all,all_to_all_train,single", "--train", "2",
                          "--uneven", "1.5")
    a2a = df["pattern"].isin(["all_to_all", "all_to_all_train"])
    assert (df.loc[a2a, "uneven"] == 1.5).all() and (df.loc[~a2a, "uneven"] == 1.0).all()
    assert (df["seconds"] > 0).all()
    bad = subprocess.run([sys.executable, "-m", "real_backend.patterns", "--out", str(tmp_path / "x.csv"),
                          "--uneven", "0.5"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert bad.returncode == 2 and "--uneven >= 1" in bad.stderr


def test_release_times_closed_form():
    starts = [10.0, 10.002, 10.001, 50.0]
    ends = [10.100, 10.052, 10.081, 99.0]
    # rank 3 takes no part in a ring over ranks 0..2 (its times are ignored)
    first, last, spread = release_times(starts, ends, [(0, 1), (1, 2), (2, 0)])
    assert first == pytest.approx(0.052) and last == pytest.approx(0.100)
    assert spread == pytest.approx(0.048 / 0.100)
    assert release_times([1.0, 1.0], [1.0, 1.0], [(0, 1)]) == (0.0, 0.0, 0.0)
    assert mean_release(starts, ends, [(0, 1), (1, 2), (2, 0)]) == pytest.approx((0.100 + 0.052 + 0.081) / 3)
    # two calls of ranks 0-2 (rank 3 not taking part): arrivals 0/1/2 ms and 10/13/11 ms, returns
    # 5/6/7 ms and 20/20/21 ms: skew 2 and 3 ms, after the last arrival 5 and 8 ms, rank means 5 and 9 ms
    arrive = [[0.000, 0.010], [0.001, 0.013], [0.002, 0.011], [9.0, 9.0]]
    ret = [[0.005, 0.020], [0.006, 0.020], [0.007, 0.021], [9.9, 9.9]]
    skew, after, mean = call_times(arrive, ret, [(0, 1), (1, 2), (2, 0)])
    assert (skew, after, mean) == pytest.approx((0.0025, 0.0065, 0.007))   # medians of the two calls


def _synthetic_runs(tmp_path, names, truth, per_call=None) -> list:
    """Copies of committed fit runs (with their topologies) whose step time is ``truth(run)``, the
    simulator's own prediction at known parameters; with ``per_call``, every rank's All-to-All calls
    last ``per_call(run)`` seconds each."""
    import pandas as pd

    from moesim.calibrate.insitu import _Run
    from moesim.validate.a2acost import A2A_PHASES
    from moesim.validate.core import RunSpec, load_run
    paths = []
    for name in names:
        src = VAL / name
        df = pd.read_csv(src, skiprows=2)
        run = _Run([load_run(RunSpec(src))], 64 * 2**20)
        df.loc[df["phase"] == "step", "seconds"] = truth(run)
        if per_call is not None:
            a2a = df["phase"].isin(A2A_PHASES)
            df.loc[a2a, "seconds"] = df.loc[a2a, "count"].clip(lower=1) * per_call(run)
        dst = tmp_path / name
        dst.write_text("".join(src.read_text().splitlines(keepends=True)[:2]) + df.to_csv(index=False))
        (tmp_path / name.replace(".csv", ".topology.json")).write_text(
            (VAL / name.replace(".csv", ".topology.json")).read_text())
        paths.append(dst)
    return paths


def _with_simulated_compute_phases(paths: list, sim) -> list:
    """``paths`` with each run's compute phase rows scaled so that they sum to the compute phases of
    ``sim(run)`` (a simulated step), as measured ones would."""
    import pandas as pd

    from moesim.calibrate.insitu import _Run, predicted_compute
    from moesim.phases import COMM_PHASES
    from moesim.validate.core import RunSpec, load_run
    for path in paths:
        run = _Run([load_run(RunSpec(path))], 64 * 2**20)
        df = pd.read_csv(path, skiprows=2)
        comp = ~df["phase"].isin(COMM_PHASES + ("step",))
        df.loc[comp, "seconds"] *= predicted_compute(sim(run)) / run.measured_compute
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]) + df.to_csv(index=False))
    return paths


def _a2a_cpu_truth():
    """The release patterns, the committed avx512-1r profile without its pool, and the simulation of a
    run at known shared-core parameters: 2 ms of CPU per All-to-All call, together start, (K, g) =
    (2.0, 0.8)."""
    import yaml

    from moesim.calibrate.release import release_spread
    patterns = sorted((ROOT / "calibration" / "patterns").glob("release-*.csv"))
    base = _fixed_share(yaml.safe_load((OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml").read_text()))
    base["calibration"]["links"]["nic"]["release_spread"] = release_spread(patterns).spread

    def truth(run):
        return run.simulate(base, 0.005, 0.1, 0.0, 0.0, cpu_pool=True, pool_cores=2.0, alone_factor=0.8,
                            time_slice_s=0.03, pairwise_a2a=False, a2a_cpu_s=0.002)
    return patterns, base, truth


def _fixed_share(profile: dict) -> dict:
    """The committed profile without its shared-core pool (the fixed core share)."""
    profile["calibration"].pop("cpu_pool", None)
    profile["calibration"]["links"]["nic"].pop("release_spread", None)
    return profile


def test_insitu_shared_core_fit_recovers_known_pool_cores_and_alone_factor(tmp_path):
    """Fit runs whose step times are the simulator's own with shared cores at (K, g) = (2.0, 0.8):
    the shared-core fit finds them among its grid, writes them to calibration.cpu_pool with the
    measured release spread, and the profile then turns the mode on by itself."""
    import copy

    import yaml

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.calibrate.release import release_spread
    from moesim.cost.profile import parse_profile
    patterns = sorted((ROOT / "calibration" / "patterns").glob("release-*.csv"))
    spread = release_spread(patterns).spread
    base = _fixed_share(yaml.safe_load((OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml").read_text()))
    base["calibration"]["links"]["nic"]["release_spread"] = spread
    def truth(run):
        assert run.topo.graph.graph["shared_cpu_cores"] == 2     # added from the run's cpu_count
        return run.step(base, 0.005, 0.1, 0.0, 0.0, cpu_pool=True, pool_cores=2.0, alone_factor=0.8,
                        time_slice_s=0.03, pairwise_a2a=True)
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k4.csv", "4x1-150mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv"),
                            truth)
    cal = Calibration(profile=copy.deepcopy(_fixed_share(base)), compute=None, contention=None, network=None)
    cal = fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,),
                     pool_grids=((1.5, 2.0, 2.5), (0.6, 0.8, 0.95), (0.005,), (0.1,), (0.0,)), slice_grid=(0.0, 0.03),
                     time_slice_s=None, pairwise_a2a=True)
    prof = cal.profile
    assert prof["calibration"]["cpu_pool"]["pool_cores"] == 2.0
    assert prof["calibration"]["cpu_pool"]["alone_factor"] == 0.8
    # the time slice comes from the runs' measured rank skew (real: the tables are committed runs),
    # which processor sharing (slice 0) cannot produce: ranks in step reach the All-to-Alls together
    pool = prof["calibration"]["cpu_pool"]
    assert pool["time_slice_s"] == 0.03 and pool["pairwise_a2a"] is True
    rms = pool["rank_skew"]["rms_by_time_slice_s"]
    assert rms["0.03"] < rms["0"]
    assert all(v > 1e-3 for v in pool["rank_skew"]["measured_s"].values())
    assert prof["calibration"]["cpu_pool"]["release_spread"] == pytest.approx(spread)
    assert prof["calibration"]["links"]["nic"]["release_spread"] == pytest.approx(spread)
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9
    dev = parse_profile(prof, Path("<fitted>")).device
    assert (dev.pool_cores, dev.alone_factor, dev.time_slice_s, dev.pairwise_a2a) == (2.0, 0.8, 0.03, True)
    # the same profile, fitted with the fixed share, carries neither the pool nor the spread
    fixed = fit_insitu(Calibration(profile=copy.deepcopy(prof), compute=None, contention=None, network=None),
                       paths, burst_fractions=(0.0,), wait_grid=(0.005,), penalty_grid=(0.1,)).profile
    assert "cpu_pool" not in fixed["calibration"] and "release_spread" not in fixed["calibration"]["links"]["nic"]
    with pytest.raises(MoesimError, match="shared-core fit needs runs"):
        unshared = tmp_path / "unshared"
        unshared.mkdir()
        src = paths[0]
        (unshared / src.name).write_text(src.read_text().replace('"cpu_count": 2, ', ''))
        fit_insitu(Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None),
                   [unshared / src.name], patterns=patterns, refine=0,
                   pool_grids=((2.0,), (0.8,), (0.005,), (0.1,), (0.0,)))


def test_insitu_fit_recovers_a_known_wait_and_two_way_penalty(tmp_path):
    """Fit runs whose step times are the simulator's own at (wait, b) = (6 ms, 0.35): the in-situ
    fit finds them again (on the real runs' measured traffic)."""
    import copy

    import yaml

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    base = _fixed_share(yaml.safe_load((OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml").read_text()))
    prof = copy.deepcopy(base)
    for key in ("two_way_penalty", "burst_s"):
        prof["calibration"]["links"]["nic"].pop(key, None)
    prof["network"]["receiver_wait_s"] = 0.0
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k4.csv", "4x1-none-dcca-k4.csv"),
                            lambda run: run.step(base, 0.006, 0.35, 0.005))
    cal = fit_insitu(Calibration(profile=prof, compute=None, contention=None, network=None), paths,
                     burst_fractions=(0.0, 1.0), penalty_grid=(0.0, 0.2, 0.35, 0.5))
    ins = cal.profile["calibration"]["insitu"]
    assert ins["receiver_wait_s"] == pytest.approx(0.006, abs=4e-4)
    assert ins["nic_two_way_penalty"] == pytest.approx(0.35, abs=0.03)
    assert cal.profile["calibration"]["links"]["nic"]["burst_s"] == 0.005
    assert ins["residuals"]["max_error"] < 0.01


def test_insitu_fit_tells_the_peer_term_from_the_two_way_penalty(tmp_path):
    """With fit runs on a 2-host (k = 1) and a 4-host (k = 3) shaped testbed whose step times are
    the simulator's own at (wait, b, c) = (6 ms, 0.2, 0.35), the fit finds b and c apart; with
    4-host runs only, c is not fitted (it would be confounded with b) and stays out of the profile."""
    import copy

    import yaml

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    base = _fixed_share(yaml.safe_load((OLD_DEFAULT / "cpu-testbed-avx512-1r.yaml").read_text()))
    for key in ("two_way_penalty", "peer_penalty", "burst_s"):
        base["calibration"]["links"]["nic"].pop(key, None)
    paths = _synthetic_runs(tmp_path, ("2x2-150mbit-cdac-k4.csv", "4x1-150mbit-cdac-k4.csv", "4x1-400mbit-cdac-k8.csv"),
                            lambda run: run.step(base, 0.006, 0.2, 0.0, 0.35))

    def fit(runs):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, runs, burst_fractions=(0.0,), wait_grid=(0.005,), penalty_grid=(0.1, 0.2, 0.35),
                          peer_grid=(0.0, 0.2, 0.35)).profile
    prof = fit(paths)
    ins = prof["calibration"]["insitu"]
    assert ins["nic_two_way_penalty"] == pytest.approx(0.2, abs=0.02)
    assert ins["nic_peer_penalty"] == pytest.approx(0.35, abs=0.02)
    assert prof["calibration"]["links"]["nic"]["peer_penalty"] == ins["nic_peer_penalty"]
    assert ins["residuals"]["max_error"] < 0.01     # (long shaped transfers hide the wait: not asserted)
    only_4x1 = fit(paths[1:])
    assert only_4x1["calibration"]["insitu"]["nic_peer_penalty"] == 0.0
    assert "peer_penalty" not in only_4x1["calibration"]["links"]["nic"]


def test_tables_without_byte_counts_fall_back_to_the_config_routing():
    t = read_table(VAL / "4x1-150mbit-cdac-k8.csv", expect="run")
    t.df["bytes"] = np.nan
    assert measured_dispatch_copies(t, 4, 256, 4) is None
    t = read_table(VAL / "4x1-150mbit-cdac-k8.csv", expect="run")
    t.df.loc[(t.df["phase"] == "combine") & (t.df["rank"] == 2), "bytes"] = np.nan
    with pytest.raises(InputFileError, match="missing or negative"):
        measured_dispatch_copies(t, 4, 256, 4)


def test_insitu_fit_recovers_a_known_all_to_all_cpu(tmp_path):
    """Fit runs whose step times are the simulator's own with 2 ms of CPU per All-to-All call
    (together start, (K, g) = (2.0, 0.8)): the fit finds the CPU and the alone factor among its
    grids, records them in calibration.cpu_pool, and the profile carries them to the engine."""
    import copy

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.cost.profile import parse_profile
    patterns, base, truth = _a2a_cpu_truth()
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k4.csv", "4x1-150mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv"),
                            lambda run: truth(run).step_time_s)

    def fit(grid):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,),
                          pool_grids=((2.0,), (0.7, 0.8, 0.9), (0.005,), (0.1,), (0.0,)), time_slice_s=0.03,
                          a2a_cpu_grid=grid).profile
    prof = fit((0.0, 0.002, 0.004))
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["a2a_cpu_s"], pool["alone_factor"], pool["pairwise_a2a"]) == (0.002, 0.8, False)
    assert pool["a2a_cpu_grid_s"] == [0.0, 0.002, 0.004]
    assert prof["calibration"]["insitu"]["cpu_pool"]["a2a_cpu_s"] == 0.002
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9
    assert parse_profile(prof, Path("<fitted>")).device.a2a_cpu_s == 0.002
    # without the CPU among its candidates the fit cannot reproduce the runs, and records none
    none = fit((0.0,))
    assert "a2a_cpu_s" not in none["calibration"]["cpu_pool"]
    assert none["calibration"]["insitu"]["residuals"]["max_error"] > 1e-3


def test_pool_held_at_the_machines_cores_and_the_measured_core_share(tmp_path):
    """Fit runs that are the simulator's own at K = 2 (the testbed's cores) and g = the profile's
    contention core share, with 3 ms of receiver wait: the fit holding the pool at those measured
    values keeps them through its coordinate search, fits the wait (to its half-step) and records what
    it held; the fitted pool moves off them; bad input is refused."""
    import copy

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    patterns, base, _ = _a2a_cpu_truth()
    share = base["calibration"]["contention"]["core_share"]
    assert 0.5 < share < 0.7                                   # the committed avx512-1r microbenchmarks: 0.586

    def truth(run):
        return run.step(base, 0.003, 0.1, 0.0, 0.0, cpu_pool=True, pool_cores=2.0, alone_factor=share,
                        time_slice_s=0.03, pairwise_a2a=True)
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k4.csv", "4x1-none-dcca-k4.csv"), truth)

    def fit(profile=base, **kw):
        cal = Calibration(profile=copy.deepcopy(profile), compute=None, contention=None, network=None)
        kw.setdefault("patterns", patterns)
        return fit_insitu(cal, paths, refine=1, burst_fractions=(0.0,), time_slice_s=0.03, pairwise_a2a=True,
                          pool_grids=((1.5, 2.5), (0.9,), (0.0, 0.005), (0.1,), (0.0,)), **kw).profile
    prof = fit(pool_held="measured")
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["pool_cores"], pool["alone_factor"]) == (2.0, share)
    assert set(pool["held"]) == {"pool_cores", "alone_factor"}
    assert prof["network"]["receiver_wait_s"] == pytest.approx(0.0025)   # 0.005 refined by one half-step
    fitted = fit()
    assert fitted["calibration"]["cpu_pool"]["pool_cores"] != 2.0 and "held" not in fitted["calibration"]["cpu_pool"]
    no_share = copy.deepcopy(base)
    del no_share["calibration"]["contention"]["core_share"]
    with pytest.raises(MoesimError, match="calibration.contention.core_share"):
        fit(no_share, pool_held="measured")
    with pytest.raises(MoesimError, match="needs the shared-core fit"):
        fit(pool_held="measured", patterns=None)
    with pytest.raises(MoesimError, match="'measured', 'compute-phases' or None"):
        fit(pool_held="guessed")


def test_alone_factor_set_by_the_fit_runs_compute_phases(tmp_path):
    """Fit runs that are the simulator's own at K = 2 and g = 0.7, their phase rows too (each rank's
    compute phases scaled to the simulated ones): with the cores held at the machine's, the compute
    phases pick g = 0.7 out of the fine grid, the refit with it held reproduces the steps, and the
    profile records the observable; the grid's first fit alone (g over 0.6 / 0.9) cannot reach it."""
    import copy

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    patterns, base, _ = _a2a_cpu_truth()

    def sim(run):
        return run.simulate(base, 0.005, 0.1, 0.0, 0.0, cpu_pool=True, pool_cores=2.0, alone_factor=0.7,
                            time_slice_s=0.03, pairwise_a2a=True)
    names = ("4x1-150mbit-cdac-k4.csv", "4x1-none-dcca-k4.csv", "2x2-400mbit-cdac-k4.csv")
    paths = _with_simulated_compute_phases(_synthetic_runs(tmp_path, names, lambda run: sim(run).step_time_s), sim)

    def fit(**kw):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,), time_slice_s=0.03,
                          pairwise_a2a=True, pool_grids=((1.5, 2.5), (0.6, 0.9), (0.005,), (0.1,), (0.0,)),
                          **kw).profile
    prof = fit(pool_held="compute-phases")
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["pool_cores"], pool["alone_factor"]) == (2.0, 0.7)
    rec = pool["alone_from_compute_phases"]
    assert set(rec["measured_s"]) == set(names)
    assert min(rec["rms_relative_by_alone_factor"].values()) == rec["rms_relative_by_alone_factor"]["0.7"]
    for name in names:
        assert rec["simulated_s"][name] == pytest.approx(rec["measured_s"][name], rel=1e-6)
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9
    assert fit()["calibration"]["cpu_pool"]["alone_factor"] in (0.6, 0.9)


def test_alone_factor_from_compute_phases_then_all_to_all_cpu_from_the_last_arriver(tmp_path):
    """The two observables chained (model Y): fit runs that are the simulator's own at K = 2, g = 0.8
    and 2 ms of CPU per All-to-All call, with their compute phases and per-call times (the simulated
    last arriver) as well as their steps. The compute phases pick g, the unshaped run's last arriver
    then picks the CPU with g held, and the refit with both held reproduces the runs; both records are
    kept, the compute phases simulated at the final parameters."""
    import copy

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.calibrate.skew import simulated_last_arriver
    patterns, base, truth = _a2a_cpu_truth()
    names = ("4x1-150mbit-cdac-k4.csv", "4x1-150mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv")
    paths = _with_simulated_compute_phases(
        _synthetic_runs(tmp_path, names, lambda run: truth(run).step_time_s,
                        per_call=lambda run: simulated_last_arriver(truth(run))), truth)
    cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
    prof = fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,), time_slice_s=0.03,
                      pool_grids=((1.5, 2.5), (0.6, 0.9), (0.005,), (0.1,), (0.0,)), pool_held="compute-phases",
                      a2a_cpu_last_arriver_grid=(0.0, 0.001, 0.002, 0.003, 0.004)).profile
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["pool_cores"], pool["alone_factor"], pool["a2a_cpu_s"]) == (2.0, 0.8, 0.002)
    phases, last = pool["alone_from_compute_phases"], pool["a2a_last_arriver"]
    assert phases["alternations"] >= 1   # at the first fit's CPU (none) the phases ask for g = 0.85
    assert min(last["rms_by_a2a_cpu_s"].values()) == last["rms_by_a2a_cpu_s"]["0.002"]
    for name in names:
        assert phases["simulated_s"][name] == pytest.approx(phases["measured_s"][name], rel=1e-6)
    assert last["simulated_s"]["4x1-none-dcca-k4.csv"] == pytest.approx(last["measured_s"]["4x1-none-dcca-k4.csv"],
                                                                        rel=1e-9)
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9


def test_insitu_fit_with_the_all_to_all_cpu_beside_the_transfer(tmp_path):
    """Fit runs that are the simulator's own with 2 ms of All-to-All CPU beside the transfer (K = 2,
    g = 0.8): the fit with the CPU there recovers the pool with no residual and records the choice;
    the same fit with the CPU after the data cannot reproduce them; the option reaches the command
    that re-creates a profile, and is refused without the shared-core fit or without any CPU."""
    import copy

    from moesim.calibrate.campaign import DEFAULT_PATTERNS, fit_command
    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    patterns, base, _ = _a2a_cpu_truth()

    def truth(run):
        return run.simulate(base, 0.005, 0.1, 0.0, 0.0, cpu_pool=True, pool_cores=2.0, alone_factor=0.8,
                            time_slice_s=0.03, pairwise_a2a=True, a2a_cpu_s=0.002, a2a_cpu_overlap=True)
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k4.csv", "4x1-400mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv"),
                            lambda run: truth(run).step_time_s)

    def fit(**kw):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,), time_slice_s=0.03,
                          pairwise_a2a=True, pool_grids=((1.5, 2.0, 2.5), (0.7, 0.8, 0.9), (0.005,), (0.1,), (0.0,)),
                          a2a_cpu_grid=(0.002,), **kw).profile
    prof = fit(a2a_cpu_overlap=True)
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["pool_cores"], pool["alone_factor"], pool["a2a_cpu_s"]) == (2.0, 0.8, 0.002)
    assert pool["a2a_cpu_overlap"] is True
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9
    after = fit()
    assert "a2a_cpu_overlap" not in after["calibration"]["cpu_pool"]
    assert after["calibration"]["insitu"]["residuals"]["max_error"] > 1e-3
    assert " --a2a-cpu-overlap" in fit_command("x", "y", DEFAULT_PATTERNS, a2a_cpu="0.002", a2a_cpu_overlap=True)
    assert "overlap" not in fit_command("x", "y", DEFAULT_PATTERNS, a2a_cpu="0.002")
    cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
    with pytest.raises(MoesimError, match="shared-core fit"):
        fit_insitu(cal, paths, a2a_cpu_grid=(0.002,), a2a_cpu_overlap=True)
    with pytest.raises(MoesimError, match="needs an All-to-All CPU"):
        fit_insitu(cal, paths, patterns=patterns, a2a_cpu_overlap=True)


def test_all_to_all_cpu_set_by_the_last_arriver(tmp_path):
    """Fit runs that are the simulator's own with 2 ms of CPU per All-to-All call (together start,
    (K, g) = (2.0, 0.8)), steps and per-call times alike (every rank's call lasts the simulated
    last-arriver time): the CPU is picked by the unshaped run's last arriver, the rest refitted with it
    held reproduces the runs, and the profile records the observable, measured and simulated."""
    import copy

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.calibrate.skew import simulated_last_arriver
    patterns, base, truth = _a2a_cpu_truth()
    last = {}
    paths = _synthetic_runs(tmp_path, ("4x1-150mbit-cdac-k4.csv", "4x1-150mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv"),
                            lambda run: truth(run).step_time_s,
                            per_call=lambda run: last.setdefault(run.files[0], simulated_last_arriver(truth(run))))

    def fit(paths, **kw):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,),
                          pool_grids=((2.0,), (0.7, 0.8, 0.9), (0.005,), (0.1,), (0.0,)), time_slice_s=0.03,
                          **kw).profile
    prof = fit(paths, a2a_cpu_last_arriver_grid=(0.0, 0.001, 0.002, 0.003, 0.004))
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["a2a_cpu_s"], pool["alone_factor"]) == (0.002, 0.8)
    assert pool["a2a_cpu_grid_s"] == [0.0, 0.001, 0.002, 0.003, 0.004]
    rec = pool["a2a_last_arriver"]
    assert list(rec["measured_s"]) == ["4x1-none-dcca-k4.csv"]          # the unshaped run only
    assert rec["measured_s"]["4x1-none-dcca-k4.csv"] == pytest.approx(last["4x1-none-dcca-k4.csv"])
    assert rec["simulated_s"]["4x1-none-dcca-k4.csv"] == pytest.approx(last["4x1-none-dcca-k4.csv"], rel=1e-9)
    assert min(rec["rms_by_a2a_cpu_s"].values()) == rec["rms_by_a2a_cpu_s"]["0.002"]
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9
    with pytest.raises(MoesimError, match="unshaped fit runs"):
        fit(paths[:2], a2a_cpu_last_arriver_grid=(0.0, 0.002))
    with pytest.raises(MoesimError, match="not both"):
        fit(paths, a2a_cpu_last_arriver_grid=(0.0, 0.002), a2a_cpu_grid=(0.0, 0.002))


def test_step_release_spread_is_held_in_the_shared_core_fit(tmp_path):
    """Fit runs that are the simulator's own with every All-to-All across hosts releasing its members
    over 0.7 of its time (unshaped ones too; together start, (K, g) = (2.0, 0.8), 2 ms of CPU per call):
    the fit holding that step release spread reproduces them and records it, and the profile carries it
    to the engine; with the patterns' spread on shaped links only, the unshaped run is not reproduced."""
    import copy

    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import fit_insitu
    from moesim.cost.profile import parse_profile
    patterns, base, truth = _a2a_cpu_truth()
    spread = 0.7

    def spread_truth(run):
        return run.simulate(base, 0.005, 0.1, 0.0, 0.0, cpu_pool=True, pool_cores=2.0, alone_factor=0.8,
                            time_slice_s=0.03, pairwise_a2a=False, a2a_cpu_s=0.002, release_spread=spread)
    names = ("4x1-150mbit-cdac-k4.csv", "4x1-150mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv")
    paths = _synthetic_runs(tmp_path, names, lambda run: spread_truth(run).step_time_s)

    def fit(**kw):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,),
                          pool_grids=((2.0,), (0.7, 0.8, 0.9), (0.005,), (0.1,), (0.0,)), time_slice_s=0.03,
                          a2a_cpu_grid=(0.002,), **kw).profile
    prof = fit(step_release_spread=spread)
    pool = prof["calibration"]["cpu_pool"]
    assert pool["step_release_spread"] == spread and pool["alone_factor"] == 0.8
    assert prof["calibration"]["insitu"]["residuals"]["max_error"] < 1e-9
    assert parse_profile(prof, Path("<fitted>")).device.step_release_spread == spread
    patterns_only = fit()
    assert "step_release_spread" not in patterns_only["calibration"]["cpu_pool"]
    assert patterns_only["calibration"]["insitu"]["residuals"]["max_error"] > 1e-4
    with pytest.raises(MoesimError, match="step_release_spread must lie in"):
        fit(step_release_spread=1.0)
    cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
    with pytest.raises(MoesimError, match="shared-core fit"):
        fit_insitu(cal, paths, step_release_spread=0.5)


def test_all_to_all_phase_joins_the_shared_core_loss(tmp_path):
    """Fit runs that are the simulator's own at (K, g) = (2.0, 0.8) in step time and in All-to-All
    phase time: with the phase in the loss the fit still reproduces them and records measured against
    fitted phase per run. With the runs' All-to-All phases measured 40 % longer than the simulator
    makes them at that point (the step unchanged), the phase term moves the fit away from the
    step-only answer: the loss is really taking the phases, and the campaign command records it."""
    import copy

    import pandas as pd

    from moesim.calibrate.campaign import DEFAULT_PATTERNS, fit_command
    from moesim.calibrate.core import Calibration
    from moesim.calibrate.insitu import _Run, fit_insitu, predicted_a2a
    from moesim.validate.a2acost import A2A_PHASES
    from moesim.validate.core import RunSpec, load_run
    patterns, base, truth = _a2a_cpu_truth()
    names = ("4x1-150mbit-cdac-k4.csv", "4x1-150mbit-dcca-k4.csv", "4x1-none-dcca-k4.csv")

    def runs_with(a2a_scale: float) -> list:
        (tmp_path / f"s{a2a_scale}").mkdir()
        paths = _synthetic_runs(tmp_path / f"s{a2a_scale}", names, lambda run: truth(run).step_time_s)
        for p in paths:
            lines = p.read_text().splitlines(keepends=True)
            df = pd.read_csv(p, skiprows=2)
            want = a2a_scale * predicted_a2a(truth(_Run([load_run(RunSpec(p))], 64 * 2**20)))
            a2a = df["phase"].isin(A2A_PHASES)
            per_rank_step = a2a.groupby([df["step"], df["rank"]]).transform("sum")
            df.loc[a2a, "seconds"] = want / per_rank_step[a2a]
            p.write_text("".join(lines[:2]) + df.to_csv(index=False))
        return paths

    def fit(paths, **kw):
        cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
        return fit_insitu(cal, paths, patterns=patterns, refine=0, burst_fractions=(0.0,),
                          pool_grids=((1.5, 2.0, 2.5), (0.6, 0.7, 0.8, 0.9, 1.0), (0.005,), (0.1,), (0.0,)),
                          time_slice_s=0.03, a2a_cpu_grid=(0.002,), **kw).profile
    exact = runs_with(1.0)
    prof = fit(exact, a2a_phase=True)
    pool = prof["calibration"]["cpu_pool"]
    assert (pool["pool_cores"], pool["alone_factor"]) == (2.0, 0.8)
    rec = pool["fit_a2a_phase"]
    assert set(rec["measured_s"]) == set(names)
    for n in names:
        assert rec["fitted_s"][n] == pytest.approx(rec["measured_s"][n], rel=1e-9)
    assert "fit_a2a_phase" not in fit(exact)["calibration"]["cpu_pool"]
    longer = runs_with(1.4)
    step_only, with_phase = fit(longer)["calibration"]["cpu_pool"], fit(longer, a2a_phase=True)["calibration"]["cpu_pool"]
    assert (step_only["pool_cores"], step_only["alone_factor"]) == (2.0, 0.8)     # the steps did not change
    assert (with_phase["pool_cores"], with_phase["alone_factor"]) != (2.0, 0.8)
    assert "--fit-a2a-phase" in fit_command("calibration/x", "x", DEFAULT_PATTERNS, a2a_phase=True)
    assert "--fit-a2a-phase" not in fit_command("calibration/x", "x", DEFAULT_PATTERNS)
    cal = Calibration(profile=copy.deepcopy(base), compute=None, contention=None, network=None)
    with pytest.raises(MoesimError, match="shared-core fit"):
        fit_insitu(cal, exact, a2a_phase=True)


def test_campaign_holds_the_pool_measured_and_records_it():
    """``--pool measured`` reaches the command that re-creates a profile, and the parser refuses
    anything but fit or measured; the default (fit) is left out of the command."""
    from moesim.calibrate.campaign import fit_command, main
    cmd = fit_command("calibration/x", "cpu-testbed-x", "calibration/patterns/release-*.csv", pool="measured")
    assert " --pool measured" in cmd
    assert " --pool compute-phases" in fit_command("x", "y", "calibration/patterns/release-*.csv", pool="compute-phases")
    assert "--pool" not in fit_command("calibration/x", "cpu-testbed-x", "calibration/patterns/release-*.csv")
    with pytest.raises(SystemExit) as exc:
        main(["--out", "x", "--only", "calibrate", "--pool", "guessed"])
    assert exc.value.code == 2


@pytest.mark.torch
def test_patterns_probe_late_rank_on_real_gloo(tmp_path):
    """``--late 0.2``: the last rank reaches the All-to-All 0.2 s after the other, so the call's
    arrival skew is about 0.2 s and its time after the last arrival is the late rank's own exchange
    (small here); other patterns are not delayed; a negative delay is refused."""
    df, _ = _run_patterns(tmp_path, "--patterns", "all_to_all,single", "--late", "0.2")
    a2a = df[df["pattern"] == "all_to_all"]
    assert (a2a["late_s"] == 0.2).all() and (df.loc[df["pattern"] == "single", "late_s"] == 0.0).all()
    assert a2a["call_arrival_skew_s"].between(0.19, 0.5).all()
    assert (a2a["call_after_last_arrival_s"] < 0.1).all() and (a2a["seconds"] >= 0.2).all()
    bad = subprocess.run([sys.executable, "-m", "real_backend.patterns", "--out", str(tmp_path / "x.csv"),
                          "--late", "-1"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert bad.returncode == 2 and "--late" in bad.stderr
