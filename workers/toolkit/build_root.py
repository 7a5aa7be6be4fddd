"""What more than one stage knows about a build root: where its Portage repository lives, how much it
holds, which kernel it boots."""

import contextlib
import os
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError

# The Portage snapshot's place in a build root (unpack-root puts it there, emerge and prune-root use it).
REPOSITORY_DIR = Path("var/db/repos/gentoo")


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
