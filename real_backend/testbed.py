"""A real small cluster on one Linux machine: hosts are network namespaces joined by a bridge.

    python -m real_backend.testbed --hosts 2 --ranks-per-host 2 --rate 100mbit -- \\
        run --model real_backend/configs/small-gpt.yaml --steps 5 --out tb.csv
    python -m real_backend.testbed --hosts 2 --ranks-per-host 1 --rate 50mbit -- microbench --out mb.csv
    python -m real_backend.testbed --hosts 4 --rate 150mbit --netstats ns.json -- patterns --out p.csv
    python -m real_backend.testbed --cleanup        # remove what a killed (-9) testbed left behind

Layout (everything lives in namespaces this run creates; nothing is added to the root namespace):
a switch namespace ``rbtb-<id>-<pid>-sw`` holds the bridge ``br0``; host namespace
``rbtb-<id>-<pid>-h<i>`` holds one end of a veth pair ``rb<id>h<i>`` with address
``10.213.<x>.<i+1>/24`` (x random per run), the other end ``rb<id>s<i>`` is a bridge port. With
``--rate``, both ends are shaped with ``tc tbf`` (egress of each: host upload and download); this
kernel has no netem, so no delay/loss emulation. Under bidirectional load the measured
throughput per direction is about rate/2 (see DESIGN.md): calibrate effective rates with the
microbenchmarks, do not take the tc number at face value.

Each host runs ``torchrun --nnodes H --node_rank i --nproc_per_node R --master_addr <host0 ip>``
inside its namespace with ``GLOO_SOCKET_IFNAME`` = its veth; ranks of one host talk over loopback
(local addresses never touch the veth qdisc). Rank r lives on host r // R.

On success the matching moesim topology file is written (node-link JSON, the same format as
``moesim.topology.generators.emulated_testbed``: ``bridge`` switch, ``host<i>`` cpu nodes,
``host<i>/rank<k>`` gpu nodes, ``host<i>/lo`` hubs; link classes ``nic`` (bandwidth = the tc rate
in bytes/s), ``stack`` (a rank's TCP path to its veth) and ``loopback`` (between ranks of one
host)). Teardown (processes, then namespaces, which removes veths and bridge) always runs:
on success, error, Ctrl-C, SIGTERM and SIGHUP. With ``--netstats``, the kernel's counters (TCP
resends and timeouts per host, bytes, drops and throttles per qdisc; ``real_backend.netstats``) are
read just before teardown.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from moesim.errors import MoesimError
from moesim.testbed_shaping import TBF_BURST_S, TBF_MIN_BURST_BYTES, TBF_QUEUE_S
from real_backend.watchdog import pid_alive as _pid_alive

PROG = "real_backend.testbed"
NS_PREFIX = "rbtb-"
MASTER_PORT = 29500
# a warning gloo prints for every connection inside a namespace without a resolvable hostname: not shown
GLOO_NOISE = "hostname of the client socket cannot be retrieved"
MODULES = {"run": "real_backend.run", "microbench": "real_backend.microbench", "patterns": "real_backend.patterns"}
DEFAULT_LOOPBACK_BW = 2e9  # bytes/s per rank, nominal, of the stack and loopback links (as emulated_testbed)


class TestbedError(MoesimError):
    """The testbed cannot be built or run (no root, no iproute2, bad options)."""


class Interrupted(BaseException):
    """Raised by the signal handlers so that ``finally`` blocks run teardown."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------------------------------------
def parse_rate(text: str) -> Optional[float]:
    """tc-style rate -> bits/s: '100mbit', '1gbit', '500kbit', '12.5mbps' (bps = bytes/s as in tc),
    or '100 Mbit/s' / '25 MB/s'; 'none', 'off', '0' -> None (unshaped)."""
    t = str(text).strip().lower()
    if t in ("", "none", "off", "0", "unshaped"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps)", t)
    if m:
        scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
        bits = float(m.group(1)) * scale * (8 if m.group(3) == "bps" else 1)
    else:
        from moesim.units import parse_bandwidth
        try:
            bits = parse_bandwidth(text) * 8
        except ValueError:
            raise TestbedError(f"cannot parse rate '{text}' (e.g. 100mbit, 1gbit, '50 Mbit/s', none)") from None
    if not bits >= 8e3:
        raise TestbedError(f"rate '{text}' is below 8 kbit/s")
    return bits


