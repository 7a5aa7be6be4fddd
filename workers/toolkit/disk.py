"""Turn an assembled root into a bootable disk: raw MBR disk with one ext4 partition, then qcow2.

The recipe's way: one bootable partition at 1 MiB, attached as a loop device by offset, ext4,
the root copied in, ``extlinux --install /boot``, SYSLINUX's mbr.bin in the first 440 bytes;
then ``qemu-img convert`` (compression configurable). Reports the image's sha512 and kernel release
(what publishing checks and records). Needs root and a free loop device.
"""

import argparse
import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gentoo_farm.checksums import file_sha512
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.tools import require_directory, require_file, run_tool

MIB = 1024 * 1024
PARTITION_START_SECTOR = 2048
PARTITION_OFFSET = PARTITION_START_SECTOR * 512
MBR_CODE_BYTES = 440
DEFAULT_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# Room the filesystem needs beyond the files: inode tables, journal, and some free space.
AUTO_SIZE_FACTOR = 1.3
AUTO_SIZE_SLACK = 256 * MIB
SIZE_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the assembled root (after the assemble stage)")
    parser.add_argument("--output", required=True, type=Path, help="the qcow2 image to write")
    parser.add_argument("--raw", type=Path, help="keep the raw disk here too (default: discarded)")
    parser.add_argument("--size", help="disk size, e.g. 4G (default: the root's size plus room)")
    parser.add_argument(
        "--compress", action=argparse.BooleanOptionalAction, default=True, help="compress the qcow2"
    )
    parser.add_argument(
        "--mbr", type=Path, default=DEFAULT_MBR, help=f"SYSLINUX MBR code (default {DEFAULT_MBR})"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="scratch space for the raw disk (default: beside --output)"
    )


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise StageError(f"--size {text!r}: expected a size like 4G, 2048M or 1073741824")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def kernel_release(root: Path) -> str:
    link = root / "boot/vmlinuz"
    if not link.is_symlink():
        raise StageError(f"{link}: missing or not a link to the kernel (run the assemble stage first)")
    return os.readlink(link).rsplit("/", 1)[-1].removeprefix("vmlinuz-")


def sparse_files(boot: Path) -> list[Path]:
    """Files that are not fully allocated: SYSLINUX reads blocks directly and fails on holes."""
    found = []
    for path in sorted(boot.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        status = path.stat()
        if status.st_blocks * 512 < status.st_size:
            found.append(path)
    return found


@contextlib.contextmanager
def loop_device(raw: Path, offset: int, size: int) -> Iterator[str]:
    try:
        device = run_tool(
            ["losetup", "--show", "-f", "-o", str(offset), "--sizelimit", str(size), raw],
            what="attaching the disk to a loop device",
        ).strip()
    except StageError as error:
        raise StageError(
            f"no loop device available for {raw} (the disk stage needs root and a free /dev/loop*): {error}"
        ) from error
    try:
        yield device
    finally:
        run_tool(["losetup", "-d", device], what=f"detaching {device}")


@contextlib.contextmanager
def mounted(device: str, mountpoint: Path) -> Iterator[Path]:
    run_tool(["mount", "-t", "ext4", device, mountpoint], what=f"mounting {device}")
    try:
        yield mountpoint
    finally:
        run_tool(["umount", mountpoint], what=f"unmounting {mountpoint}")


def build_raw_disk(root: Path, raw: Path, size: int, mbr: Path) -> None:
    raw.unlink(missing_ok=True)
    with raw.open("wb") as disk:
        disk.truncate(size)
    layout = f"label: dos\nstart={PARTITION_START_SECTOR}, type=83, bootable\n"
    partition_bytes = size - PARTITION_OFFSET
    run_sfdisk(raw, layout)
    with loop_device(raw, PARTITION_OFFSET, partition_bytes) as device:
        run_tool(["mkfs.ext4", "-q", "-F", "-L", "root", device], what="mkfs.ext4")
        with (
            tempfile.TemporaryDirectory(prefix="disk-mnt-") as mountpoint_name,
            mounted(device, Path(mountpoint_name)) as mountpoint,
        ):
            progress(f"copying {root} into the filesystem")
            run_tool(["cp", "-a", f"{root}/.", f"{mountpoint}/"], what="copying the root")
            progress("installing extlinux")
            run_tool(["extlinux", "--install", mountpoint / "boot"], what="extlinux --install /boot")
    with raw.open("r+b") as disk:
        disk.write(mbr.read_bytes()[:MBR_CODE_BYTES])


def run_sfdisk(raw: Path, layout: str) -> None:
    result = subprocess.run(
        ["sfdisk", "--quiet", str(raw)], input=layout, text=True, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise StageError(
            f"partitioning {raw} failed (sfdisk): {result.stderr.strip() or result.stdout.strip()}"
        )


def run(args: argparse.Namespace) -> None:
    root = require_directory(args.root, "assembled root")
    mbr = require_file(args.mbr, "SYSLINUX MBR code (install syslinux-common)")
    if not (root / "boot/extlinux.conf").is_file():
        raise StageError(f"{root}/boot/extlinux.conf: missing; the overlay must provide the boot menu")
    release = kernel_release(root)
    sparse = sparse_files(root / "boot")
    if sparse:
        names = ", ".join(str(path) for path in sparse)
        raise StageError(
            f"sparse files under /boot ({names}): SYSLINUX cannot load a file with holes; "
            "unpack the kernel without --sparse or rewrite the file in full"
        )
    root_bytes = tree_bytes(root)
    if args.size:
        size = parse_size(args.size)
        if size < root_bytes + PARTITION_OFFSET:
            raise StageError(f"--size {args.size}: the root alone takes {root_bytes // MIB} MiB")
    else:
        size = int(root_bytes * AUTO_SIZE_FACTOR + AUTO_SIZE_SLACK) // MIB * MIB
    args.output.parent.mkdir(parents=True, exist_ok=True)
    work_dir = args.work_dir or args.output.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    raw = args.raw or work_dir / f"{args.output.stem}.raw"
    started = time.monotonic()
    progress(f"building a {size // MIB} MiB raw disk from {root} ({root_bytes // MIB} MiB)")
    try:
        build_raw_disk(root, raw, size, mbr)
        partial = args.output.with_name(args.output.name + ".partial")
        progress(f"converting to qcow2{' (compressed)' if args.compress else ''}")
        run_tool(
            [
                "qemu-img",
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                *(["-c"] if args.compress else []),
                raw,
                partial,
            ],
            what="qemu-img convert",
        )
        partial.replace(args.output)
    finally:
        if args.raw is None:
            raw.unlink(missing_ok=True)
    checksum = file_sha512(args.output)
    progress(
        f"wrote {args.output} ({args.output.stat().st_size // MIB} MiB, disk {size // MIB} MiB, "
        f"kernel {release}) in {time.monotonic() - started:.1f} s"
    )
    report(
        image_path=str(args.output),
        image_sha512=checksum,
        kernel_release=release,
        image_bytes=args.output.stat().st_size,
        disk_bytes=size,
    )
