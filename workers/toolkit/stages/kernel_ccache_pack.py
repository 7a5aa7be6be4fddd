"""Pack the kernel build's ccache for the farm to share, when the build added to it.

After a kernel build with ccache misses (ccache's own statistics, which the kernel stage zeroes
before it compiles) the ccache directory is packed into a tar.zst named by nothing but its content:
the master signs a create-only upload URL for ``caches/kernel-ccache/<arch>/<sha256>.tar.zst`` from
the reported sha256. A build without misses found everything in the cache it started from, so it
packs nothing. ccache's statistics, temporary files and configuration stay out; names, owners and
times are fixed, so the same cache packs to the same bytes.
"""

import argparse
import hashlib
from pathlib import Path

from gentoo_farm.checksums import feed
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.tools import ccache_counts, run_tool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ccache-dir", required=True, type=Path, help="the kernel build's ccache directory")
    parser.add_argument("--output", required=True, type=Path, help="the tarball to write (.tar.zst)")


def run(args: argparse.Namespace) -> None:
    if not args.ccache_dir.is_dir():
        raise StageError(f"{args.ccache_dir}: no ccache directory to pack")
    _, misses = ccache_counts({"CCACHE_DIR": str(args.ccache_dir.resolve())})
    if misses == 0:
        progress("the kernel build had no ccache misses: the shared ccache has everything it compiled")
        report(kernel_ccache_packed=False)
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    run_tool(
        [
            "tar", "-C", args.ccache_dir, "--create", "--zstd", "--file", args.output,
            "--exclude=./tmp", "--exclude=./ccache.conf", "--exclude=stats", "--exclude=*.lock",
            "--exclude=lock",
            "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", ".",
        ],
        what=f"packing the ccache {args.ccache_dir}",
    )  # fmt: skip
    digest = hashlib.sha256()
    with args.output.open("rb") as handle:
        feed(handle, digest)
    size = args.output.stat().st_size
    progress(f"packed the kernel ccache after {misses} misses: {size} bytes, sha256 {digest.hexdigest()}")
    report(kernel_ccache_packed=True, kernel_ccache_sha256=digest.hexdigest(), kernel_ccache_size=size)
