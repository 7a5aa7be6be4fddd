"""Build the kernel from source into a vmlinuz tarball.

The source tarball comes through the farm's distfile mirror, then upstream's (each mirror's
layout.conf says where it keeps the file), and is accepted only with the size and hashes of its
Manifest DIST line from the verified snapshot (``farm-worker kernel-source``); a downloaded tarball
is kept in the work directory and unpacked once. The config file is copied into the out-of-tree build
directory the work directory keeps for that source, ``make olddefconfig`` completes it, and ``make``
rebuilds what the change touches (Kbuild tracks each option per object file), so a config change
costs what make needs, not a cold build. The build runs with ccache (``CC`` and ``HOSTCC`` fixed to
``ccache gcc``: Kbuild rebuilds everything when the compiler command changes), which makes a fresh
tree cheap too. A tree whose last build was interrupted is built afresh. Modules go to a staging
root; an initramfs is added only when the config builds the root's drivers as modules. The build
log streams; a config that does not compile fails with the compiler's error.
"""

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gentoo_farm.checksums import feed, file_sha512, sha512_line
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.distfiles import dist_entry, fetch_distfile
from gentoo_farm.workers.toolkit.initramfs import config_needs_initramfs
from gentoo_farm.workers.toolkit.tools import ToolError, ccache_counts, run_tool, tail
from gentoo_farm.workers.toolkit.vmlinuz import finish_kernel_tree, write_tarball

COMPILER = "ccache gcc"
# Where the work directory keeps one out-of-tree build directory, for the newest source built.
BUILD_TREES = "build-trees"
# Present while make runs in a kept tree: a tree that still has it was interrupted and is not reused.
BUILD_IN_PROGRESS = ".farm-build-in-progress"
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


def source_date(source: Path) -> str:
    """When the source was released, as ``uname -v`` shows a build time: its top Makefile's date."""
    released = time.gmtime((source / "Makefile").stat().st_mtime)
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", released)


# String options whose value Kbuild opens as a file (or directory), and what it does with it; a
# relative value is taken in the kernel tree (docs/security.md, "Kernel configs read no worker file").
HOST_PATH_OPTIONS = {
    "CONFIG_INITRAMFS_SOURCE": "build files of the worker into the kernel",
    "CONFIG_EXTRA_FIRMWARE_DIR": "build firmware files of the worker into the kernel",
    "CONFIG_EXTRA_FIRMWARE": "build firmware files of the worker into the kernel",
    "CONFIG_MODULE_SIG_KEY": "sign modules with a key of the worker",
    "CONFIG_SYSTEM_TRUSTED_KEYS": "build certificates of the worker into the kernel",
    "CONFIG_SYSTEM_REVOCATION_KEYS": "build certificates of the worker into the kernel",
    "CONFIG_SYSTEM_BLACKLIST_HASH_LIST": "build a file of the worker into the kernel",
    "CONFIG_ACPI_CUSTOM_DSDT_FILE": "build a file of the worker into the kernel",
    "CONFIG_UNUSED_KSYMS_WHITELIST": "read a file of the worker",
    "CONFIG_EFI_SBAT_FILE": "build a file of the worker into the kernel",
    "CONFIG_BUILTIN_DTB_NAME": "build a file of the worker into the kernel",
}


