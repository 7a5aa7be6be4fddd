"""Turn an assembled root into a bootable disk: raw MBR disk with one ext4 partition, then qcow2.

One bootable partition at 1 MiB, filled from the root without a mount (``mkfs.ext4 -d`` writes
straight into the raw file at the partition's offset, owners and modes as this process sees them:
in a user namespace, the mapped ids), then ``extlinux --install /boot`` and SYSLINUX's mbr.bin in
the first 440 bytes; then ``qemu-img convert`` (compression configurable). extlinux needs the
filesystem mounted (it asks the kernel where ldlinux.sys lies): a stage that holds real root attaches
the partition as a loop device and mounts it for that alone; any other (an unprivileged user, a user
namespace) boots the image's own kernel in a throwaway qemu VM whose initramfs carries this worker's
extlinux and does it there (``--bootloader`` forces one or the other). Either way every file under
/boot is rewritten in full first, because ``mkfs.ext4 -d`` turns all-zero blocks into holes and
SYSLINUX cannot load a file with holes; the stage checks the result with debugfs. Reports the image's
sha512 and kernel release (what publishing checks and records).
"""

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gentoo_farm.checksums import file_sha512
from gentoo_farm.qemuboot import ACCELERATOR, qemu_exited, running
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.build_root import kernel_release, tree_bytes
from gentoo_farm.workers.toolkit.confined import resolve
from gentoo_farm.workers.toolkit.initramfs import build_initramfs
from gentoo_farm.workers.toolkit.tools import require_directory, require_file, run_tool, tail

