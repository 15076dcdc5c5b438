"""What the kernel counted on a testbed's network: TCP retransmissions and timeouts per host, and
bytes, drops and throttles per queueing discipline (the ``tbf`` shapers), read once after a run.

A testbed namespace starts with zeroed counters, so one reading after the run is what the run did
(its warm-up and rendezvous included). They answer whether a slow shaped All-to-All lost packets
(tbf ``drops``, TCP ``RetransSegs``, ``TCPTimeouts``: a retransmission timeout costs at least
200 ms) or only waited for tokens (``overlimits``). Read with iproute2's ``nstat -asz --json`` and
``tc -s -j qdisc show`` inside each namespace; nothing here needs torch.
"""
from __future__ import annotations

import json
import subprocess
from typing import Callable, Mapping

# TCP counters always reported (zeros included): sent segments, and every way TCP resends.
TCP_KEYS = ("TcpOutSegs", "TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPLossProbes", "TcpExtTCPFastRetrans",
            "TcpExtTCPSlowStartRetrans", "TcpExtTCPSpuriousRTOs", "TcpExtTCPLostRetransmit")
QDISC_KEYS = ("bytes", "packets", "drops", "overlimits", "requeues")


class NetstatsError(RuntimeError):
    """A counter reading that cannot be parsed (names the namespace and the command)."""


def _run(ns: str, cmd: list[str]) -> str:
    full = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise NetstatsError(f"{' '.join(full)} failed (status {r.returncode}): {r.stderr.strip()[:300]}")
    return r.stdout


def parse_nstat(text: str, where: str = "nstat") -> dict:
    """``nstat --json`` output -> the TCP counters (``TCP_KEYS`` always, other non-zero Tcp* too)."""
    try:
        kernel = json.loads(text)["kernel"]
        counters = {str(k): int(v) for k, v in kernel.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NetstatsError(f"{where}: not nstat JSON output ({type(exc).__name__}: {exc}): {text[:200]!r}") from None
    out = {k: counters.get(k, 0) for k in TCP_KEYS}
    out.update({k: v for k, v in sorted(counters.items()) if k.startswith("Tcp") and v and k not in out})
    return out


def parse_qdiscs(text: str, where: str = "tc") -> list[dict]:
    """``tc -s -j qdisc show`` output -> one dict per qdisc: dev, kind and ``QDISC_KEYS`` (bytes, packets)."""
    try:
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise TypeError(f"a list of qdiscs expected, got {type(rows).__name__}")
        return [{"dev": str(q["dev"]), "kind": str(q["kind"]), **{k: int(q.get(k, 0)) for k in QDISC_KEYS}}
                for q in rows]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NetstatsError(f"{where}: not tc JSON output ({type(exc).__name__}: {exc}): {text[:200]!r}") from None


def totals(hosts: Mapping[str, dict], qdiscs: Mapping[str, list]) -> dict:
    """Sums over the testbed: TCP resends and timeouts over hosts, tbf drops and throttles over shapers."""
    tbf = [q for qs in qdiscs.values() for q in qs if q["kind"] == "tbf"]
    return {"tcp_out_segs": sum(h["TcpOutSegs"] for h in hosts.values()),
            "tcp_retrans_segs": sum(h["TcpRetransSegs"] for h in hosts.values()),
            "tcp_timeouts": sum(h["TcpExtTCPTimeouts"] for h in hosts.values()),
            "tbf_qdiscs": len(tbf), "tbf_bytes": sum(q["bytes"] for q in tbf),
            "tbf_drops": sum(q["drops"] for q in tbf), "tbf_overlimits": sum(q["overlimits"] for q in tbf)}


def read_netstats(host_namespaces: Mapping[str, str], switch_namespace: str | None,
                  run: Callable[[str, list[str]], str] = _run) -> dict:
    """Counters of a testbed: ``host_namespaces`` maps a label (``host0``) to its namespace. Hosts give
    TCP counters and their qdiscs (the upload shaper), the switch its qdiscs (the download shapers)."""
    hosts = {label: parse_nstat(run(ns, ["nstat", "-asz", "--json"]), f"{label} ({ns}): nstat")
             for label, ns in host_namespaces.items()}
    spaces = dict(host_namespaces) | ({"switch": switch_namespace} if switch_namespace else {})
    qdiscs = {label: parse_qdiscs(run(ns, ["tc", "-s", "-j", "qdisc", "show"]), f"{label} ({ns}): tc")
              for label, ns in spaces.items()}
    return {"tcp": hosts, "qdiscs": qdiscs, "totals": totals(hosts, qdiscs),
            "meaning": "kernel counters read once after the run in namespaces created for it (so from zero): "
                       "TCP per host (nstat), per qdisc bytes/packets/drops/overlimits (tc -s); tbf overlimits "
                       "count dequeues that waited for tokens, drops packets the shaper discarded"}
