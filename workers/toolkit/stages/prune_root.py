"""Take out of an emerged build root what only the build needed: build-only packages, the repository.

An image boots and runs without the Portage tree and without the packages that were needed only to
build others (DEPEND: headers, static libraries; BDEPEND goes to the worker, never into the root), as
diskimage-builder's gentoo element cleans them. ``emerge --depclean --with-bdeps=n`` unmerges those
packages through Portage (so the vdb stays true), then the unpacked repository and Portage's caches
and scratch space are emptied. Either can be kept (``--keep-build-deps``, ``--keep-repository``); an
instance then syncs or emerges as on any Gentoo machine. The root's size before and after is reported.
"""

import argparse
import re
import shutil
from pathlib import Path

from gentoo_farm.units import human_size
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.build_root import REPOSITORY_DIR, tree_bytes
from gentoo_farm.workers.toolkit.portage_env import (
    emerge_command,
    portage_environment,
    private_running_root,
    select_profile,
    worker_features,
)
from gentoo_farm.workers.toolkit.tools import run_echoed

# Portage's own caches and scratch space in the root; their contents go, the directories stay.
PORTAGE_CACHES = (Path("var/cache/distfiles"), Path("var/cache/binpkgs"), Path("var/tmp/portage"))
UNMERGING = re.compile(r"^>>> Unmerging \(\d+ of \d+\) (?P<cpv>\S+?)\.\.\.", re.MULTILINE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="the emerged build root")
    parser.add_argument("--workdir", required=True, type=Path, help="scratch space for Portage")
    parser.add_argument("--keep-build-deps", action="store_true", help="keep packages only the build needed")
    parser.add_argument(
        "--keep-repository", action="store_true", help=f"keep the Portage repository at /{REPOSITORY_DIR}"
    )


def depclean_build_deps(root: Path, workdir: Path) -> list[str]:
    """Unmerge what neither @system nor @world needs at run time; the unmerged packages, in order."""
    workdir.mkdir(parents=True, exist_ok=True)
    for directory in ("tmp", "logs"):
        (workdir / directory).mkdir(exist_ok=True)
    profile = select_profile(root, None)
    running_root = private_running_root(workdir, profile, [], {"FEATURES": worker_features()})
    environment = portage_environment(
        root,
        running_root,
        workdir=workdir,
        pkgdir=workdir / "unused-pkgdir",
        distdir=workdir / "unused-distdir",
        mirrors=[],
        jobs=1,
    )
    command = [emerge_command(), "--depclean", "--with-bdeps=n", "--color=n", "--nospinner"]
    progress(f"running: {' '.join(command)} (ROOT={root})")
    output: list[str] = []
    returncode = run_echoed(command, env=environment, on_line=output.append)
    if returncode != 0:
        raise StageError(f"emerge --depclean exited with status {returncode} (see the log above)")
    return [match["cpv"] for match in UNMERGING.finditer("".join(output))]


def empty_directory(directory: Path) -> None:
    if directory.is_symlink() or not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    if not (root / "var/db/pkg").is_dir():
        raise StageError(f"{root}: no /var/db/pkg; this is not an emerged root (run the emerge stage first)")
    before = tree_bytes(root)
    progress(f"{root}: {human_size(before)} after emerge")
    unmerged: list[str] = []
    if args.keep_build_deps:
        progress("keeping build-only packages (--keep-build-deps)")
    else:
        if not (root / REPOSITORY_DIR / "profiles").is_dir():
            raise StageError(f"{root}: no Portage repository at /{REPOSITORY_DIR} to depclean against")
        unmerged = depclean_build_deps(root, args.workdir.resolve())
        progress(f"unmerged {len(unmerged)} build-only package(s): {' '.join(unmerged) or 'none'}")
    repository = root / REPOSITORY_DIR
    if args.keep_repository:
        progress(f"keeping /{REPOSITORY_DIR} (--keep-repository)")
    elif repository.exists():
        progress(f"removing /{REPOSITORY_DIR}")
        empty_directory(repository)
    for cache in PORTAGE_CACHES:
        empty_directory(root / cache)
    after = tree_bytes(root)
    progress(f"{root}: {human_size(after)} after pruning ({human_size(before - after)} removed)")
    report(root_bytes_emerged=before, root_bytes_pruned=after, packages_unmerged=unmerged)
