"""``farm``: create, run and inspect a gentoo-farm."""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gentoo_farm.config import FarmConfigError, load_config
from gentoo_farm.subcommands import add_subcommands

# Each name is a module of gentoo_farm.commands with add_arguments(parser) and
# run(args, config) -> int; a module with CREATES_FARM = True runs without a farm.toml, one with
# needs_farm(args) -> bool without one when that says so (config is then None).
COMMANDS: tuple[str, ...] = (
    "init", "up", "down", "status", "build", "logs", "check", "passwd", "hook", "key", "images", "download",
    "diff", "prune", "boot",
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
    add_subcommands(
        parser, {name: f"gentoo_farm.commands.{name}" for name in COMMANDS}, dest="command", metavar="COMMAND"
    )
    return parser


def needs_farm(args: argparse.Namespace) -> bool:
    if hasattr(args.module, "needs_farm"):
        return args.module.needs_farm(args)
    return not getattr(args.module, "CREATES_FARM", False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.farm) if needs_farm(args) else None
        return args.module.run(args, config)
    except (FarmConfigError, CommandError) as error:
        print(f"farm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
