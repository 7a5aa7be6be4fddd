"""Lay the kernel and the recipe's modifications over a build root, ready to become a disk.

Unpacks the vmlinuz tarball and the vmoverride tarball into the root, applies the overlay's
password edits to /etc/shadow, adds the cloud user (as ``useradd -m -G wheel,users ec2-user`` would),
gives it root the configured admin way (``sudo``: /etc/sudoers.d/90-cloud-user, any command without a
password, as cloud images do; root's own account stays as the stage3 and overlay left it) and points
/boot/vmlinuz and /boot/initramfs at the kernel. The overlay must provide /boot/extlinux.conf: without
it the disk could not boot, so the stage stops here.

Last, whatever makes a machine itself is taken out (SSH host keys, the machine id, saved random
seeds), from the stage3, a package or the overlay alike: every instance of a published image would
otherwise share them. sshd's init script, dbus and OpenRC's seedrng make their own at first boot.

Every path read or written in the root is resolved inside it (workers/toolkit/confined.py), and no
program of the image runs: the overlay or a package may have replaced any of them, and this stage
runs as root on the worker.
"""

import argparse
import fnmatch
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from gentoo_farm.qemuboot import CLOUD_USER
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.accounts import add_user
from gentoo_farm.workers.toolkit.confined import read_text, resolve, unpack_tarball, write_text
from gentoo_farm.workers.toolkit.tools import require_directory, require_file
from gentoo_farm.workers.toolkit.vmoverride import EDITS_MEMBER

EXTLINUX_CONF = "boot/extlinux.conf"
# sudo reads the files of /etc/sudoers.d in name order; 90 leaves room for the overlay's to come first.
SUDOERS_FILE = "etc/sudoers.d/90-cloud-user"
# sudo ignores a sudoers file that others may write, or that root does not own.
SUDOERS_MODE = 0o440
# (directory, file name pattern): one machine's identity, never to be shared by an image's instances.
HOST_IDENTITY = (
    ("etc/ssh", "ssh_host_*"),
    ("etc", "machine-id"),
    ("var/lib/dbus", "machine-id"),
    ("var/lib/misc", "random-seed"),
    ("var/lib/seedrng", "seed.*"),
    ("var/lib/systemd", "random-seed"),
)
UNPACK_OPTIONS = ("--numeric-owner", "--preserve-permissions", "--no-overwrite-dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the build root (the emerged system)")
    parser.add_argument("--vmlinuz", required=True, type=Path, help="the vmlinuz tarball")
    parser.add_argument("--overlay", required=True, type=Path, help="the vmoverride tarball")
    parser.add_argument(
        "--user", default=CLOUD_USER, help=f"the cloud user to create (default: {CLOUD_USER})"
    )
    parser.add_argument(
        "--groups", default="wheel,users", help="the cloud user's groups (default: wheel,users)"
    )
    parser.add_argument(
        "--admin",
        choices=("sudo", "none"),
        default="sudo",
        help="how the cloud user becomes root: sudo without a password, or no way (default: sudo)",
    )


def unpack(tarball: Path, root: Path, what: str) -> list[str]:
    """Unpack ``tarball`` over ``root`` (refusing members that would land outside it); return its names."""
    return unpack_tarball(tarball, root, what=what, options=UNPACK_OPTIONS)


def kernel_release_of(members: list[str], tarball: Path) -> str:
    releases = sorted(
        {name.removeprefix("boot/vmlinuz-") for name in members if re.fullmatch(r"boot/vmlinuz-[^/]+", name)}
    )
    if len(releases) != 1:
        raise StageError(
            f"{tarball}: a vmlinuz tarball holds exactly one boot/vmlinuz-KVER, found {releases or 'none'}"
        )
    return releases[0]


def apply_password_edits(root: Path, overlay: Path) -> None:
    edits_file = resolve(root, EDITS_MEMBER)
    if not edits_file.is_file():
        return
    edits = json.loads(edits_file.read_text())
    edits_dir = root / PurePosixPath(EDITS_MEMBER).parent
    if edits_dir.is_symlink():
        edits_dir.unlink()
    else:
        shutil.rmtree(edits_dir)
    passwords: dict[str, str] = edits.get("passwords", {})
    if not passwords:
        return
    if not resolve(root, "etc/shadow").is_file():
        raise StageError(f"{overlay}: edits /etc/shadow, but the root has no {root / 'etc/shadow'}")
    lines = read_text(root, "etc/shadow").splitlines()
    for account, password in passwords.items():
        for index, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == account and len(fields) > 1:
                fields[1] = password
                lines[index] = ":".join(fields)
                progress(
                    f"/etc/shadow: {'removed the password of' if not password else 'set the password of'} "
                    f"{account}"
                )
                break
        else:
            raise StageError(f"{overlay}: [passwords] {account!r}: no such account in the root's /etc/shadow")
    write_text(root, "etc/shadow", "\n".join(lines) + "\n")


