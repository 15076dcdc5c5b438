"""Options shared by subcommands: the config (``--model``, ``--set``) and JSON output."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from moesim.config import Config, load_config


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--model NAME|FILE`` and repeatable ``--set section.key=value``."""
    parser.add_argument("--model", default="gpt3-xl", metavar="PRESET|FILE",
                        help="preset name (gpt3-medium, gpt3-xl, gpt3-2.7b, gpt3-6.7b) or a YAML config file "
                             "(default: gpt3-xl)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set moe.structure=dcca --set parallel.ep=32 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.model, args.overrides)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
