"""A small busybox initramfs that loads the modules a cloud image needs to mount its root.

Only a kernel whose virtio or ext4 drivers are modules needs one. The modules and their load
order come from the kernel's own modules.dep (dependencies first), so the list below names only
what the image needs, not how a given kernel happens to split it into modules.
"""

import gzip
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError

BUSYBOX = Path("/bin/busybox")
# What mounting root=/dev/vda1 (ext4 on virtio) and bringing up eth0 (virtio-net) takes. ext4
# finds its checksum algorithm (crc32c) through the crypto API at mount time, which modules.dep
# does not record, hence crc32c_generic by name.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_net")
# Options of configs that, built as modules (=m), leave the kernel unable to mount the root alone.
ROOT_OPTIONS = ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS")
APPLETS = ("sh", "mount", "umount", "insmod", "switch_root", "mkdir", "sleep", "cat", "findfs", "echo")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")

INIT = r"""#!/bin/sh
# gentoo-farm initramfs: load the root's drivers, mount root= from the kernel command line, switch to it.
mount -t devtmpfs -o mode=0755 devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for module in $(cat /etc/modules-load); do
	insmod "/lib/modules/$module.ko" || echo "initramfs: could not load $module"
done

root= rootfstype=auto mode=ro init=/sbin/init
for argument in $(cat /proc/cmdline); do
	case "$argument" in
		root=*) root=${argument#root=} ;;
		rootfstype=*) rootfstype=${argument#rootfstype=} ;;
		rw|ro) mode=$argument ;;
		init=*) init=${argument#init=} ;;
	esac
done
[ -n "$root" ] || { echo "initramfs: no root= on the kernel command line"; exit 1; }

# The disk shows up asynchronously after its driver is loaded: give it 20 s.
tries=100
while :; do
	case "$root" in
		UUID=*|LABEL=*) device=$(findfs "$root" 2>/dev/null) ;;
		*) device=$root ;;
	esac
	[ -n "$device" ] && [ -b "$device" ] && break
	tries=$((tries - 1))
	[ "$tries" -gt 0 ] || { echo "initramfs: root device $root did not appear"; exit 1; }
	sleep 0.2
done

mount -t "$rootfstype" -o "$mode" "$device" /newroot || { echo "initramfs: cannot mount $device"; exit 1; }
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /proc /sys
exec switch_root /newroot "$init"
"""


def config_needs_initramfs(config: Path) -> bool:
    """True when a kernel .config builds a driver the root filesystem needs as a module."""
    settings = dict(
        line.split("=", 1)
        for line in config.read_text().splitlines()
        if line.startswith("CONFIG_") and "=" in line
    )
    return any(settings.get(option) == "m" for option in ROOT_OPTIONS)


def _module_name(path: str) -> str:
    name = Path(path).name
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def module_load_order(modules_dir: Path, wanted: tuple[str, ...] = ROOT_MODULES) -> list[str]:
    """Relative paths (as in modules.dep) of ``wanted`` and their dependencies, dependencies first.

    Modules built into the kernel (modules.builtin) are skipped; a wanted module that is neither
    built in nor available is an error naming it.
    """
    dep_file = modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise StageError(f"{dep_file}: missing (run depmod for this kernel first)")
    dependencies: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        module, _, needed = line.partition(":")
        paths[_module_name(module)] = module
        dependencies[module] = needed.split()
    builtin_file = modules_dir / "modules.builtin"
    builtin = (
        {_module_name(line) for line in builtin_file.read_text().split()} if builtin_file.is_file() else set()
    )

    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        # modules.dep lists every transitive dependency; the ones it lists last load first.
        for needed in reversed(dependencies.get(module, [])):
            visit(needed)
        order.append(module)

    for name in wanted:
        if name in paths:
            visit(paths[name])
        elif name not in builtin:
            raise StageError(f"{dep_file}: the kernel has no module {name} and does not build it in")
    return order


def _copy_module(source: Path, destination: Path) -> None:
    if source.name.endswith(".ko.xz"):
        destination.write_bytes(lzma.decompress(source.read_bytes()))
    elif source.name.endswith(".ko.zst"):
        with destination.open("wb") as out:
            subprocess.run(["zstd", "-dc", str(source)], stdout=out, check=True)
    elif source.name.endswith(".ko.gz"):
        destination.write_bytes(gzip.decompress(source.read_bytes()))
    else:
        shutil.copyfile(source, destination)


def build_initramfs(
    modules_dir: Path | None,
    output: Path,
    *,
    init: str = INIT,
    extra_applets: Sequence[str] = (),
    extra_files: Mapping[str, Path] = {},
) -> list[str]:
    """Write a gzip'd newc initramfs for the kernel whose modules are in ``modules_dir``.

    ``init`` is the script run as /init (by default: mount root= and switch to it); it finds the
    modules to load, in order, in /lib/modules/NAME.ko and their names in /etc/modules-load. With no
    ``modules_dir`` (a kernel with its drivers built in) it loads none. ``extra_applets`` are further
    busybox applets the init uses; ``extra_files`` maps absolute paths in the initramfs to the files
    copied there (a helper program and its libraries, say). Returns the module names it loads, in order.
    """
    order = module_load_order(modules_dir) if modules_dir is not None else []
    with tempfile.TemporaryDirectory(prefix="initramfs-") as staging_name:
        staging = Path(staging_name)
        for directory in ("bin", "dev", "proc", "sys", "newroot", "etc", "lib/modules"):
            (staging / directory).mkdir(parents=True)
        shutil.copy2(BUSYBOX, staging / "bin/busybox")
        for applet in dict.fromkeys([*APPLETS, *extra_applets]):
            (staging / "bin" / applet).symlink_to("busybox")
        names = []
        for module in order:
            name = _module_name(module)
            assert modules_dir is not None
            _copy_module(modules_dir / module, staging / "lib/modules" / f"{name}.ko")
            names.append(name)
        (staging / "etc/modules-load").write_text("".join(f"{name}\n" for name in names))
        for inside, source in extra_files.items():
            destination = staging / inside.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            # Follows links: a library's soname link becomes the library itself.
            shutil.copy2(source, destination)
        init_path = staging / "init"
        init_path.write_text(init)
        init_path.chmod(0o755)
        members = sorted(str(path.relative_to(staging)) for path in staging.rglob("*"))
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("wb") as out:
            cpio = subprocess.Popen(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
                cwd=staging,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            gzip_process = subprocess.Popen(["gzip", "-n", "-9"], stdin=cpio.stdout, stdout=out)
            assert cpio.stdin is not None and cpio.stdout is not None
            cpio.stdout.close()
            cpio.stdin.write(("\n".join([".", *members]) + "\n").encode())
            cpio.stdin.close()
            if cpio.wait() != 0 or gzip_process.wait() != 0:
                raise StageError(f"{output}: packing the initramfs failed (cpio/gzip)")
    os.chmod(output, 0o644)
    return names
