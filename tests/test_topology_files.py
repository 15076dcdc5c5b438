"""Topology files: loading, validation errors that name the file and the element, GraphML safety,
round trips, and the shipped files."""
import json

import networkx as nx
import pytest

from moesim.errors import InputFileError
from moesim.topology import Topology, load_topology, save_topology
from moesim.topology.generators import bigmac_paper, cluster, emulated_testbed


def _small(directed: bool = False) -> dict:
    g = nx.DiGraph() if directed else nx.Graph()
    g.add_node("sw", kind="switch")
    for r in range(3):
        g.add_node(f"g{r}", kind="gpu", rank=r, host=f"h{r}", device="h100-sxm")
        g.add_edge(f"g{r}", "sw", bandwidth="100 Gbit/s", latency="1.5 us")
        if directed:
            g.add_edge("sw", f"g{r}", bandwidth="25 GB/s")
    return nx.node_link_data(g, edges="edges")


def _write(tmp_path, data, name="t.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def test_units_and_defaults(tmp_path):
    topo = load_topology(_write(tmp_path, _small()))
    assert topo.num_gpus == 3 and topo.hosts == ["h0", "h1", "h2"]
    assert topo.host_of(1) == "h1" and topo.ranks_of_host("h2") == [2] and topo.device_of(0) == "h100-sxm"
    assert topo.num_links == 6  # undirected edge = two directed links
    assert set(topo.link_capacity) == {12.5e9} and set(topo.link_latency) == {1.5e-6}
    assert topo.link_classes == ["nic"]  # inferred from endpoint kinds gpu/switch


def test_directed_graph_gives_asymmetric_links(tmp_path):
    topo = load_topology(_write(tmp_path, _small(directed=True)))
    links = topo.links
    up = links[(links.src == "g0") & (links.dst == "sw")].capacity.item()
    down = links[(links.src == "sw") & (links.dst == "g0")].capacity.item()
    assert (up, down) == (12.5e9, 25e9) and topo.num_links == 6
    assert set(links.latency) == {1.5e-6, 0.0}


def test_legacy_links_key_and_link_class(tmp_path):
    data = _small()
    data["links"] = data.pop("edges")
    data["links"][0]["link_class"] = "fabric"
    topo = load_topology(_write(tmp_path, data))
    assert topo.link_classes == ["fabric", "nic"]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["edges"][0].pop("bandwidth"), "missing 'bandwidth'"),
    (lambda d: d["edges"][0].update(bandwidth=0), "not positive"),
    (lambda d: d["edges"][0].update(bandwidth=-5), "not positive"),
    (lambda d: d["edges"][0].update(bandwidth="fast"), "cannot parse bandwidth"),
    (lambda d: d["edges"][0].update(latency="soon"), "cannot parse duration"),
    (lambda d: d["edges"][0].update(latency=-1), "negative"),
    (lambda d: d["nodes"][0].update(kind="router"), "unknown kind 'router'"),
    (lambda d: d["nodes"][0].pop("kind"), "missing 'kind'"),
    (lambda d: d["nodes"][1].update(rank=2), "duplicate rank 2"),
    (lambda d: d["nodes"][1].update(rank=7), "missing 0"),
    (lambda d: d["nodes"][1].update(rank="x"), "not a non-negative integer"),
    (lambda d: d["nodes"][1].pop("host"), "without a 'host'"),
    (lambda d: d["edges"].append({"source": "g0", "target": "g0", "bandwidth": 1}), "self-loop"),
    (lambda d: d["edges"].pop(), "cannot reach"),
    (lambda d: d["edges"].append({"source": "g0", "target": "nowhere", "bandwidth": 1}), "unknown node 'nowhere'"),
    (lambda d: d["nodes"].append({"kind": "gpu"}), "has no 'id'"),
    (lambda d: d.update(multigraph=True), "multigraph"),
    (lambda d: [n.update(kind="cpu") for n in d["nodes"] if n.get("kind") == "gpu"] and
        [n.pop("rank") for n in d["nodes"] if "rank" in n] and [n.pop("host") for n in d["nodes"] if "host" in n],
     "no GPU nodes"),
])
def test_validation_errors_name_file_and_element(tmp_path, mutate, fragment):
    data = _small()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(InputFileError) as exc:
        load_topology(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and fragment in msg, msg


def test_error_names_the_edge(tmp_path):
    data = _small()
    data["edges"][1]["bandwidth"] = 0
    with pytest.raises(InputFileError, match=r"edge ('g1' -- 'sw'|'sw' -- 'g1'): bandwidth 0 is not positive"):
        load_topology(_write(tmp_path, data))


def test_gpus_do_not_forward(tmp_path):
    g = nx.Graph()
    for r in range(3):
        g.add_node(f"g{r}", kind="gpu", rank=r, host="h")
    g.add_edge("g0", "g1", bandwidth=1)
    g.add_edge("g1", "g2", bandwidth=1)   # g0 -> g2 only through g1
    with pytest.raises(InputFileError, match=r"rank 0 .* cannot reach rank 2"):
        Topology(g, source="chain")


def test_malformed_files(tmp_path):
    with pytest.raises(InputFileError, match="malformed JSON"):
        load_topology(_write(tmp_path, '{"nodes": [', "broken.json"))
    with pytest.raises(InputFileError, match="top level must be an object"):
        load_topology(_write(tmp_path, "[1, 2]", "list.json"))
    with pytest.raises(InputFileError, match="no such file"):
        load_topology(tmp_path / "absent.json")
    with pytest.raises(InputFileError, match="is a directory"):
        load_topology(tmp_path)


def test_graphml_round_trip_and_entity_refusal(tmp_path):
    topo = emulated_testbed(2, 2, link_bandwidth=1e9, loopback_bandwidth=5e9)
    path = tmp_path / "t.graphml"
    save_topology(topo, path)
    again = load_topology(path)
    assert again.num_gpus == 4 and sorted(again.link_capacity) == sorted(topo.link_capacity)
    evil = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n'
            '<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="undirected">'
            '<node id="&lol2;"/></graph></graphml>')
    with pytest.raises(InputFileError, match="DOCTYPE or ENTITY"):
        load_topology(_write(tmp_path, evil, "evil.graphml"))
    with pytest.raises(InputFileError, match="malformed GraphML"):
        load_topology(_write(tmp_path, "<graphml><graph>", "cut.graphml"))