MIB = 1024 * 1024
PARTITION_START_SECTOR = 2048
PARTITION_OFFSET = PARTITION_START_SECTOR * 512
MBR_CODE_BYTES = 440
DEFAULT_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# qcow2 compression types (qemu-img -o compression_type=): zstd needs QEMU 5.1 or newer to read the image,
# zlib any QEMU; zstd is the default (docs/image.md: measured and why).
COMPRESSION_TYPES = ("zstd", "zlib")
# Room the filesystem needs beyond the files: inode tables, journal, and some free space.
AUTO_SIZE_FACTOR = 1.3
AUTO_SIZE_SLACK = 256 * MIB
SIZE_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
BLOCK_SIZE = 4096
# /proc/self/uid_map of the initial user namespace: only there is euid 0 real root (loop devices, mounts).
INITIAL_UID_MAP = ["0", "0", "4294967295"]
# How extlinux gets installed: "auto" picks "loop" when the stage holds real root, else "vm".
BOOTLOADER_INSTALLS = ("auto", "loop", "vm")
# The bootloader VM: boot, load the drivers, install, power off. About 10 s under TCG; generous for a
# loaded 2-core worker.
BOOTLOADER_VM_TIMEOUT_SECONDS = 300
BOOTLOADER_VM_POWEROFF_SECONDS = 30
BOOTLOADER_VM_MEMORY = "512"
BOOTLOADER_VM_POLL_SECONDS = 0.5
BOOTLOADER_DONE = "gentoo-farm-bootloader: extlinux installed"
BOOTLOADER_FAILED = "gentoo-farm-bootloader: failed:"
CONSOLE_TAIL_LINES = 15
# Where the bootloader VM's initramfs keeps the worker's extlinux.
VM_EXTLINUX = "/sbin/extlinux"
BOOTLOADER_INIT = rf"""#!/bin/sh
# gentoo-farm bootloader VM: mount the image's root partition, install extlinux into /boot, power off.
mount -t devtmpfs -o mode=0755 devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ln -s /proc/mounts /etc/mtab
fail() {{
	echo "{BOOTLOADER_FAILED} $*"
	poweroff -f
}}
for module in $(cat /etc/modules-load); do
	insmod "/lib/modules/$module.ko" || echo "bootloader VM: could not load $module"
done
# The disk shows up asynchronously after its driver is loaded: give it 20 s.
tries=100
until [ -b /dev/vda1 ]; do
	tries=$((tries - 1))
	[ "$tries" -gt 0 ] || fail "/dev/vda1 did not appear"
	sleep 0.2
done
mkdir -p /mnt
mount -t ext4 /dev/vda1 /mnt || fail "cannot mount /dev/vda1"
# Write every file under /boot over itself: that allocates the blocks mkfs.ext4 -d left as holes.
for file in $(find /mnt/boot -type f); do
	dd if="$file" of="$file" bs={BLOCK_SIZE} conv=notrunc 2>/dev/null || fail "rewriting $file"
done
{VM_EXTLINUX} --install /mnt/boot || fail "extlinux --install /boot"
umount /mnt || fail "unmounting /dev/vda1"
sync
echo "{BOOTLOADER_DONE}"
poweroff -f
"""
BOOTLOADER_VM_APPLETS = ("find", "dd", "ln", "sync", "poweroff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the assembled root (after the assemble stage)")
    parser.add_argument("--output", required=True, type=Path, help="the qcow2 image to write")
    parser.add_argument("--raw", type=Path, help="keep the raw disk here too (default: discarded)")
    parser.add_argument("--size", help="disk size, e.g. 4G (default: the root's size plus room)")
    parser.add_argument(
        "--compress", action=argparse.BooleanOptionalAction, default=True, help="compress the qcow2"
    )
    parser.add_argument(
        "--compression",
        choices=COMPRESSION_TYPES,
        default="zstd",
        help="the qcow2's compression type when compressed: zstd (default; read by QEMU 5.1 and newer) "
        "or zlib (read by every QEMU)",
    )
    parser.add_argument(
        "--mbr", type=Path, default=DEFAULT_MBR, help=f"SYSLINUX MBR code (default {DEFAULT_MBR})"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="scratch space for the raw disk (default: beside --output)"
    )
    parser.add_argument(
        "--bootloader",
        choices=BOOTLOADER_INSTALLS,
        default="auto",
        help="how to install extlinux: on a loop device mount (needs real root), in a throwaway qemu VM "
        "booting the image's kernel, or auto: the loop device when this stage holds real root (default)",
    )


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise StageError(f"--size {text!r}: expected a size like 4G, 2048M or 1073741824")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def holds_real_root() -> bool:
    """euid 0 in the initial user namespace: what loop devices and mounting a block device take."""
    if os.geteuid() != 0:
        return False
    try:
        return Path("/proc/self/uid_map").read_text().split() == INITIAL_UID_MAP
    except OSError:
        return False


