"""Read what the verified Portage snapshot vouches for the kernel's distfile: its Manifest DIST line.

``farm-worker kernel-source --snapshot portage.tar.xz --package sys-kernel/vanilla-sources --distfile
linux-6.1.tar.xz`` reports ``kernel_source_dist`` (the DIST line: size, BLAKE2B, SHA512) and
``kernel_source_sha512``. The kernel builder makes its input key of them and hands the line to the
``kernel`` or ``kernel-package`` stage, which accepts only a download that matches it: the snapshot,
signed by Gentoo's snapshot key, vouches for the kernel source the way it does for every distfile emerge
fetches.
"""

import argparse
from pathlib import Path

from gentoo_farm.workers.toolkit import progress, report
from gentoo_farm.workers.toolkit.distfiles import manifest_entry
from gentoo_farm.workers.toolkit.tools import require_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--snapshot", required=True, type=Path, help="the verified Portage snapshot (portage-*.tar.xz)"
    )
    parser.add_argument(
        "--package", required=True, help="the package whose Manifest lists the distfile (category/name)"
    )
    parser.add_argument("--distfile", required=True, help="the kernel source (or kernel package) distfile")


def run(args: argparse.Namespace) -> None:
    snapshot = require_file(args.snapshot, "Portage snapshot")
    entry = manifest_entry(snapshot, args.package, args.distfile)
    progress(f"{args.package}'s Manifest: {entry.line}")
    report(kernel_source_dist=entry.line, kernel_source_sha512=entry.sha512)