def test_json_round_trip_is_exact(tmp_path):
    for topo in (bigmac_paper(), cluster(3, 4, leaf_ports=2, spines=2, nics_per_node=2)):
        path = tmp_path / f"{topo.name}.json"
        save_topology(topo, path)
        again = load_topology(path)
        assert again.nodes == topo.nodes and again.link_classes == topo.link_classes
        assert (again.link_capacity == topo.link_capacity).all() and (again.link_cost == topo.link_cost).all()
        assert (again.link_latency == topo.link_latency).all() and again.name == topo.name
        assert [again.device_of(r) for r in range(again.num_gpus)] == [topo.device_of(r) for r in range(topo.num_gpus)]
        assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary behind


@pytest.mark.parametrize("name, gpus, hosts", [("bigmac-paper", 32, 4), ("dgx-h100", 8, 1),
                                               ("cluster-4x8-rail", 32, 4), ("testbed-2x2", 4, 2)])
def test_shipped_files(repo_root, name, gpus, hosts):
    topo = load_topology(repo_root / "topologies" / f"{name}.json")
    assert (topo.num_gpus, len(topo.hosts)) == (gpus, hosts)


def test_shipped_files_match_their_generators(repo_root):
    from moesim.topology.generators import dgx_h100_node
    for name, topo in (("bigmac-paper", bigmac_paper()), ("dgx-h100", dgx_h100_node()),
                       ("cluster-4x8-rail", cluster(4, 8, leaf_ports=2, spines=2)),
                       ("testbed-2x2", emulated_testbed(2, 2))):
        shipped = load_topology(repo_root / "topologies" / f"{name}.json")
        assert shipped.nodes == topo.nodes and (shipped.link_capacity == topo.link_capacity).all(), name
        assert (shipped.link_latency == topo.link_latency).all() and (shipped.link_cost == topo.link_cost).all()
