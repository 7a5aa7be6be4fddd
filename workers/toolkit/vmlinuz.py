"""The vmlinuz tarball, the kernel builders' artifact: what both kernel stages write and assemble reads.

Layout: boot/vmlinuz-KVER, boot/config-KVER, boot/initramfs-KVER (only when the kernel needs one),
lib/modules/KVER (absent for a kernel without modules). The compression follows the file name
(.tar.zst, .tar.xz, .tar.gz).
"""

from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress
from gentoo_farm.workers.toolkit.initramfs import build_initramfs
from gentoo_farm.workers.toolkit.tools import run_tool

# 2000-01-01T00:00:00Z, as in the overlay: a kernel tarball's bytes still differ per build
# (the kernel embeds its build time), but its member metadata does not.
FIXED_MTIME = "@946684800"
REPRODUCIBLE_TAR_OPTIONS = (
    "--sort=name",
    f"--mtime={FIXED_MTIME}",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--format=gnu",
)


def write_tarball(source: Path, members: list[str], output: Path) -> None:
    """Pack ``members`` (relative to ``source``) into ``output``, compressed by its suffix."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial" + "".join(output.suffixes))
    run_tool(
        ["tar", "-C", source, *REPRODUCIBLE_TAR_OPTIONS, "-a", "-cf", partial, "--", *members],
        what=f"packing {output.name}",
    )
    partial.replace(output)


def finish_kernel_tree(staging: Path, release: str, *, initramfs: bool) -> list[str]:
    """Check the kernel tree in ``staging``, add the initramfs when asked; return the tarball members."""
    vmlinuz = staging / "boot" / f"vmlinuz-{release}"
    config = staging / "boot" / f"config-{release}"
    for required in (vmlinuz, config):
        if not required.is_file():
            raise StageError(f"{required}: missing from the kernel tree")
    members = [f"boot/vmlinuz-{release}", f"boot/config-{release}"]
    modules_dir = staging / "lib/modules" / release
    if modules_dir.is_dir():
        # Links into the build tree mean nothing on the image.
        for link in ("build", "source"):
            (modules_dir / link).unlink(missing_ok=True)
        run_tool(["depmod", "-b", staging, release], what=f"depmod for {release}")
        members.append(f"lib/modules/{release}")
    if initramfs:
        if not modules_dir.is_dir():
            raise StageError(f"kernel {release} needs an initramfs but installed no modules")
        loaded = build_initramfs(modules_dir, staging / "boot" / f"initramfs-{release}")
        progress(f"initramfs-{release} loads: {' '.join(loaded)}")
        members.append(f"boot/initramfs-{release}")
    return members
