"""Turn an assembled root into a bootable disk: raw MBR disk with one ext4 partition, then qcow2.

The recipe's way: one bootable partition at 1 MiB, attached as a loop device by offset, ext4,
the root copied in, ``extlinux --install /boot``, SYSLINUX's mbr.bin in the first 440 bytes;
then ``qemu-img convert`` (compression configurable). Writes IMAGE.sha512 and a manifest.json
naming the inputs and their keys, the packages (from /var/db/pkg) with versions, the kernel and
the sizes. Needs root and a free loop device.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gentoo_farm.checksums import file_sha512, sha512_line
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
PACKAGE_VERSION = re.compile(r"(?P<name>.+?)-(?P<version>\d[^-]*(?:-r\d+)?)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the assembled root (after the assemble stage)")
    parser.add_argument("--output", required=True, type=Path, help="the qcow2 image to write")
    parser.add_argument("--raw", type=Path, help="keep the raw disk here too (default: discarded)")
    parser.add_argument("--size", help="disk size, e.g. 4G (default: the root's size plus room)")
    parser.add_argument(
        "--compress", action=argparse.BooleanOptionalAction, default=True, help="compress the qcow2"
    )
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="an input of this image and its key, recorded in manifest.json",
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


def installed_packages(root: Path) -> list[dict[str, str]]:
    """The packages Portage recorded in the root's /var/db/pkg, with versions and slots."""
    packages = []
    vdb = root / "var/db/pkg"
    if not vdb.is_dir():
        return packages
    for entry in sorted(vdb.glob("*/*")):
        if not entry.is_dir() or entry.name.startswith("-MERGING-"):
            continue
        match = PACKAGE_VERSION.fullmatch(entry.name)
        if not match:
            continue
        package = {
            "atom": f"{entry.parent.name}/{entry.name}",
            "category": entry.parent.name,
            **match.groupdict(),
        }
        slot = entry / "SLOT"
        if slot.is_file():
            package["slot"] = slot.read_text().strip()
        packages.append(package)
    return packages


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
    inputs = {}
    for item in args.inputs:
        name, sep, key = item.partition("=")
        if not sep or not name:
            raise StageError(f"--input {item!r}: expected NAME=KEY")
        inputs[name] = key
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
    args.output.with_name(args.output.name + ".sha512").write_bytes(sha512_line(checksum, args.output.name))
    manifest = {
        "image": args.output.name,
        "format": "qcow2",
        "compressed": args.compress,
        "sha512": checksum,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": {"release": release, "initramfs": (root / "boot/initramfs").exists()},
        "inputs": inputs,
        "packages": installed_packages(root),
        "sizes": {"qcow2": args.output.stat().st_size, "disk": size, "root": root_bytes},
    }
    manifest_path = args.output.with_name("manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    progress(
        f"wrote {args.output} ({args.output.stat().st_size // MIB} MiB, disk {size // MIB} MiB, "
        f"kernel {release}, {len(manifest['packages'])} packages) in {time.monotonic() - started:.1f} s"
    )
    report(
        image_path=str(args.output),
        image_sha512=checksum,
        image_manifest=str(manifest_path),
        kernel_release=release,
    )
