"""``farm-worker``: run one build stage on this machine, with or without Buildbot."""

import argparse
import importlib
import sys
from collections.abc import Sequence

from gentoo_farm.workers.toolkit import StageError

# The order is the order of an image build; each name is a module of this package
# (dashes become underscores).
STAGES: tuple[str, ...] = (
    "input-key",
    "fetch",
    "get",
    "chroot",
    "emerge",
    "kernel",
    "kernel-package",
    "overlay",
    "assemble",
    "disk",
    "boot-test",
    "list-new",
    "upload",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm-worker", description=__doc__)
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        module = importlib.import_module(f"gentoo_farm.workers.toolkit.{name.replace('-', '_')}")
        summary = (module.__doc__ or name).strip().splitlines()[0]
        stage_parser = subparsers.add_parser(name, help=summary, description=module.__doc__)
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except StageError as error:
        print(f"farm-worker {args.stage}: error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"farm-worker {args.stage}: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