def read_kernel_config(config: Path) -> str:
    """The text of ``config``, a regular file reached without following any link.

    The file comes from the kernel-config repository: a link there could name any file of the
    worker, and Kconfig prints the lines it cannot parse into the build log. Every directory of a
    relative path (below the leading ``..``) is checked too, so a linked directory of the checkout
    cannot lead out of it either.
    """
    parts = config.parts
    for depth in range(len(parts) - 1):
        directory = Path(*parts[: depth + 1])
        if parts[depth] != ".." and not config.is_absolute() and directory.is_symlink():
            raise StageError(
                f"{config}: {directory} is a symbolic link; the kernel config must be in the checkout"
            )
    try:
        descriptor = os.open(config, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        reason = "a symbolic link" if config.is_symlink() else error.strerror
        raise StageError(
            f"{config}: the kernel config is {reason}; it must be a file in the checkout"
        ) from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise StageError(f"{config}: the kernel config is not a regular file")
        return handle.read().decode(errors="replace")


def _host_path(option: str, value: str) -> bool:
    """Whether Kbuild would open a file outside the kernel tree for ``value``."""
    if option == "CONFIG_INITRAMFS_SOURCE":
        return True  # any source: the farm adds its own initramfs when the kernel needs one
    if option == "CONFIG_MODULE_SIG_KEY" and value.startswith("pkcs11:"):
        return True  # a token of the worker's
    return any(word.startswith("/") or ".." in word.split("/") for word in value.split())


def refuse_host_paths(config: Path, text: str) -> None:
    """Refuse options of ``text`` (the config ``config``) that make Kbuild open a worker file."""
    values = {}
    for line in text.splitlines():
        name, equals, value = line.strip().partition("=")
        if equals and name in HOST_PATH_OPTIONS:
            values[name] = value.strip()
    # The firmware directory is only read for the files CONFIG_EXTRA_FIRMWARE names (its default is
    # /lib/firmware).
    if not values.get("CONFIG_EXTRA_FIRMWARE", "").strip('"'):
        values.pop("CONFIG_EXTRA_FIRMWARE_DIR", None)
    for name, value in values.items():
        if value.strip('"') and _host_path(name, value.strip('"')):
            hint = (
                'set it to "" (the farm adds its own initramfs when the kernel needs one)'
                if name == "CONFIG_INITRAMFS_SOURCE"
                else "use a path inside the kernel tree"
            )
            raise StageError(f"{config}: {name}={value} would {HOST_PATH_OPTIONS[name]}; {hint}")


@contextlib.contextmanager
def build_tree(work_dir: Path, source: Path) -> Iterator[tuple[Path, bool]]:
    """The out-of-tree build directory for ``source`` and whether it holds an earlier build.

    One tree is kept, for the newest source (a tree is as large as a kernel build). A tree another
    build on this worker holds, or whose last build was interrupted (its objects may be half
    written), is not reused. A failed build leaves a sound tree: make finishes the jobs it started
    and Kbuild deletes the target of a failed command.
    """
    trees = work_dir / BUILD_TREES
    trees.mkdir(parents=True, exist_ok=True)
    with (trees / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with tempfile.TemporaryDirectory(prefix="kernel-build-", dir=work_dir) as scratch:
                yield Path(scratch), False
            return
        tree = trees / source.parent.name
        for other in trees.iterdir():
            if other.is_dir() and other != tree:
                shutil.rmtree(other)
        in_progress = tree / BUILD_IN_PROGRESS
        reused = tree.is_dir() and not in_progress.exists()
        if not reused:
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir()
        in_progress.touch()
        try:
            yield tree, reused
        except StageError:
            in_progress.unlink()
            raise
        in_progress.unlink()


def compiler_error(output: str) -> str:
    for pattern in ERROR_LINES:
        for line in output.splitlines():
            if pattern.search(line):
                return line.strip()
    return "see the build log"


def make(
    source: Path, build: Path, targets: list[str], environment: dict[str, str], jobs: int, what: str
) -> str:
    command: list[str | Path] = [
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
    config: Path = args.config
    text = read_kernel_config(config)
    refuse_host_paths(config, text)
    if shutil.which("ccache") is None:
        raise StageError("ccache is not installed on this worker (the kernel build needs it)")
    started = time.monotonic()
    entry = dist_entry(args.source_dist)
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
        # Kbuild counts the links in a kept tree ("#3"); every build of the farm is its first.
        "KBUILD_BUILD_VERSION": "1",
        # The source's date, not the build's: the same source and config give the same kernel, byte for
        # byte, whether compiled cold, through ccache or in a kept tree.
        "KBUILD_BUILD_TIMESTAMP": source_date(source),
    }
    run_tool(["ccache", "--zero-stats"], what="ccache --zero-stats", env=environment)
    with (
        build_tree(args.work_dir, source) as (build, reused),
        tempfile.TemporaryDirectory(prefix="kernel-staging-", dir=args.work_dir) as staging_name,
    ):
        staging = Path(staging_name)
        progress(f"building in {'the kept' if reused else 'a fresh'} build tree {build}")
        # What was checked, not the file again (the checkout could change meanwhile).
        (build / ".config").write_text(text)
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
    hits, misses = ccache_counts(environment)
    elapsed = time.monotonic() - started
    checksum = file_sha512(args.output)
    args.output.with_name(args.output.name + ".sha512").write_bytes(sha512_line(checksum, args.output.name))
    progress(
        f"kernel {release} built in {elapsed:.0f} s in {'the kept' if reused else 'a fresh'} build tree "
        f"(ccache: {hits} hits, {misses} misses), initramfs: {'yes' if needs_initramfs else 'not needed'}"
    )
    report(
        kernel_release=release,
        kernel_initramfs=needs_initramfs,
        kernel_build_seconds=round(elapsed, 1),
        kernel_build_tree="kept" if reused else "fresh",
        kernel_ccache_hits=hits,
        kernel_ccache_misses=misses,
        vmlinuz_path=str(args.output),
        vmlinuz_sha512=checksum,
    )