def check_prerequisites() -> None:
    """Refuse clearly when the testbed cannot work here."""
    if not sys.platform.startswith("linux"):
        raise TestbedError("the testbed needs Linux network namespaces")
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (it creates network namespaces, veth pairs, a bridge and tc qdiscs); "
                           "run it with sudo or as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise TestbedError(f"'{tool}' not found: install iproute2")
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if res.returncode != 0:
        raise TestbedError(f"'ip netns' does not work here: {res.stderr.strip()}")


def _sh(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise TestbedError(f"command failed ({res.returncode}): {' '.join(cmd)}: {res.stderr.strip()}")
    return res


def list_namespaces() -> list[str]:
    res = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    res = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in res.stdout.split() if x.strip().isdigit()]


def _kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)



def remove_namespaces(names: list[str], log: Callable[[str], None] = lambda s: None, grace: float = 3.0) -> list[str]:
    """Kill every process inside ``names`` (TERM, then KILL after ``grace``), delete the namespaces
    (their veths and bridges go with them). Returns the names that could not be removed."""
    existing = set(list_namespaces())
    names = [n for n in names if n in existing]
    pids = sorted({p for n in names for p in namespace_pids(n)})
    if pids:
        _kill_pids(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
        left = [p for p in pids if _pid_alive(p)]
        if left:
            log(f"{PROG}: killing {len(left)} process(es) that ignored SIGTERM")
            _kill_pids(left, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_pid_alive(p) for p in left):
                time.sleep(0.05)
    failed = []
    for n in names:
        for _ in range(3):
            if _sh(["ip", "netns", "del", n], check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            failed.append(n)
    still = set(list_namespaces())
    return [n for n in names if n in still] or failed


# ---------------------------------------------------------------------------------------------
class Testbed:
    """H host namespaces on one bridge, optionally shaped; launches torchrun per host."""

    def __init__(self, hosts: int, ranks_per_host: int, rate_bits: Optional[float],
                 loopback_bw: float = DEFAULT_LOOPBACK_BW, log: Callable[[str], None] = print,
                 echo: bool = True):
        if hosts < 1 or hosts > 250 or ranks_per_host < 1:
            raise TestbedError("--hosts must be 1..250 and --ranks-per-host >= 1")
        self.hosts, self.rph, self.rate = hosts, ranks_per_host, rate_bits
        self.loopback_bw = loopback_bw
        self.log, self.echo = log, echo
        self.id = secrets.token_hex(3)
        self.prefix = f"{NS_PREFIX}{self.id}-{os.getpid()}"
        self.subnet = 1 + secrets.randbelow(254)
        self.ns_switch = f"{self.prefix}-sw"
        self.ns_host = [f"{self.prefix}-h{i}" for i in range(hosts)]
        self.veth_host = [f"rb{self.id}h{i}" for i in range(hosts)]
        self.veth_switch = [f"rb{self.id}s{i}" for i in range(hosts)]
        self.ip = [f"10.213.{self.subnet}.{i + 1}" for i in range(hosts)]
        self.created: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.output: list[list[str]] = [[] for _ in range(hosts)]
        self._threads: list[threading.Thread] = []
        self.first_failed: Optional[int] = None   # the host whose torchrun failed first (wait)
        self.torn_down = False

    # ---- network -------------------------------------------------------------------------------
    def _ns_add(self, name: str) -> None:
        _sh(["ip", "netns", "add", name])
        self.created.append(name)

    def _shape(self, ns: str, dev: str) -> None:
        rate_bytes = self.rate / 8
        # burst: >= 64 KiB (veth GSO segments) and ~5 ms at the rate; queue <= 100 ms
        burst = int(max(TBF_MIN_BURST_BYTES, rate_bytes * TBF_BURST_S))
        _sh(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
             "rate", f"{int(self.rate)}bit", "burst", str(burst), "latency", f"{TBF_QUEUE_S * 1e3:g}ms"])

    def setup(self) -> None:
        check_prerequisites()
        sw = self.ns_switch
        self._ns_add(sw)
        _sh(["ip", "-n", sw, "link", "set", "lo", "up"])
        _sh(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _sh(["ip", "-n", sw, "link", "set", "br0", "up"])
        for i in range(self.hosts):
            ns, vh, vs = self.ns_host[i], self.veth_host[i], self.veth_switch[i]
            self._ns_add(ns)
            _sh(["ip", "-n", ns, "link", "add", vh, "type", "veth", "peer", "name", vs, "netns", sw])
            _sh(["ip", "-n", sw, "link", "set", vs, "master", "br0"])
            _sh(["ip", "-n", sw, "link", "set", vs, "up"])
            _sh(["ip", "-n", ns, "addr", "add", f"{self.ip[i]}/24", "dev", vh])
            _sh(["ip", "-n", ns, "link", "set", vh, "up"])
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            if self.rate:
                self._shape(ns, vh)
                self._shape(sw, vs)
        self.log(f"{PROG}: {self.hosts} host(s) x {self.rph} rank(s), "
                 f"{'rate ' + format(self.rate / 1e6, 'g') + ' Mbit/s (tbf, both ends)' if self.rate else 'unshaped'}, "
                 f"namespaces {self.prefix}-*, subnet 10.213.{self.subnet}.0/24")

    # ---- processes -----------------------------------------------------------------------------
    def _pump(self, i: int, stream) -> None:
        for line in iter(stream.readline, ""):
            self.output[i].append(line)
            if self.echo and GLOO_NOISE not in line:
                sys.stdout.write(f"[h{i}] {line}")
                sys.stdout.flush()
        stream.close()

    def launch(self, module: str, args: list[str], timeout: Optional[float] = None) -> None:
        for i in range(self.hosts):
            cmd = ["ip", "netns", "exec", self.ns_host[i], sys.executable, "-m", "torch.distributed.run",
                   f"--nnodes={self.hosts}", f"--node_rank={i}", f"--nproc_per_node={self.rph}",
                   f"--master_addr={self.ip[0]}", f"--master_port={MASTER_PORT}", "--max_restarts=0",
                   "--monitor_interval=0.2", "-m", module, *args]
            env = dict(os.environ)
            env.update({"GLOO_SOCKET_IFNAME": self.veth_host[i],
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                        "PYTHONUNBUFFERED": "1",
                        "MOESIM_TESTBED": json.dumps({"id": self.id, "hosts": self.hosts, "host": i,
                                                      "ranks_per_host": self.rph, "rate_bits": self.rate,
                                                      "ip": self.ip[i]})})
            env.pop("NCCL_SOCKET_IFNAME", None)
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True, bufsize=1)
            self.procs.append(p)
            t = threading.Thread(target=self._pump, args=(i, p.stdout), daemon=True)
            t.start()
            self._threads.append(t)

    def wait(self, deadline_s: Optional[float] = None, grace: float = 20.0) -> list[Optional[int]]:
        """Wait for every host's torchrun. After the first failure the others get ``grace`` seconds
        to fail on their own (they see broken connections / timeouts), then they are killed."""
        start = time.monotonic()
        first_fail: Optional[float] = None
        while True:
            codes = [p.poll() for p in self.procs]
            if all(c is not None for c in codes):
                break
            now = time.monotonic()
            if first_fail is None and any(c not in (None, 0) for c in codes):
                first_fail = now
                self.first_failed = next(i for i, c in enumerate(codes) if c not in (None, 0))
            if first_fail is not None and now - first_fail > grace:
                self.log(f"{PROG}: a host failed; stopping the others")
                break
            if deadline_s is not None and now - start > deadline_s:
                self.log(f"{PROG}: deadline of {deadline_s:g} s reached; stopping all hosts")
                break
            time.sleep(0.1)
        self._stop_procs()
        for t in self._threads:
            t.join(timeout=2)
        return [p.poll() for p in self.procs]

    def last_lines(self, host: int, n: int = 8) -> list[str]:
        """Up to ``n`` lines saying why host ``host`` failed: the last non-blank lines its ranks printed
        before torchrun's own failure report, then that report's ``exitcode`` line(s)."""
        lines = [ln.rstrip() for ln in self.output[host] if ln.strip() and GLOO_NOISE not in ln]
        report = next((k for k, ln in enumerate(lines) if "ChildFailedError" in ln), None)
        if report is None:
            return lines[-n:]
        # torchrun's report starts with its own traceback, which ends in ChildFailedError
        start = max((k for k in range(report) if lines[k].startswith("Traceback")), default=report)
        codes = [ln.strip() for ln in lines[report:] if ln.strip().startswith("exitcode")][: n // 2]
        own = lines[:start][-(n - len(codes)):] if n > len(codes) else []
        return own + codes

    def _stop_procs(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)

    def teardown(self) -> list[str]:
        """Kill our processes, delete our namespaces. Idempotent; returns leftovers (should be [])."""
        if self.torn_down:
            return []
        self._stop_procs()
        left = remove_namespaces(list(self.created), self.log)
        self.torn_down = True
        if left:
            self.log(f"{PROG}: WARNING: could not remove namespace(s) {', '.join(left)}")
        return left

    # ---- topology ------------------------------------------------------------------------------
    def topology(self) -> dict:
        """node-link JSON of the testbed for the simulator (moesim.topology format)."""
        import networkx as nx
        from moesim.topology.generators import emulated_testbed
        nic_bw = (self.rate / 8) if self.rate else 10e9
        g = emulated_testbed(self.hosts, self.rph, link_bandwidth=nic_bw, loopback_bandwidth=self.loopback_bw,
                             stack_bandwidth=self.loopback_bw).graph
        g.graph.update(source=PROG, testbed_id=self.id, tc_rate_bits=self.rate or 0.0,
                       shared_cpu_cores=os.cpu_count() or 1,
                       description=(f"emulated testbed: {self.hosts} namespaces x {self.rph} ranks, veth "
                                    + (f"{self.rate / 1e6:g} Mbit/s tbf on both ends (nominal tc rate; calibrate the "
                                       f"effective rate with real_backend.microbench)" if self.rate
                                       else "unshaped (nominal 10 GB/s)")
                                    + f"; TCP stack and loopback {self.loopback_bw / 1e9:g} GB/s per rank (nominal)"))
        return nx.node_link_data(g, edges="edges")


# ---------------------------------------------------------------------------------------------
def cleanup_stale(log: Callable[[str], None] = print) -> int:
    """Remove namespaces of testbed runs whose owning process is gone (e.g. killed with -9)."""
    check_prerequisites()
    stale = []
    for ns in list_namespaces():
        m = re.fullmatch(rf"{NS_PREFIX}[0-9a-f]+-(\d+)-(sw|h\d+)", ns)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(ns)
    left = remove_namespaces(stale, log)
    log(f"{PROG}: removed {len(stale) - len(left)} stale namespace(s)" + (f"; could not remove {left}" if left else ""))
    return 1 if left else 0


def _out_arg(args: list[str], flag: str = "--out") -> Optional[str]:
    """The value of ``flag`` in an inner command line (``--out X`` or ``--out=X``), or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def topology_paths(inner: list[str], explicit: Optional[str] = None) -> list[str]:
    """Where a successful run writes the testbed's topology: ``explicit`` (``--topology``), else
    ``<table>.topology.json`` next to the inner command's ``--out`` and ``--paired-out`` tables."""
    if explicit:
        return [explicit]
    tables = [t for t in (_out_arg(inner), _out_arg(inner, "--paired-out")) if t]
    return [str(Path(t).with_suffix("")) + ".topology.json" for t in tables] or ["testbed.topology.json"]


def _write_netstats(tb: Testbed, path: str, codes: list, log: Callable[[str], None]) -> None:
    """The testbed's kernel counters (``real_backend.netstats``), written atomically to ``path``."""
    from moesim.io import write_json_atomic
    from real_backend.netstats import read_netstats
    stats = read_netstats({f"host{i}": ns for i, ns in enumerate(tb.ns_host)}, tb.ns_switch)
    stats["testbed"] = {"hosts": tb.hosts, "ranks_per_host": tb.rph, "rate_bits": tb.rate or 0.0,
                        "exit_codes": codes}
    write_json_atomic(path, stats)
    t = stats["totals"]
    log(f"{PROG}: netstats -> {path} (TCP retransmitted {t['tcp_retrans_segs']} of {t['tcp_out_segs']} segments, "
        f"{t['tcp_timeouts']} timeouts; tbf dropped {t['tbf_drops']} packets)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0],
                                 usage=f"python -m {PROG} --hosts H --ranks-per-host R [--rate RATE] "
                                       f"-- (run|microbench) ARGS...")
    ap.add_argument("--hosts", type=int, default=2, help="network namespaces (default 2)")
    ap.add_argument("--ranks-per-host", type=int, default=1, help="ranks per host (default 1)")
    ap.add_argument("--rate", default="none", help="tc rate of each host link, e.g. 100mbit, 1gbit; none = unshaped")
    ap.add_argument("--topology", default=None,
                    help="topology file to write on success (default: <out>.topology.json next to --out, "
                         "and next to run's --paired-out too)")
    ap.add_argument("--loopback-bw", type=float, default=DEFAULT_LOOPBACK_BW,
                    help="nominal bytes/s of a rank's stack and loopback links in the topology file")
    ap.add_argument("--deadline", type=float, default=None, help="kill everything after this many seconds")
    ap.add_argument("--grace", type=float, default=20.0,
                    help="seconds the other hosts get to exit after one fails (default 20)")
    ap.add_argument("--netstats", default=None, metavar="FILE.json",
                    help="after the run (failed ones too), write the kernel's TCP counters per host and the "
                         "bytes, drops and throttles of every qdisc (real_backend.netstats) to this JSON file")
    ap.add_argument("--cleanup", action="store_true", help="remove namespaces left by killed testbed runs and exit")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- run ARGS | -- microbench ARGS")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.cleanup:
            return cleanup_stale(log)
        cmd = list(args.command)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd or cmd[0] not in MODULES:
            raise TestbedError("give the command after '--': run ARGS..., microbench ARGS... or patterns ARGS...")
        module, inner = MODULES[cmd[0]], cmd[1:]
        rate = parse_rate(args.rate)
        check_prerequisites()
        topo_paths = topology_paths(inner, args.topology)
        tb = Testbed(args.hosts, args.ranks_per_host, rate, args.loopback_bw, log=log)
    except TestbedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    old = {}

    def on_signal(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        old[sig] = signal.signal(sig, on_signal)
    code = 1
    try:
        tb.setup()
        tb.launch(module, inner)
        codes = tb.wait(deadline_s=args.deadline, grace=args.grace)
        bad = [(i, c) for i, c in enumerate(codes) if c != 0]
        if bad:
            for i, c in bad:
                first, last = i * tb.rph, (i + 1) * tb.rph - 1
                log(f"{PROG}: host {i} (ranks {first}..{last}) exited with status {c}")
            culprit = tb.first_failed if tb.first_failed is not None else bad[0][0]
            # the cause, last: callers that keep only the tail of this output (schedprobe, campaign) see it
            how = "failed first" if tb.first_failed is not None else "was stopped at the deadline"
            log(f"{PROG}: host {culprit} {how}; its last lines:")
            for line in tb.last_lines(culprit):
                log(f"{PROG}:   [h{culprit}] {line}")
            code = 1
        else:
            from moesim.io import write_json_atomic
            for topo_path in topo_paths:
                write_json_atomic(topo_path, tb.topology())
            log(f"{PROG}: topology -> {', '.join(topo_paths)}")
            code = 0
        if args.netstats:
            _write_netstats(tb, args.netstats, codes, log)
    except Interrupted as exc:
        log(f"{PROG}: interrupted by signal {exc.signum}; tearing down")
        code = 128 + exc.signum
    except TestbedError as exc:
        log(f"{PROG}: error: {exc}")
        code = 2
    except Exception as exc:  # noqa: BLE001
        log(f"{PROG}: error: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)  # let teardown finish
        left = tb.teardown()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if left:
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