def check_extlinux_conf(root: Path, overlay: Path, overlay_members: list[str], has_initramfs: bool) -> None:
    conf = resolve(root, EXTLINUX_CONF)
    if EXTLINUX_CONF not in overlay_members and not conf.is_file():
        raise StageError(
            f"{overlay}: the overlay has no /{EXTLINUX_CONF}; without it the disk has no boot menu "
            "and cannot boot (add root/boot/extlinux.conf to the overlay)"
        )
    if not has_initramfs:
        # One recipe serves kernels with and without an initramfs: a kernel that has its root
        # drivers built in comes without one, and SYSLINUX refuses to boot with a missing INITRD.
        lines = read_text(root, EXTLINUX_CONF).splitlines(keepends=True)
        kept = [line for line in lines if not re.match(r"\s*INITRD\s+/boot/initramfs\s*$", line, re.I)]
        if kept != lines:
            write_text(root, EXTLINUX_CONF, "".join(kept))
            progress(f"the kernel needs no initramfs: dropped INITRD /boot/initramfs from /{EXTLINUX_CONF}")
    for keyword, path in re.findall(
        r"^\s*(LINUX|KERNEL|INITRD)\s+(\S+)", read_text(root, EXTLINUX_CONF), re.MULTILINE | re.I
    ):
        if not resolve(root, path).exists():
            raise StageError(f"{overlay}: /{EXTLINUX_CONF}: {keyword} {path} does not exist in the image")


def link_kernel(root: Path, release: str) -> bool:
    """Point /boot/vmlinuz (and /boot/initramfs, when the kernel has one) at ``release``."""
    boot = resolve(root, "boot")
    has_initramfs = resolve(root, f"boot/initramfs-{release}").is_file()
    for name, present in (("vmlinuz", True), ("initramfs", has_initramfs)):
        link = boot / name
        if link.is_dir() and not link.is_symlink():
            raise StageError(
                f"{root}: /boot/{name} is a directory; it must be free for the link to the kernel"
            )
        link.unlink(missing_ok=True)
        if present:
            link.symlink_to(f"{name}-{release}")
    return has_initramfs


def allow_sudo(root: Path, user: str) -> None:
    """Let ``user`` run any command as root with the image's sudo, without a password."""
    if not resolve(root, "usr/bin/sudo").is_file():
        raise StageError(
            f'{root}: [image] admin = "sudo", but the image has no /usr/bin/sudo '
            "(app-admin/sudo is emerged for it: was it unmerged?)"
        )
    sudoers_dir = resolve(root, PurePosixPath(SUDOERS_FILE).parent)
    sudoers_dir.mkdir(mode=0o750, exist_ok=True)
    write_text(
        root,
        SUDOERS_FILE,
        f"# gentoo-farm: the cloud user is the instance's admin.\n{user} ALL=(ALL) NOPASSWD: ALL\n",
    )
    sudoers = resolve(root, SUDOERS_FILE)
    # write_text keeps the mode and owner of a file the overlay put there: sudo needs exactly these.
    os.chown(sudoers, 0, 0, follow_symlinks=False)
    sudoers.chmod(SUDOERS_MODE)
    progress(f"/{SUDOERS_FILE}: {user} may run any command as root with sudo, without a password")


def forget_host_identity(root: Path) -> list[str]:
    """Remove :data:`HOST_IDENTITY` from ``root``; the paths removed, as the image names them."""
    removed = []
    for directory, pattern in HOST_IDENTITY:
        found = resolve(root, directory)
        if not found.is_dir():
            continue
        for entry in sorted(found.iterdir()):
            if fnmatch.fnmatchcase(entry.name, pattern) and not entry.is_dir():
                entry.unlink()
                removed.append(f"/{directory}/{entry.name}")
    return removed


def run(args: argparse.Namespace) -> None:
    root = require_directory(args.root, "build root")
    require_file(resolve(root, "etc/passwd"), "the build root's /etc/passwd")
    require_file(args.vmlinuz, "vmlinuz tarball")
    require_file(args.overlay, "vmoverride tarball")

    progress(f"unpacking {args.vmlinuz} into {root}")
    release = kernel_release_of(unpack(args.vmlinuz, root, "vmlinuz tarball"), args.vmlinuz)
    has_initramfs = link_kernel(root, release)
    progress(f"unpacking {args.overlay} into {root}")
    overlay_members = unpack(args.overlay, root, "vmoverride tarball")
    apply_password_edits(root, args.overlay)
    check_extlinux_conf(root, args.overlay, overlay_members, has_initramfs)
    add_user(root, args.user, args.groups)
    if args.admin == "sudo":
        allow_sudo(root, args.user)
    removed = forget_host_identity(root)
    if removed:
        progress(f"removed what each instance makes its own: {' '.join(removed)}")
    progress(f"assembled {root}: kernel {release}{' with initramfs' if has_initramfs else ''}")
    report(kernel_release=release, kernel_initramfs=has_initramfs)
