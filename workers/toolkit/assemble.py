"""Lay the kernel and the recipe's modifications over a build root, ready to become a disk.

Unpacks the vmlinuz tarball and the vmoverride tarball into the root, applies the overlay's
password edits to /etc/shadow, adds the cloud user (``useradd -m -G wheel,users ec2-user`` in the
chroot) and points /boot/vmlinuz and /boot/initramfs at the kernel. The overlay must provide
/boot/extlinux.conf: without it the disk could not boot, so the stage stops here.
"""

import argparse
import json
import re
import shutil
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.overlay import EDITS_MEMBER
from gentoo_farm.workers.toolkit.tools import require_directory, require_file, run_tool

EXTLINUX_CONF = "boot/extlinux.conf"
UNPACK_OPTIONS = ("--numeric-owner", "--preserve-permissions", "--no-overwrite-dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the build root (the emerged system)")
    parser.add_argument("--vmlinuz", required=True, type=Path, help="the vmlinuz tarball")
    parser.add_argument("--overlay", required=True, type=Path, help="the vmoverride tarball")
    parser.add_argument("--user", default="ec2-user", help="the cloud user to create (default: ec2-user)")
    parser.add_argument(
        "--groups", default="wheel,users", help="the cloud user's groups (default: wheel,users)"
    )


def unpack(tarball: Path, root: Path, what: str) -> list[str]:
    """Unpack ``tarball`` over ``root``; return its member names."""
    output = run_tool(["tar", "-C", root, *UNPACK_OPTIONS, "-xvf", tarball], what=f"unpacking the {what}")
    return [line.strip().removeprefix("./") for line in output.splitlines() if line.strip()]


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
    edits_file = root / EDITS_MEMBER
    if not edits_file.is_file():
        return
    edits = json.loads(edits_file.read_text())
    shutil.rmtree(edits_file.parent)
    passwords: dict[str, str] = edits.get("passwords", {})
    if not passwords:
        return
    shadow = root / "etc/shadow"
    if not shadow.is_file():
        raise StageError(f"{overlay}: edits /etc/shadow, but the root has no {shadow}")
    lines = shadow.read_text().splitlines()
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
    mode = shadow.stat().st_mode
    shadow.write_text("\n".join(lines) + "\n")
    shadow.chmod(mode & 0o7777)


def check_extlinux_conf(root: Path, overlay: Path, overlay_members: list[str], has_initramfs: bool) -> None:
    conf = root / EXTLINUX_CONF
    if EXTLINUX_CONF not in overlay_members and not conf.is_file():
        raise StageError(
            f"{overlay}: the overlay has no /{EXTLINUX_CONF}; without it the disk has no boot menu "
            "and cannot boot (add root/boot/extlinux.conf to the overlay)"
        )
    if not has_initramfs:
        # One recipe serves kernels with and without an initramfs: a kernel that has its root
        # drivers built in comes without one, and SYSLINUX refuses to boot with a missing INITRD.
        lines = conf.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not re.match(r"\s*INITRD\s+/boot/initramfs\s*$", line, re.I)]
        if kept != lines:
            conf.write_text("".join(kept))
            progress(f"the kernel needs no initramfs: dropped INITRD /boot/initramfs from /{EXTLINUX_CONF}")
    for keyword, path in re.findall(
        r"^\s*(LINUX|KERNEL|INITRD)\s+(\S+)", conf.read_text(), re.MULTILINE | re.I
    ):
        if not (root / path.lstrip("/")).exists():
            raise StageError(f"{overlay}: /{EXTLINUX_CONF}: {keyword} {path} does not exist in the image")


def add_user(root: Path, user: str, groups: str) -> None:
    passwd = (root / "etc/passwd").read_text()
    if any(line.split(":", 1)[0] == user for line in passwd.splitlines()):
        progress(f"user {user} exists already")
        return
    run_tool(["chroot", root, "useradd", "-m", "-G", groups, user], what=f"useradd {user} in the image")
    progress(f"added user {user} (groups {groups})")


def link_kernel(root: Path, release: str) -> bool:
    """Point /boot/vmlinuz (and /boot/initramfs, when the kernel has one) at ``release``."""
    boot = root / "boot"
    has_initramfs = (boot / f"initramfs-{release}").is_file()
    for name, present in (("vmlinuz", True), ("initramfs", has_initramfs)):
        link = boot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if present:
            link.symlink_to(f"{name}-{release}")
    return has_initramfs


def run(args: argparse.Namespace) -> None:
    root = require_directory(args.root, "build root")
    require_file(root / "etc/passwd", "the build root's /etc/passwd")
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
    progress(f"assembled {root}: kernel {release}{' with initramfs' if has_initramfs else ''}")
    report(kernel_release=release, kernel_initramfs=has_initramfs)
