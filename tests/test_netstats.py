"""real_backend.netstats: the kernel counters of a testbed run are parsed from iproute2's JSON, summed
over hosts and shapers, and a reading that is not what iproute2 prints fails naming where it came from."""
from __future__ import annotations

import json

import pytest

from real_backend.netstats import TCP_KEYS, NetstatsError, parse_nstat, parse_qdiscs, read_netstats

NSTAT = {"kernel": {"IpInReceives": 900, "TcpOutSegs": 1200, "TcpRetransSegs": 3, "TcpExtTCPTimeouts": 1,
                    "TcpExtTCPLossProbes": 2, "TcpInSegs": 800, "TcpExtTW": 0, "UdpInDatagrams": 5}}
TC_HOST = [{"kind": "noqueue", "handle": "0:", "dev": "lo", "root": True, "bytes": 0, "packets": 0, "drops": 0,
            "overlimits": 0, "requeues": 0, "backlog": 0, "qlen": 0},
           {"kind": "tbf", "handle": "8001:", "dev": "rbxh0", "root": True, "bytes": 5000, "packets": 10,
            "drops": 4, "overlimits": 7, "requeues": 0, "backlog": 0, "qlen": 0}]
TC_SWITCH = [{"kind": "tbf", "handle": "8001:", "dev": "rbxs0", "bytes": 6000, "packets": 12, "drops": 1,
              "overlimits": 2, "requeues": 0}]


def test_nstat_keeps_the_resend_counters_and_other_nonzero_tcp_ones():
    got = parse_nstat(json.dumps(NSTAT))
    assert set(TCP_KEYS) <= set(got)
    assert got["TcpOutSegs"] == 1200 and got["TcpRetransSegs"] == 3 and got["TcpExtTCPTimeouts"] == 1
    assert got["TcpExtTCPFastRetrans"] == 0          # always reported, zero when absent
    assert got["TcpInSegs"] == 800                   # other non-zero Tcp counters kept
    assert "TcpExtTW" not in got and "IpInReceives" not in got and "UdpInDatagrams" not in got


def test_qdiscs_are_parsed_per_device():
    got = parse_qdiscs(json.dumps(TC_HOST))
    assert [q["dev"] for q in got] == ["lo", "rbxh0"]
    assert got[1] == {"dev": "rbxh0", "kind": "tbf", "bytes": 5000, "packets": 10, "drops": 4, "overlimits": 7,
                      "requeues": 0}


def test_read_netstats_sums_hosts_and_shapers_and_names_the_commands():
    calls = []

    def fake_run(ns, cmd):
        calls.append((ns, cmd[0]))
        if cmd[0] == "nstat":
            return json.dumps(NSTAT)
        return json.dumps(TC_SWITCH if ns == "sw" else TC_HOST)

    got = read_netstats({"host0": "h0", "host1": "h1"}, "sw", run=fake_run)
    assert set(got["tcp"]) == {"host0", "host1"} and set(got["qdiscs"]) == {"host0", "host1", "switch"}
    assert got["totals"] == {"tcp_out_segs": 2400, "tcp_retrans_segs": 6, "tcp_timeouts": 2, "tbf_qdiscs": 3,
                             "tbf_bytes": 16000, "tbf_drops": 9, "tbf_overlimits": 16}
    assert ("sw", "nstat") not in calls and ("sw", "tc") in calls   # the switch sends nothing of its own


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"kernel": {"TcpOutSegs": "many"}}', '{"other": {}}'])
def test_a_reading_that_is_not_nstat_json_fails_clearly(text):
    with pytest.raises(NetstatsError, match=r"host3 \(ns-x\): nstat: not nstat JSON"):
        parse_nstat(text, "host3 (ns-x): nstat")


@pytest.mark.parametrize("text", ["", "{}", '[{"kind": "tbf"}]', '[{"dev": "a", "kind": "tbf", "bytes": "x"}]'])
def test_a_reading_that_is_not_tc_json_fails_clearly(text):
    with pytest.raises(NetstatsError, match=r"switch: tc: not tc JSON"):
        parse_qdiscs(text, "switch: tc")
