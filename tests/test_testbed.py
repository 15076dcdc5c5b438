"""The namespace testbed: a tc rate limit measurably slows the All-to-All, the topology file matches,
teardown leaves no namespace, veth or process (on success, on a failing rank, on SIGINT), and the
testbed refuses clearly without root or iproute2. Needs root and iproute2 (CI runs as root)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from real_backend.results import read_table  # noqa: E402
from real_backend.testbed import TestbedError as _TestbedError, parse_rate  # noqa: E402

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "real_backend" / "configs" / "small-gpt.yaml"
HAVE_NET = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None
needs_net = pytest.mark.skipif(not HAVE_NET, reason="testbed needs root and iproute2 (ip, tc)")


def _env(**extra):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _testbed(args, timeout=150, **kw):
    return subprocess.run([sys.executable, "-m", "real_backend.testbed", *args], capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", None) or _env(), **kw)


def _prefix(text: str) -> str:
    m = re.search(r"namespaces (rbtb-[0-9a-f]+-\d+)-\*", text)
    assert m, text[-2000:]
    return m.group(1)


def _assert_nothing_left(prefix: str, token: str) -> None:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in ns, ns
    veth_id = prefix.split("-")[1]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"rb{veth_id}" not in links
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        procs = [d.name for d in Path("/proc").iterdir() if d.name.isdigit() and _cmd_has(d, token)]
        if not procs:
            break
        time.sleep(0.2)
    assert not procs, procs


def _cmd_has(d: Path, token: str) -> bool:
    try:
        return token in (d / "cmdline").read_bytes().decode(errors="replace") and int(d.name) != os.getpid()
    except OSError:
        return False


def test_parse_rate():
    assert parse_rate("100mbit") == 100e6
    assert parse_rate("1gbit") == 1e9
    assert parse_rate("12.5mbps") == 100e6  # tc: bps = bytes per second
    assert parse_rate("50 Mbit/s") == pytest.approx(50e6)
    assert parse_rate("none") is None and parse_rate("0") is None
    with pytest.raises(_TestbedError):
        parse_rate("fast")


def _readable_by_others(*paths: Path) -> bool:
    """Whether a user other than root can enter every directory down to each of ``paths``."""
    for p in paths:
        for d in [p.resolve(), *p.resolve().parents]:
            if d.is_dir() and not (d.stat().st_mode & 0o001):
                return False
    return True


def test_topology_is_written_next_to_every_table_of_the_run():
    from real_backend.testbed import topology_paths
    assert topology_paths(["--steps", "3", "--out", "v/a.csv"]) == ["v/a.topology.json"]
    assert topology_paths(["--out=v/a.csv", "--paired-out", "v/b.csv"]) == ["v/a.topology.json", "v/b.topology.json"]
    assert topology_paths(["--out", "v/a.csv"], "t.json") == ["t.json"]
    assert topology_paths(["--steps", "3"]) == ["testbed.topology.json"]


def test_refuses_without_root_or_iproute2(tmp_path):
    setpriv = shutil.which("setpriv")
    args = ["--hosts", "2", "--", "microbench", "--out", str(tmp_path / "x.csv")]
    if os.geteuid() == 0 and setpriv and _readable_by_others(Path(sys.prefix), REPO, Path(os.path.realpath(sys.executable)).parent):
        r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                            "real_backend.testbed", *args], capture_output=True, text=True, timeout=60,
                           env=_env(), cwd="/")
        assert r.returncode == 2 and "needs root" in r.stderr, r.stderr
    elif os.geteuid() == 0:
        # the checkout or venv sits below a directory only root may enter (a 0700 mktemp clone):
        # an unprivileged process could not even import the launcher, so check its refusal in-process
        from unittest import mock

        from real_backend import testbed as tb
        with mock.patch.object(tb.os, "geteuid", return_value=65534), pytest.raises(tb.TestbedError, match="needs root"):
            tb.check_prerequisites()
    elif os.geteuid() != 0:
        r = _testbed(args)
        assert r.returncode == 2 and "needs root" in r.stderr
    if os.geteuid() == 0:
        r = _testbed(args, env=_env(PATH="/nonexistent"))
        assert r.returncode == 2 and "install iproute2" in r.stderr, r.stderr
    r = _testbed(["--hosts", "2"])
    assert r.returncode == 2 and "run ARGS" in r.stderr
    assert not (tmp_path / "x.csv").exists()


def _a2a_median(tmp_path: Path, rate: str) -> tuple[float, Path, str]:
    out = tmp_path / f"a2a-{rate}.csv"
    r = _testbed(["--hosts", "2", "--ranks-per-host", "1", "--rate", rate, "--netstats",
                  str(out.with_suffix(".netstats.json")), "--", "microbench", "--kinds",
                  "all_to_all", "--a2a-sizes", "1MiB", "--reps", "3", "--warmup", "1", "--timeout", "60",
                  "--out", str(out), "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    df, meta = read_table(out)
    assert meta["world_size"] == 2 and meta["testbed"]["hosts"] == 2
    a = df[(df.kind == "all_to_all") & (df.group == "world")]
    assert len(a) == 2 * 3
    prefix = _prefix(r.stderr)
    _assert_nothing_left(prefix, str(out))
    return statistics.median(a.seconds), out, prefix


@needs_net
def test_rate_limit_slows_all_to_all_and_teardown_is_clean(tmp_path):
    free, _, _ = _a2a_median(tmp_path, "none")
    shaped, out, _ = _a2a_median(tmp_path, "20mbit")
    _check_netstats(tmp_path)
    # 1 MiB per rank, half of it to the other host: >= 0.5 MiB / (2.5 MB/s) ~ 0.21 s at 20 Mbit/s
    assert shaped > 0.1, (free, shaped)
    assert shaped > 5 * free, (free, shaped)
    topo_path = out.with_suffix("").as_posix() + ".topology.json"
    data = json.loads(Path(topo_path).read_text())
    gpus = [n for n in data["nodes"] if n["kind"] == "gpu"]
    assert sorted(n["rank"] for n in gpus) == [0, 1] and {n["host"] for n in gpus} == {"host0", "host1"}
    classes = {e["link_class"]: e["bandwidth"] for e in data["edges"]}
    assert classes["nic"] == pytest.approx(20e6 / 8)
    try:
        from moesim.topology import load_topology
    except ImportError:
        return
    topo = load_topology(topo_path)
    assert topo.num_gpus == 2


def _check_netstats(tmp_path: Path) -> None:
    """--netstats: the shaped run's four tbf shapers (two uploads, two downloads) each passed what the
    All-to-Alls sent across; the unshaped run has no shaper."""
    free = json.loads((tmp_path / "a2a-none.netstats.json").read_text())
    assert free["totals"]["tbf_qdiscs"] == 0 and free["totals"]["tcp_out_segs"] > 0
    stats = json.loads((tmp_path / "a2a-20mbit.netstats.json").read_text())
    assert set(stats["tcp"]) == {"host0", "host1"} and set(stats["qdiscs"]) == {"host0", "host1", "switch"}
    tbf = {label: [q for q in qs if q["kind"] == "tbf"] for label, qs in stats["qdiscs"].items()}
    assert [len(tbf[h]) for h in ("host0", "host1", "switch")] == [1, 1, 2]
    # each rank sends the other 0.5 MiB per All-to-All, 4 of them (1 warm-up + 3): every shaper passed it
    for q in tbf["host0"] + tbf["host1"] + tbf["switch"]:
        assert q["bytes"] >= 4 * 2**19, q
    t = stats["totals"]
    assert t["tbf_qdiscs"] == 4 and t["tbf_bytes"] == sum(q["bytes"] for qs in tbf.values() for q in qs)
    assert t["tcp_retrans_segs"] == sum(h["TcpRetransSegs"] for h in stats["tcp"].values())
    assert stats["testbed"]["exit_codes"] == [0, 0] and stats["testbed"]["rate_bits"] == 20e6


@needs_net
def test_failing_rank_on_testbed_exits_nonzero_and_tears_down(tmp_path):
    out = tmp_path / "fail.csv"
    t0 = time.monotonic()
    stats = tmp_path / "fail.netstats.json"
    r = _testbed(["--hosts", "2", "--ranks-per-host", "1", "--rate", "200mbit", "--grace", "10",
                  "--netstats", str(stats), "--", "run",
                  "--model", str(SMALL), "--set", "parallel.ep=2", "--set", "model.layers=1", "--steps", "3",
                  "--warmup", "1", "--timeout", "8", "--out", str(out), "--fail-rank", "1", "--fail-mode",
                  "crash", "--fail-step", "1"], cwd=tmp_path)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 90
    assert "host 1 (ranks 1..1) exited with status" in r.stderr, r.stderr[-3000:]
    # the cause comes last, for callers that keep only the tail: the crashed host's own lines (torchrun
    # names the rank's exit code, 86)
    cause = r.stderr.rsplit("host 1 failed first; its last lines:", 1)
    assert len(cause) == 2 and "86" in cause[1] and cause[1].count("[h1]") >= 2, r.stderr[-3000:]
    assert not out.exists() and not Path(str(out.with_suffix("")) + ".topology.json").exists()
    # the counters of a failed run are kept (was the network to blame?), with the hosts' exit codes
    codes = json.loads(stats.read_text())["testbed"]["exit_codes"]
    assert len(codes) == 2 and codes[1] not in (0, None), codes
    _assert_nothing_left(_prefix(r.stderr), str(out))


@needs_net
def test_sigint_tears_everything_down(tmp_path):
    out = tmp_path / "int.csv"
    p = subprocess.Popen([sys.executable, "-m", "real_backend.testbed", "--hosts", "2", "--ranks-per-host", "1",
                          "--rate", "50mbit", "--", "run", "--model", str(SMALL), "--set", "parallel.ep=2",
                          "--steps", "1000", "--warmup", "0", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    # wait until the ranks run (a process with our --out inside the namespaces), then Ctrl-C
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(_cmd_has(d, "real_backend.run") and _cmd_has(d, str(out)) for d in Path("/proc").iterdir()
               if d.name.isdigit()) >= 4:  # 2 torchrun agents + 2 ranks
            break
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "interrupted" in stderr
    assert not out.exists()
    _assert_nothing_left(_prefix(stderr), str(out))
