"""Build the kernel from source into a vmlinuz tarball.

The source tarball comes through the farm's distfile mirror, then upstream's (each mirror's
layout.conf says where it keeps the file), and is accepted only with the size and hashes of its
Manifest DIST line from the verified snapshot (``farm-worker kernel-source``); a downloaded tarball
is kept in the work directory and unpacked once. The config file is copied into a fresh out-of-tree
build directory, ``make olddefconfig`` completes it, and the build runs
with ccache (``CC`` and ``HOSTCC`` fixed to ``ccache gcc``: Kbuild rebuilds everything when the
compiler command changes), so a config change costs minutes, not a cold build. Modules go to a
staging root; an initramfs is added only when the config builds the root's drivers as modules.
The build log streams; a config that does not compile fails with the compiler's error.
"""

import argparse
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from gentoo_farm.checksums import feed, file_sha512, sha512_line
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.distfiles import DistEntry, fetch_distfile
from gentoo_farm.workers.toolkit.initramfs import config_needs_initramfs
from gentoo_farm.workers.toolkit.tools import ToolError, require_file, run_tool, tail
from gentoo_farm.workers.toolkit.vmlinuz import finish_kernel_tree, write_tarball

COMPILER = "ccache gcc"
# The lines of a failed build that say why, best first: the compiler's and linker's errors, then
# make's own complaints (which only say which target failed).
ERROR_LINES = (
    re.compile(r"(fatal )?error:|undefined reference"),
    re.compile(r"No rule to make target|\*\*\* .*Error \d"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mirror",
        dest="mirrors",
        action="append",
        required=True,
        metavar="URL",
        help="a Gentoo-style mirror (the URL above distfiles/); repeatable, tried in order: the farm's first",
    )
    parser.add_argument(
        "--source-dist",
        required=True,
        metavar="LINE",
        help="the source tarball's DIST line from its Manifest (farm-worker kernel-source reports it)",
    )
    parser.add_argument("--config", required=True, type=Path, help="the kernel .config to build")
    parser.add_argument(
        "--output", required=True, type=Path, help="the vmlinuz tarball to write (.tar.zst...)"
    )
    parser.add_argument(
        "--work-dir", required=True, type=Path, help="kept between builds: downloaded and unpacked sources"
    )
    parser.add_argument(
        "--ccache-dir", required=True, type=Path, help="the compiler cache (kept between builds)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel make jobs")


def unpack_source(tarball: Path, sources: Path) -> Path:
    """Unpack once per tarball content; return the source tree (the tarball's top directory)."""
    digest = hashlib.sha256()
    with tarball.open("rb") as handle:
        feed(handle, digest)
    destination = sources / digest.hexdigest()[:16]
    done = destination / ".unpacked"
    if not done.exists():
        shutil.rmtree(destination, ignore_errors=True)
        destination.mkdir(parents=True)
        progress(f"unpacking {tarball.name}")
        run_tool(["tar", "-C", destination, "-xf", tarball], what=f"unpacking {tarball.name}")
        done.touch()
    trees = [path for path in destination.iterdir() if path.is_dir() and (path / "Makefile").is_file()]
    if len(trees) != 1:
        raise StageError(f"{tarball}: expected one kernel source directory at the top, found {len(trees)}")
    return trees[0]


def refuse_initramfs_source(config: Path) -> None:
    """Refuse a config whose CONFIG_INITRAMFS_SOURCE names files: Kbuild would pack them from the
    worker (any directory or cpio list on it) into the kernel image that gets published."""
    for line in config.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "CONFIG_INITRAMFS_SOURCE" and value.strip().strip('"'):
            raise StageError(
                f"{config}: CONFIG_INITRAMFS_SOURCE={value.strip()} would build files of the worker into "
                'the kernel; set it to "" (the farm adds its own initramfs when the kernel needs one)'
            )


def compiler_error(output: str) -> str:
    for pattern in ERROR_LINES:
        for line in output.splitlines():
            if pattern.search(line):
                return line.strip()
    return "see the build log"


def make(
    source: Path, build: Path, targets: list[str], environment: dict[str, str], jobs: int, what: str
) -> str:
    command = [
        "make",
        "-C",
        source,
        f"O={build}",
        f"-j{jobs}",
        f"CC={COMPILER}",
        f"HOSTCC={COMPILER}",
        *targets,
    ]
    try:
        return run_tool(command, what=what, env=environment, stream=True)
    except ToolError as error:
        # gcc names files relative to the build directory; the source tree's own paths read better.
        output = error.output.replace(os.path.relpath(source, build) + "/", "").replace(f"{source}/", "")
        raise StageError(f"{what} failed: {compiler_error(output)}\n{tail(output)}") from None


def run(args: argparse.Namespace) -> None:
    config = require_file(args.config, "kernel config")
    refuse_initramfs_source(config)
    if shutil.which("ccache") is None:
        raise StageError("ccache is not installed on this worker (the kernel build needs it)")
    started = time.monotonic()
    entry = DistEntry.parse(args.source_dist)
    tarball = fetch_distfile(args.mirrors, entry, args.work_dir / "distfiles", "kernel source")
    source = unpack_source(tarball, args.work_dir / "sources")
    args.ccache_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        "CCACHE_DIR": str(args.ccache_dir.resolve()),
        # Paths under the work directory become relative for ccache, so a worker that unpacks the
        # source elsewhere still hits the cache.
        "CCACHE_BASEDIR": str(args.work_dir.resolve()),
        "KBUILD_BUILD_USER": "gentoo-farm",
        "KBUILD_BUILD_HOST": "gentoo-farm",
    }
    run_tool(["ccache", "--zero-stats"], what="ccache --zero-stats", env=environment)
    with tempfile.TemporaryDirectory(prefix="kernel-build-", dir=args.work_dir) as scratch_name:
        scratch = Path(scratch_name)
        build, staging = scratch / "build", scratch / "staging"
        build.mkdir()
        shutil.copyfile(config, build / ".config")
        make(source, build, ["olddefconfig"], environment, 1, "make olddefconfig")
        settings = (build / ".config").read_text()
        modular = "\nCONFIG_MODULES=y\n" in f"\n{settings}"
        make(
            source,
            build,
            ["bzImage", *(["modules"] if modular else [])],
            environment,
            args.jobs,
            "kernel build",
        )
        release = run_tool(
            ["make", "-s", "-C", source, f"O={build}", "kernelrelease"], what="make kernelrelease"
        ).strip()
        (staging / "boot").mkdir(parents=True)
        shutil.copyfile(build / "arch/x86/boot/bzImage", staging / "boot" / f"vmlinuz-{release}")
        shutil.copyfile(build / ".config", staging / "boot" / f"config-{release}")
        if modular:
            make(
                source,
                build,
                ["modules_install", f"INSTALL_MOD_PATH={staging}", "DEPMOD=true"],
                environment,
                1,
                "make modules_install",
            )
        needs_initramfs = config_needs_initramfs(build / ".config")
        members = finish_kernel_tree(staging, release, initramfs=needs_initramfs)
        write_tarball(staging, members, args.output)
    stats = run_tool(["ccache", "--print-stats"], what="ccache --print-stats", env=environment)
    counters = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    hits = int(counters.get("direct_cache_hit", 0)) + int(counters.get("preprocessed_cache_hit", 0))
    misses = int(counters.get("cache_miss", 0))
    elapsed = time.monotonic() - started
    checksum = file_sha512(args.output)
    args.output.with_name(args.output.name + ".sha512").write_bytes(sha512_line(checksum, args.output.name))
    progress(
        f"kernel {release} built in {elapsed:.0f} s (ccache: {hits} hits, {misses} misses), "
        f"initramfs: {'yes' if needs_initramfs else 'not needed'}"
    )
    report(
        kernel_release=release,
        kernel_initramfs=needs_initramfs,
        kernel_build_seconds=round(elapsed, 1),
        kernel_ccache_hits=hits,
        kernel_ccache_misses=misses,
        vmlinuz_path=str(args.output),
        vmlinuz_sha512=checksum,
    )
