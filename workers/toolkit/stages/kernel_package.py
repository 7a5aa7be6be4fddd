"""Make the vmlinuz tarball from a binary kernel package (a distribution's prebuilt kernel).

This is the path of Gentoo's sys-kernel/gentoo-kernel-bin, for users who want no custom kernel
(and for fast tests, which feed it Debian's linux-image package). The package may be a .deb, a
tarball (e.g. the image of a binary package) or a directory it was unpacked into; the stage finds
boot/vmlinuz-KVER and lib/modules/KVER in it and adds a small busybox initramfs that loads the
virtio and ext4 modules, since distribution kernels build them as modules.

The package is a root of its own: its links are resolved inside it (an absolute link names a file
of the package, never one of the worker), and the kernel tree staged for the tarball holds no links.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from gentoo_farm.checksums import file_sha512, sha512_line
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.confined import check_tarball, resolve, unpack_tarball
from gentoo_farm.workers.toolkit.distfiles import dist_entry, fetch_distfile
from gentoo_farm.workers.toolkit.initramfs import config_needs_initramfs
from gentoo_farm.workers.toolkit.tools import run_tool
from gentoo_farm.workers.toolkit.vmlinuz import finish_kernel_tree, write_tarball

MODULE_ROOTS = ("lib/modules", "usr/lib/modules")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "package", type=Path, nargs="?", help="the kernel package: .deb, tarball or unpacked directory"
    )
    parser.add_argument(
        "--mirror",
        dest="mirrors",
        action="append",
        default=[],
        metavar="URL",
        help="fetch the package from this Gentoo-style mirror instead (repeatable: the farm's first)",
    )
    parser.add_argument(
        "--package-dist",
        metavar="LINE",
        help="the package's DIST line from its Manifest (with --mirror: a download must match it)",
    )
    parser.add_argument("--distdir", type=Path, help="where a fetched package is kept (with --mirror)")
    parser.add_argument(
        "--output", required=True, type=Path, help="the vmlinuz tarball to write (e.g. vmlinuz.tar.zst)"
    )
    parser.add_argument("--work-dir", type=Path, help="scratch space (default: a temporary directory)")


def unpack_package(package: Path, destination: Path) -> None:
    if package.is_dir():
        shutil.copytree(package, destination, symlinks=True, dirs_exist_ok=True)
    elif package.name.endswith(".deb"):
        check_tarball(package, destination, decompress=["dpkg-deb", "--fsys-tarfile", package])
        run_tool(["dpkg-deb", "-x", package, destination], what=f"unpacking {package.name}")
    elif ".tar" in package.name or package.suffix in (".tgz", ".txz"):
        unpack_tarball(package, destination, what=f"kernel package {package.name}")
    else:
        raise StageError(f"{package}: not a .deb, a tarball or a directory")


def find_kernel_release(unpacked: Path, package: Path) -> str:
    kernels = [f"boot/{path.name}" for path in resolve(unpacked, "boot").glob("vmlinuz-*")]
    if not kernels:
        # Gentoo's dist-kernels keep the image beside the modules: /usr/lib/modules/KVER/vmlinuz.
        kernels = [
            f"{root}/{path.parent.name}/vmlinuz"
            for root in MODULE_ROOTS
            for path in resolve(unpacked, root).glob("*/vmlinuz")
        ]
        if len(kernels) == 1:
            return kernels[0].split("/")[-2]
    if len(kernels) != 1:
        found = ", ".join(sorted(kernels)) or "none"
        raise StageError(f"{package}: expected exactly one kernel image boot/vmlinuz-KVER, found {found}")
    return kernels[0].removeprefix("boot/vmlinuz-")


def _present(unpacked: Path, name: str) -> bool:
    """Whether the package has ``name`` at all (a link counts, wherever it points)."""
    path = resolve(unpacked, name, follow_last=False)
    return path.is_symlink() or path.exists()


def copy_file(unpacked: Path, name: str, destination: Path, package: Path) -> None:
    """Copy the package's ``name`` (its links resolved inside the package) to ``destination``."""
    source = resolve(unpacked, name)
    if not source.is_file():
        inside = source.relative_to(unpacked)
        raise StageError(f"{package}: {name} is not a file inside the package (it resolves to /{inside})")
    shutil.copyfile(source, destination)


