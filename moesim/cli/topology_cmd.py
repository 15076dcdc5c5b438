"""``moesim topology``: summarise topology files and write the generated ones."""
from __future__ import annotations

import argparse

from moesim.cli.common import print_json
from moesim.errors import MoesimError
from moesim.units import parse_bandwidth


def _bandwidth(text: str) -> float:
    try:
        return parse_bandwidth(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def register(subparsers) -> None:
    p = subparsers.add_parser("topology", help="summarise a topology file or write a generated one",
                              description="Summarise topology files and write the generated cluster topologies "
                                          "(node-link JSON; GraphML with a .graphml suffix).")
    sub = p.add_subparsers(dest="topology_command", metavar="ACTION")
    sub.required = True

    show = sub.add_parser("show", help="summarise a topology file (GPUs, hosts, link classes, bisection bandwidth)")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.add_argument("--no-bisection", action="store_true", help="skip the bisection max-flow (large topologies)")
    show.set_defaults(func=_show)

    c = sub.add_parser("cluster", help="write a parametric multi-node cluster",
                       description="N nodes of G GPUs; defaults: DGX-H100-like nodes (NVSwitch 450 GB/s per GPU, "
                                   "one 400 Gb/s NIC per GPU) on a rail-optimised fabric.")
    c.add_argument("--nodes", type=int, required=True)
    c.add_argument("--gpus-per-node", type=int, required=True)
    c.add_argument("--intra", choices=("nvswitch", "pcie"), default="nvswitch")
    c.add_argument("--fabric", choices=("rail", "leafspine"), default="rail")
    c.add_argument("--oversubscription", type=_positive_float, default=1.0, help="leaf downlink:uplink ratio (default 1)")
    c.add_argument("--nic-bandwidth", type=_bandwidth, default="400 Gbit/s", help="per NIC, e.g. '400 Gbit/s'")
    c.add_argument("--nics-per-node", type=int, default=None, help="default: one per GPU")
    c.add_argument("--nvlink-bandwidth", type=_bandwidth, default="450 GB/s", help="per GPU per direction")
    c.add_argument("--pcie-bandwidth", type=_bandwidth, default="50 GB/s", help="effective, per direction")
    c.add_argument("--leaf-ports", type=int, default=32, help="NIC ports per leaf switch (default 32)")
    c.add_argument("--spines", type=int, default=8, help="spine switches (default 8)")
    c.add_argument("--device", default="h100-sxm", help="GPU device profile name (default h100-sxm)")
    c.add_argument("--name", default=None)
    c.add_argument("--out", required=True, metavar="FILE")
    c.set_defaults(func=_cluster)

    pp = sub.add_parser("paper", help="write the BigMac paper's speed cluster (4 x 8 GPUs, PCIe 4.0, 100 Gb/s IB)")
    pp.add_argument("--out", required=True, metavar="FILE")
    pp.set_defaults(func=_paper)

    d = sub.add_parser("dgx", help="write a DGX-H100-like node (8 GPUs, NVSwitch, 8 x 400 Gb/s NICs)")
    d.add_argument("--out", required=True, metavar="FILE")
    d.set_defaults(func=_dgx)

    t = sub.add_parser("testbed", help="write the emulated on-one-machine testbed (namespaces on a bridge)")
    t.add_argument("--hosts", type=int, default=2)
    t.add_argument("--ranks-per-host", type=int, default=2)
    t.add_argument("--link-bandwidth", type=_bandwidth, default="1 Gbit/s", help="shaped veth rate per direction")
    t.add_argument("--loopback-bandwidth", type=_bandwidth, default="2 GB/s",
                   help="between ranks of one host, per rank, per direction")
    t.add_argument("--stack-bandwidth", type=_bandwidth, default="2 GB/s",
                   help="a rank's TCP stack to its host's veth, per rank, per direction")
    t.add_argument("--out", required=True, metavar="FILE")
    t.set_defaults(func=_testbed)


def _show(args) -> int:
    from moesim.topology import load_topology
    from moesim.topology.summary import format_summary, summarize
    s = summarize(load_topology(args.file), bisection=not args.no_bisection)
    if args.json:
        print_json(s)
    else:
        print(format_summary(s))
    return 0


def _write(topo, path: str) -> int:
    from moesim.topology import save_topology
    save_topology(topo, path)
    classes = ", ".join(topo.link_classes)
    print(f"wrote {path}: {topo.name}, {topo.num_gpus} GPUs on {len(topo.hosts)} hosts, "
          f"{len(topo.nodes)} nodes, {topo.num_links} directed links ({classes})")
    return 0


def _cluster(args) -> int:
    from moesim.topology.generators import cluster
    for name in ("nodes", "gpus_per_node", "leaf_ports", "spines"):
        if getattr(args, name) < 1:
            raise MoesimError(f"--{name.replace('_', '-')} must be at least 1")
    topo = cluster(args.nodes, args.gpus_per_node, intra=args.intra, fabric=args.fabric,
                   oversubscription=args.oversubscription, nic_bandwidth=_bw(args.nic_bandwidth),
                   nics_per_node=args.nics_per_node, nvlink_bandwidth=_bw(args.nvlink_bandwidth),
                   pcie_bandwidth=_bw(args.pcie_bandwidth), leaf_ports=args.leaf_ports, spines=args.spines,
                   device=args.device or None, name=args.name)
    return _write(topo, args.out)


def _bw(value) -> float:
    return parse_bandwidth(value)  # defaults arrive as strings, options already parsed


def _paper(args) -> int:
    from moesim.topology.generators import bigmac_paper
    return _write(bigmac_paper(), args.out)


def _dgx(args) -> int:
    from moesim.topology.generators import dgx_h100_node
    return _write(dgx_h100_node(), args.out)


def _testbed(args) -> int:
    from moesim.topology.generators import emulated_testbed
    if args.hosts < 1 or args.ranks_per_host < 1:
        raise MoesimError("--hosts and --ranks-per-host must be at least 1")
    topo = emulated_testbed(args.hosts, args.ranks_per_host, link_bandwidth=_bw(args.link_bandwidth),
                            loopback_bandwidth=_bw(args.loopback_bandwidth),
                            stack_bandwidth=_bw(args.stack_bandwidth))
    return _write(topo, args.out)
