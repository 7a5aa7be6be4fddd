"""Pack the emerged, pruned build root into a stage4: what the next image build with the same stage3,
snapshot, packages and settings unpacks instead of running Portage.

Ownership, modes and file capabilities are kept as ``unpack-root`` restores them (its ``TAR_OPTIONS``);
members are sorted, so the same tree gives the same member order. The compression follows the file name.
"""

import argparse
from pathlib import Path

from gentoo_farm.units import human_size
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.tools import run_tool

# POSIX (pax) headers carry the extended attributes that --xattrs records; GNU headers cannot.
PACK_OPTIONS = ("--sort=name", "--numeric-owner", "--xattrs", "--xattrs-include=*.*", "--format=posix")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="the build root to pack")
    parser.add_argument("--output", required=True, type=Path, help="the stage4 tarball (.tar.zst, .tar.xz)")


def run(args: argparse.Namespace) -> None:
    root: Path = args.root
    if not (root / "var/db/pkg").is_dir():
        raise StageError(f"{root}: not an emerged build root (no var/db/pkg)")
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial" + "".join(output.suffixes))
    progress(f"packing {root} into {output.name}")
    run_tool(["tar", "-C", root, *PACK_OPTIONS, "-a", "-cf", partial, "."], what=f"packing {output.name}")
    partial.replace(output)
    size = output.stat().st_size
    progress(f"{output.name}: {human_size(size)}")
    report(stage4_bytes=size)
