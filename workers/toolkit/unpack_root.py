"""Unpack a verified stage3 and Portage snapshot into a fresh build root.

Ownership, permissions and extended attributes (file capabilities) are kept exactly as the stage3
records them, as Gentoo's handbook prescribes; the snapshot becomes ``var/db/repos/gentoo``.
"""

import argparse
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.confined import resolve, unpack_tarball

REPOSITORY_DIR = Path("var/db/repos/gentoo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage3", required=True, type=Path, help="the stage3 tarball (verified by fetch)")
    parser.add_argument("--snapshot", required=True, type=Path, help="the Portage snapshot tarball")
    parser.add_argument(
        "--root", required=True, type=Path, help="the build root to create (must be new or empty)"
    )


# Ownership, modes and file capabilities exactly as the stage3 records them.
TAR_OPTIONS = ("--preserve-permissions", "--xattrs", "--xattrs-include=*.*", "--numeric-owner")


def run(args: argparse.Namespace) -> None:
    root: Path = args.root
    if root.exists() and any(root.iterdir()):
        raise StageError(f"build root {root} is not empty: a build needs a fresh root")
    root.mkdir(parents=True, exist_ok=True)
    progress(f"unpacking {args.stage3.name} into {root}")
    unpack_tarball(args.stage3, root, what=f"stage3 {args.stage3.name}", options=TAR_OPTIONS)
    # Where the image itself would put the repository, whatever links the stage3 has on the way.
    repository = resolve(root, REPOSITORY_DIR)
    repository.mkdir(parents=True, exist_ok=True)
    progress(f"unpacking {args.snapshot.name} into {repository}")
    # Snapshots hold one top directory (portage/); its contents are the repository.
    unpack_tarball(
        args.snapshot,
        repository,
        what=f"snapshot {args.snapshot.name}",
        options=TAR_OPTIONS,
        strip_components=1,
    )
    if not (repository / "profiles").is_dir():
        raise StageError(f"{args.snapshot.name}: not a Portage snapshot (no profiles/ directory inside)")
    report(build_root=str(root.resolve()), repository=str(repository.resolve()))
