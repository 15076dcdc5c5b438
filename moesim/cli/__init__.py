"""The ``moesim`` console entry point. Each subcommand lives in its own module under
``moesim.cli`` and exposes ``register(subparsers)``; user errors print one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import sys

from moesim.errors import MoesimError

# module name -> subcommand(s) it registers; imported lazily so a broken optional part
# cannot stop the others, and torch is never imported here.
SUBCOMMAND_MODULES = (
    "moesim.cli.analyze_cmd",
    "moesim.cli.topology_cmd",
    "moesim.cli.collective_cmd",
    "moesim.cli.simulate_cmd",
    "moesim.cli.sweep_cmd",
    "moesim.cli.dashboard_cmd",
    "moesim.cli.cost_cmd",
    "moesim.cli.calibrate_cmd",
    "moesim.cli.validate_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moesim",
        description="Simulate CDAC vs BigMac (DCCA) Mixture-of-Experts training and inference on GPU clusters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('moesim').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subcommand not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MoesimError as exc:
        print(f"moesim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moesim {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
