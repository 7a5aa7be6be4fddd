"""Unpack a verified stage3 and Portage snapshot, or a stage4 the farm packed, into a fresh build root.

Ownership, permissions and extended attributes (file capabilities) are kept exactly as the tarball
records them, as Gentoo's handbook prescribes; the snapshot becomes ``var/db/repos/gentoo``. A stage4
(``pack-root``) is a root emerged and pruned already: it holds whatever repository it kept.
"""

import argparse
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.build_root import REPOSITORY_DIR
from gentoo_farm.workers.toolkit.confined import resolve, unpack_tarball


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage3", type=Path, help="the stage3 tarball (verified by fetch)")
    parser.add_argument("--snapshot", type=Path, help="the Portage snapshot tarball (with --stage3)")
    parser.add_argument("--stage4", type=Path, help="a stage4 tarball instead (verified by download-inputs)")
    parser.add_argument(
        "--root", required=True, type=Path, help="the build root to create (must be new or empty)"
    )


# Ownership, modes and file capabilities exactly as the stage3 records them.
TAR_OPTIONS = ("--preserve-permissions", "--xattrs", "--xattrs-include=*.*", "--numeric-owner")


def run(args: argparse.Namespace) -> None:
    root: Path = args.root
    if root.exists() and any(root.iterdir()):
        raise StageError(f"build root {root} is not empty: a build needs a fresh root")
    if (args.stage4 is None) == (args.stage3 is None) or (args.stage3 is None) != (args.snapshot is None):
        raise StageError("expected --stage3 with --snapshot, or --stage4 alone")
    root.mkdir(parents=True, exist_ok=True)
    if args.stage4 is not None:
        progress(f"unpacking {args.stage4.name} into {root}")
        unpack_tarball(args.stage4, root, what=f"stage4 {args.stage4.name}", options=TAR_OPTIONS)
        if not (root / "var/db/pkg").is_dir():
            raise StageError(f"{args.stage4.name}: not a stage4 (no var/db/pkg inside)")
        report(build_root=str(root.resolve()))
        return
    progress(f"unpacking {args.stage3.name} into {root}")
    unpack_tarball(args.stage3, root, what=f"stage3 {args.stage3.name}", options=TAR_OPTIONS)
    # Where the image itself would put the repository, whatever links the stage3 has on the way.
    repository = resolve(root, str(REPOSITORY_DIR))
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
