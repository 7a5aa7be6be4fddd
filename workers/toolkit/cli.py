"""``farm-worker``: run one build stage on this machine, with or without Buildbot."""

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from gentoo_farm.subcommands import add_subcommands
from gentoo_farm.workers.toolkit import StageError, take_result_nonce

# Stage name → module of the stages package, in the order of an image build.
STAGES: dict[str, str] = {
    "input-key": "input_key",
    "fetch-release": "fetch_release",
    "download-inputs": "download_inputs",
    "unpack-root": "unpack_root",
    "emerge": "emerge",
    "prune-root": "prune_root",
    "pack-root": "pack_root",
    "kernel-source": "kernel_source",
    "kernel-ccache-seed": "kernel_ccache_seed",
    "kernel": "kernel",
    "kernel-ccache-pack": "kernel_ccache_pack",
    "kernel-package": "kernel_package",
    "overlay": "overlay",
    "assemble": "assemble",
    "image-manifest": "image_manifest",
    "disk": "disk",
    "boot-test": "boottest",
    "list-new": "list_new",
    "upload": "upload",
}


class Terminated(BaseException):
    """SIGTERM (a stopped build): unwinds the stage like an exception, so its cleanup runs."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Once only: the cleanup the first one started (unmount, detach a loop device) must finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm-worker", description=__doc__)
    modules = {name: f"gentoo_farm.workers.toolkit.stages.{module}" for name, module in STAGES.items()}
    add_subcommands(parser, modules, dest="stage", metavar="STAGE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    take_result_nonce()
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        args.module.run(args)
    except StageError as error:
        print(f"farm-worker {args.stage}: error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"farm-worker {args.stage}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Terminated:
        print(f"farm-worker {args.stage}: stopped (SIGTERM), cleaned up", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