def copy_modules(unpacked: Path, modules: str, destination: Path, package: Path) -> None:
    """Copy the module tree ``modules`` of the package with every link replaced by the file it names there."""
    source = resolve(unpacked, modules)
    for directory, subdirectories, files in os.walk(source):
        target_dir = destination / Path(directory).relative_to(source)
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in [*subdirectories, *files]:
            path = Path(directory, name)
            inside = str(path.relative_to(unpacked))
            if path.is_symlink():
                if directory == str(source) and name in ("build", "source"):
                    continue  # links into the kernel's build tree, meaningless on the image
                copy_file(unpacked, inside, target_dir / name, package)
            elif path.is_file():
                shutil.copyfile(path, target_dir / name)


def stage_kernel(unpacked: Path, release: str, staging: Path, package: Path) -> None:
    """Move the package's kernel, config and modules into the vmlinuz tarball's layout."""
    (staging / "boot").mkdir(parents=True)
    module_dirs = [
        f"{root}/{release}" for root in MODULE_ROOTS if resolve(unpacked, f"{root}/{release}").is_dir()
    ]
    if not module_dirs:
        raise StageError(f"{package}: has no lib/modules/{release} for its kernel {release}")
    modules = module_dirs[0]
    image = f"boot/vmlinuz-{release}"
    if not _present(unpacked, image):
        image = f"{modules}/vmlinuz"
    config = f"boot/config-{release}"
    if not _present(unpacked, config):
        config = f"{modules}/config"
    if not _present(unpacked, config):
        raise StageError(f"{package}: has no config for kernel {release} (boot/config-{release})")
    copy_file(unpacked, image, staging / "boot" / f"vmlinuz-{release}", package)
    copy_file(unpacked, config, staging / "boot" / f"config-{release}", package)
    copy_modules(unpacked, modules, staging / "lib/modules" / release, package)
    for leftover in ("vmlinuz", "config", "System.map"):
        (staging / "lib/modules" / release / leftover).unlink(missing_ok=True)


def run(args: argparse.Namespace) -> None:
    if (args.package is None) == (not args.mirrors):
        raise StageError("give either a kernel package path or --mirror (with --package-dist and --distdir)")
    if args.mirrors:
        if args.distdir is None or args.package_dist is None:
            raise StageError(
                "--mirror needs --package-dist (the Manifest line it must match) "
                "and --distdir (where it is kept)"
            )
        entry = dist_entry(args.package_dist)
        args.package = fetch_distfile(args.mirrors, entry, args.distdir, "kernel package")
    if not args.package.exists():
        raise StageError(f"{args.package}: kernel package does not exist")
    with tempfile.TemporaryDirectory(prefix="kernel-package-", dir=args.work_dir) as scratch_name:
        scratch = Path(scratch_name)
        unpacked, staging = scratch / "package", scratch / "kernel"
        unpacked.mkdir()
        progress(f"unpacking {args.package}")
        unpack_package(args.package, unpacked)
        release = find_kernel_release(unpacked, args.package)
        stage_kernel(unpacked, release, staging, args.package)
        needs_initramfs = config_needs_initramfs(staging / "boot" / f"config-{release}")
        members = finish_kernel_tree(staging, release, initramfs=needs_initramfs)
        progress(f"packing kernel {release} into {args.output}")
        write_tarball(staging, members, args.output)
    checksum = file_sha512(args.output)
    args.output.with_name(args.output.name + ".sha512").write_bytes(sha512_line(checksum, args.output.name))
    report(
        kernel_release=release,
        kernel_initramfs=needs_initramfs,
        vmlinuz_path=str(args.output),
        vmlinuz_sha512=checksum,
    )
