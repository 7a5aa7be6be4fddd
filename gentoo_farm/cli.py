"""``farm``: create, run and inspect a gentoo-farm."""

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gentoo_farm.config import FarmConfigError, load_config

# Each name is a module of gentoo_farm.commands with add_arguments(parser) and
# run(args, config) -> int; a module with CREATES_FARM = True runs without a farm.toml.
COMMANDS: tuple[str, ...] = (
    "init", "up", "down", "status", "check", "passwd", "hook", "images", "download", "prune",
)  # fmt: skip


class CommandError(Exception):
    """A user-facing failure of a `farm` command; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description=__doc__)
    parser.add_argument(
        "--farm",
        type=Path,
        default=Path(os.environ.get("FARM_DIR", ".")),
        help="the farm directory (default: $FARM_DIR or the current directory)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gentoo_farm.commands.{name}")
        summary = (module.__doc__ or name).strip().splitlines()[0]
        command_parser = subparsers.add_parser(name, help=summary, description=module.__doc__)
        module.add_arguments(command_parser)
        command_parser.set_defaults(module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = None if getattr(args.module, "CREATES_FARM", False) else load_config(args.farm)
        return args.module.run(args, config)
    except (FarmConfigError, CommandError) as error:
        print(f"farm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
