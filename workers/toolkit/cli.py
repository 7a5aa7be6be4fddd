"""``farm-worker``: run one build stage on this machine, with or without Buildbot."""

import argparse
import importlib
import sys
from collections.abc import Sequence

from gentoo_farm.workers.toolkit import StageError

# Stage name → module of this package, in the order of an image build.
STAGES: dict[str, str] = {
    "input-key": "input_key",
    "fetch-release": "fetch_release",
    "download-inputs": "download_inputs",
    "unpack-root": "unpack_root",
    "emerge": "emerge",
    "kernel": "kernel",
    "kernel-package": "kernel_package",
    "overlay": "overlay",
    "assemble": "assemble",
    "disk": "disk",
    "boot-test": "boottest",
    "list-new": "list_new",
    "upload": "upload",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm-worker", description=__doc__)
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, module_name in STAGES.items():
        module = importlib.import_module(f"gentoo_farm.workers.toolkit.{module_name}")
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
