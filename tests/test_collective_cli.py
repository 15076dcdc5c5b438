"""`moesim collective` through main() and the real entry point, including bad input."""
import json
import subprocess

import pytest

from moesim.cli import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_all_to_all_on_the_paper_cluster(capsys, repo_root):
    topo = str(repo_root / "topologies" / "bigmac-paper.json")
    out = _json(capsys, ["collective", "--topology", topo, "--op", "all_to_all", "--bytes-per-rank", "64MiB",
                         "--ranks", "0-31", "--json"])
    size = 64 * 2**20
    # 8 GPUs x 24/32 of their buffer leave each machine through one 12.5 GB/s NIC
    nic_time = 8 * size * 24 / 32 / 12.5e9
    assert out["time_s"] == pytest.approx(nic_time + 10e-6 + 5e-6 + 2 * 0.5e-6 + 4 * 0.3e-6 + 0.2e-6, rel=1e-3)
    assert out["time_s"] > nic_time and out["ranks"] == 32 and out["algorithm"] == "direct"
    assert out["bytes_by_class"]["nic"] == pytest.approx(2 * 32 * size * 24 / 32, rel=1e-12)
    assert set(out["bytes_by_class"]) == {"nic", "pcie", "upi"} and out["busiest_link"]["link_class"] == "nic"
    twod = _json(capsys, ["collective", "--topology", topo, "--op", "all_to_all", "--bytes-per-rank", "64MiB",
                          "--algorithm", "2d", "--json"])
    assert twod["stages"] == 3 and twod["bytes_by_class"]["nic"] == pytest.approx(out["bytes_by_class"]["nic"])


@pytest.mark.parametrize("op, steps", [("all_reduce", 14), ("all_gather", 7), ("reduce_scatter", 7)])
def test_ring_collectives(capsys, repo_root, op, steps):
    out = _json(capsys, ["collective", "--topology", str(repo_root / "topologies" / "dgx-h100.json"), "--op", op,
                         "--bytes-per-rank", "1e9", "--latency-per-message", "0", "--collective-overhead", "0",
                         "--json"])
    step = 1e9 / 8 / 450e9 + 2 * 0.25e-6   # one NVSwitch hop each way per step
    # the ring's steps are pipelined into one stage paying one message latency per step
    assert out["stages"] == 1 and out["time_s"] == pytest.approx(steps * step, rel=1e-12)
    assert out["bytes_by_class"] == {"nic": 0.0, "pcie": 0.0, "nvlink": pytest.approx(2 * steps * 1e9)}


def test_text_output(capsys, repo_root):
    assert main(["collective", "--topology", str(repo_root / "topologies" / "testbed-2x2.json"), "--op",
                 "all_to_all", "--bytes-per-rank", "4MB"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("all_to_all (direct) over 4 ranks of testbed-2x2") and "loopback" in text


@pytest.mark.parametrize("extra, fragment", [
    (["--ranks", "0-40"], "rank 32 is not in the topology"),
    (["--ranks", "3-1"], "cannot parse '3-1'"),
    (["--ranks", "1,1"], "listed twice"),
    (["--bytes-per-rank", "lots"], "cannot parse size"),
    (["--algorithm", "ring"], "not available for all_to_all"),
])
def test_bad_options(capsys, repo_root, extra, fragment):
    argv = ["collective", "--topology", str(repo_root / "topologies" / "bigmac-paper.json"), "--op", "all_to_all",
            "--bytes-per-rank", "1MB"]
    argv = [a for a in argv if not (extra[0] == "--bytes-per-rank" and a in ("--bytes-per-rank", "1MB"))] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim collective: error:") and fragment in err and len(err.splitlines()) == 1


def test_entry_point_json_and_broken_topology(moesim_exe, repo_root, tmp_path):
    res = subprocess.run([moesim_exe, "collective", "--topology", str(repo_root / "topologies" / "cluster-4x8-rail.json"),
                          "--op", "all_to_all", "--bytes-per-rank", "16MiB", "--ranks", "0-15", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    out = json.loads(res.stdout)
    assert out["time_s"] > 0 and out["ranks"] == 16 and "fabric" in out["bytes_by_class"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [{"id": "g0", "kind": "gpu", "rank": 0, "host": "h"},
                                         {"id": "g1", "kind": "gpu", "rank": 1, "host": "h"}],
                               "edges": [{"source": "g0", "target": "g1", "bandwidth": "-3 GB/s"}]}))
    res = subprocess.run([moesim_exe, "collective", "--topology", str(bad), "--op", "all_reduce",
                          "--bytes-per-rank", "1MB", "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and str(bad) in line and "edge 'g0' -- 'g1'" in line and "not positive" in line
