"""`moesim topology` through main() and the real entry point, including bad input."""
import json
import subprocess

import pytest

from moesim.cli import main
from moesim.topology import load_topology


def test_generators_write_loadable_files(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["topology", "cluster", "--nodes", "3", "--gpus-per-node", "4", "--fabric", "leafspine",
                 "--nic-bandwidth", "200 Gbit/s", "--leaf-ports", "4", "--oversubscription", "2",
                 "--out", str(out)]) == 0
    assert "12 GPUs on 3 hosts" in capsys.readouterr().out
    topo = load_topology(out)
    assert topo.num_gpus == 12 and topo.links[topo.links.link_class == "nic"].capacity.max() == 25e9
    for action, gpus in (("paper", 32), ("dgx", 8)):
        path = tmp_path / f"{action}.json"
        assert main(["topology", action, "--out", str(path)]) == 0
        assert load_topology(path).num_gpus == gpus
    path = tmp_path / "tb.graphml"
    assert main(["topology", "testbed", "--hosts", "3", "--ranks-per-host", "2", "--link-bandwidth", "500Mbit/s",
                 "--loopback-bandwidth", "4GB/s", "--stack-bandwidth", "1GB/s", "--out", str(path)]) == 0
    tb = load_topology(path)
    assert tb.num_gpus == 6
    caps = tb.links.groupby("link_class")["capacity"].unique()
    assert list(caps["loopback"]) == [4e9] and list(caps["stack"]) == [1e9] and list(caps["nic"]) == [62.5e6]


def test_show(repo_root, capsys):
    assert main(["topology", "show", str(repo_root / "topologies" / "bigmac-paper.json"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["gpus"] == 32 and s["hosts"] == 4 and s["bisection_bandwidth"] == pytest.approx(25e9)
    assert set(s["link_classes"]) == {"nic", "pcie", "upi"}
    assert main(["topology", "show", str(repo_root / "topologies" / "dgx-h100.json")]) == 0
    text = capsys.readouterr().out
    assert "8 GPUs on 1 hosts" in text and "bisection bandwidth" in text and "nvlink" in text


def test_entry_point_show_and_bad_file(moesim_exe, repo_root, tmp_path):
    ok = subprocess.run([moesim_exe, "topology", "show", str(repo_root / "topologies" / "testbed-2x2.json")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "4 GPUs on 2 hosts" in ok.stdout
    bad = tmp_path / "broken.json"
    bad.write_text('{"nodes": [{"id": "a", "kind": "gpu", "rank": 0, "host": "h"}], "edges": [{"source": "a"')
    res = subprocess.run([moesim_exe, "topology", "show", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "malformed JSON" in lines[0]


def test_bad_generator_options(capsys, tmp_path):
    assert main(["topology", "cluster", "--nodes", "2", "--gpus-per-node", "8", "--nics-per-node", "3",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "must divide" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    with pytest.raises(SystemExit) as exc:
        main(["topology", "cluster", "--nodes", "2", "--gpus-per-node", "8", "--nic-bandwidth", "fast",
              "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and "cannot parse bandwidth" in capsys.readouterr().err