@contextlib.contextmanager
def loop_device(raw: Path, offset: int, size: int) -> Iterator[str]:
    try:
        device = run_tool(
            ["losetup", "--show", "-f", "-o", str(offset), "--sizelimit", str(size), raw],
            what="attaching the disk to a loop device",
        ).strip()
    except StageError as error:
        raise StageError(
            f"no loop device available for {raw} (the loop bootloader path needs root and a free "
            f"/dev/loop*; --bootloader vm needs neither): {error}"
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


def rewrite_in_full(directory: Path) -> None:
    """Write each regular file under ``directory`` over itself, so the filesystem allocates its holes."""
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("r+b") as file:
            while block := file.read(MIB):
                file.seek(-len(block), os.SEEK_CUR)
                file.write(block)


def install_bootloader_on_loop(raw: Path, partition_bytes: int) -> None:
    with (
        loop_device(raw, PARTITION_OFFSET, partition_bytes) as device,
        tempfile.TemporaryDirectory(prefix="disk-mnt-") as mountpoint_name,
        mounted(device, Path(mountpoint_name)) as mountpoint,
    ):
        rewrite_in_full(mountpoint / "boot")
        run_tool(["extlinux", "--install", mountpoint / "boot"], what="extlinux --install /boot")


def shared_objects(program: Path) -> list[Path]:
    """The libraries and the dynamic loader ``program`` needs, as ldd names them (none if static)."""
    result = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if "not a dynamic executable" in result.stdout + result.stderr:
            return []
        raise StageError(f"ldd {program} failed: {(result.stderr or result.stdout).strip()}")
    found = []
    for line in result.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            found.append(Path(match.group(1)))
        elif "not found" in line:
            raise StageError(f"{program}: ldd cannot find {line.strip()}")
    return found


def bootloader_vm_initramfs(root: Path, release: str, output: Path) -> None:
    extlinux = shutil.which("extlinux")
    if extlinux is None:
        raise StageError("extlinux is not installed on this worker (install extlinux)")
    extra_files = {VM_EXTLINUX: Path(extlinux)}
    extra_files.update({str(library): library for library in shared_objects(Path(extlinux))})
    modules_dir = resolve(root, f"lib/modules/{release}")
    # A kernel with virtio and ext4 built in may have no modules at all.
    has_modules = (modules_dir / "modules.dep").is_file()
    build_initramfs(
        modules_dir if has_modules else None,
        output,
        init=BOOTLOADER_INIT,
        extra_applets=BOOTLOADER_VM_APPLETS,
        extra_files=extra_files,
    )


def qemu_option_value(path: Path) -> str:
    """A path inside a qemu option string, where a comma separates options unless doubled."""
    return str(path).replace(",", ",,")


def install_bootloader_in_vm(root: Path, release: str, raw: Path) -> None:
    kernel = require_file(resolve(root, f"boot/vmlinuz-{release}"), "the image's kernel")
    with tempfile.TemporaryDirectory(prefix="disk-bootloader-vm-") as scratch_name:
        scratch = Path(scratch_name)
        initramfs = scratch / "initramfs"
        bootloader_vm_initramfs(root, release, initramfs)
        serial_log = scratch / "serial.log"
        serial_log.touch()
        command = ["qemu-system-x86_64", "-accel", ACCELERATOR, "-cpu", "max", "-m", BOOTLOADER_VM_MEMORY]
        command += ["-smp", "1", "-display", "none", "-serial", f"file:{qemu_option_value(serial_log)}"]
        command += ["-monitor", "none", "-nic", "none", "-no-reboot"]
        command += ["-kernel", str(kernel), "-initrd", str(initramfs), "-append", "console=ttyS0 panic=-1"]
        command += ["-drive", f"file={qemu_option_value(raw)},if=virtio,format=raw"]
        with running(command, scratch / "qemu.log") as qemu:
            wait_for_bootloader_vm(qemu, serial_log, scratch / "qemu.log")


def wait_for_bootloader_vm(qemu: subprocess.Popen[bytes], serial_log: Path, qemu_log: Path) -> None:
    """Until the VM's init prints the done marker; a failure marker, qemu exiting first or the timeout
    raise StageError with the console's last lines."""
    deadline = time.monotonic() + BOOTLOADER_VM_TIMEOUT_SECONDS
    while True:
        console = serial_log.read_text(errors="replace")
        exited = qemu_exited(qemu, qemu_log)
        if BOOTLOADER_DONE in console:
            # The marker comes after the unmount and sync: the disk is complete. Let poweroff finish;
            # if it hangs, leaving the running() context stops qemu all the same.
            with contextlib.suppress(subprocess.TimeoutExpired):
                qemu.wait(timeout=BOOTLOADER_VM_POWEROFF_SECONDS)
            return
        failed = next((line.strip() for line in console.splitlines() if BOOTLOADER_FAILED in line), None)
        if failed or exited or time.monotonic() > deadline:
            reason = failed or exited or f"no {BOOTLOADER_DONE!r} within {BOOTLOADER_VM_TIMEOUT_SECONDS} s"
            last_lines = (
                f"the console's last lines:\n{tail(console, CONSOLE_TAIL_LINES)}"
                if console.strip()
                else "the console stayed empty"
            )
            raise StageError(f"installing extlinux in the bootloader VM failed: {reason}; {last_lines}")
        time.sleep(BOOTLOADER_VM_POLL_SECONDS)


def holes_under_boot(root: Path, raw: Path) -> list[str]:
    """Files of the built filesystem under /boot with fewer data blocks than their size takes.

    The file list comes from ``root`` (what mkfs.ext4 -d copied); debugfs reads each one's blocks
    from the unmounted image.
    """
    boot = root / "boot"
    names = [
        "/" + str(path.relative_to(root))
        for path in sorted(boot.rglob("*"))
        if not path.is_symlink() and path.is_file()
    ]
    if not names:
        return []
    commands = "".join(f'blocks "{name}"\nstat "{name}"\n' for name in names)
    with tempfile.NamedTemporaryFile("w", prefix="disk-debugfs-", suffix=".cmd") as command_file:
        command_file.write(commands)
        command_file.flush()
        # stdout alone: debugfs echoes each command there, and its errors go to stderr unsynchronised.
        result = subprocess.run(
            ["debugfs", "-f", command_file.name, f"{raw}?offset={PARTITION_OFFSET}"],
            capture_output=True,
            text=True,
            check=False,
        )
    sections = re.split(r"^debugfs: ", result.stdout, flags=re.MULTILINE)[1:]
    if result.returncode != 0 or len(sections) != 2 * len(names):
        raise StageError(f"debugfs could not read /boot in {raw}: {tail(result.stderr or result.stdout)}")
    holes = []
    for name, blocks_section, stat_section in zip(names, sections[::2], sections[1::2], strict=True):
        size = re.search(r"Size: (\d+)", stat_section)
        if size is None:
            raise StageError(f"debugfs cannot read {name} in {raw}: {tail(result.stderr)}")
        # The first line is the command; the second, if any, the file's data blocks.
        lines = blocks_section.splitlines()
        allocated = len(lines[1].split()) if len(lines) > 1 else 0
        if allocated * BLOCK_SIZE < int(size.group(1)):
            holes.append(name)
    return holes


def build_raw_disk(root: Path, raw: Path, size: int, mbr: Path, bootloader: str, release: str) -> None:
    raw.unlink(missing_ok=True)
    with raw.open("wb") as disk:
        disk.truncate(size)
    layout = f"label: dos\nstart={PARTITION_START_SECTOR}, type=83, bootable\n"
    partition_bytes = size - PARTITION_OFFSET
    run_sfdisk(raw, layout)
    progress(f"copying {root} into the filesystem (mkfs.ext4 -d)")
    run_tool(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-b", str(BLOCK_SIZE), "-d", root,
         "-E", f"offset={PARTITION_OFFSET}", raw, f"{partition_bytes // 1024}k"],
        what="mkfs.ext4 -d (filling the filesystem from the root)",
    )  # fmt: skip
    path = bootloader if bootloader != "auto" else ("loop" if holds_real_root() else "vm")
    progress(f"installing extlinux ({'on a loop device' if path == 'loop' else 'in a qemu VM'})")
    started = time.monotonic()
    if path == "loop":
        install_bootloader_on_loop(raw, partition_bytes)
    else:
        install_bootloader_in_vm(root, release, raw)
    progress(f"installed extlinux {'on a loop device' if path == 'loop' else 'in a qemu VM'} "
             f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    holes = holes_under_boot(root, raw)
    if holes:
        raise StageError(
            f"files under /boot still have holes after the bootloader was installed ({', '.join(holes)}): "
            "SYSLINUX cannot load a file with holes"
        )
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
        build_raw_disk(root, raw, size, mbr, args.bootloader, release)
        partial = args.output.with_name(args.output.name + ".partial")
        progress(f"converting to qcow2{f' ({args.compression}-compressed)' if args.compress else ''}")
        run_tool(
            [
                "qemu-img",
                "convert",
                # Out-of-order writes: the same image, zstd-compressed in 0.74 of the time (bench_image.py).
                "-W",
                "-f",
                "raw",
                "-O",
                "qcow2",
                *(["-c", "-o", f"compression_type={args.compression}"] if args.compress else []),
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
