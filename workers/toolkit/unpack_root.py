"""Unpack a verified stage3 and Portage snapshot into a fresh build root.

Ownership, permissions and extended attributes (file capabilities) are kept exactly as the stage3
records them, as Gentoo's handbook prescribes; the snapshot becomes ``var/db/repos/gentoo``.
"""

import argparse
import subprocess
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress, report

REPOSITORY_DIR = Path("var/db/repos/gentoo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage3", required=True, type=Path, help="the stage3 tarball (verified by fetch)")
    parser.add_argument("--snapshot", required=True, type=Path, help="the Portage snapshot tarball")
    parser.add_argument(
        "--root", required=True, type=Path, help="the build root to create (must be new or empty)"
    )


def _untar(tarball: Path, destination: Path, *extra: str) -> None:
    if not tarball.is_file():
        raise StageError(f"{tarball}: no such file")
    command = [
        "tar",
        "--extract",
        "--preserve-permissions",
        "--xattrs",
        "--xattrs-include=*.*",
        "--numeric-owner",
    ]
    result = subprocess.run(
        [*command, *extra, "--file", str(tarball), "--directory", str(destination)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StageError(
            f"{tarball.name}: cannot unpack: {result.stderr.strip() or f'tar exit {result.returncode}'}"
        )


def run(args: argparse.Namespace) -> None:
    root: Path = args.root
    if root.exists() and any(root.iterdir()):
        raise StageError(f"build root {root} is not empty: a build needs a fresh root")
    root.mkdir(parents=True, exist_ok=True)
    progress(f"unpacking {args.stage3.name} into {root}")
    _untar(args.stage3, root)
    repository = root / REPOSITORY_DIR
    repository.mkdir(parents=True, exist_ok=True)
    progress(f"unpacking {args.snapshot.name} into {repository}")
    # Snapshots hold one top directory (portage/); its contents are the repository.
    _untar(args.snapshot, repository, "--strip-components=1")
    if not (repository / "profiles").is_dir():
        raise StageError(f"{args.snapshot.name}: not a Portage snapshot (no profiles/ directory inside)")
    report(build_root=str(root.resolve()), repository=str(repository.resolve()))
