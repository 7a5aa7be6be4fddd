"""List the binary packages and distfiles of this build that the farm's binhost and mirror do not have yet.

Reads PKGDIR/Packages and the binhost's Packages (over HTTP), asks the mirror for each distfile (HEAD), and
writes what is new as JSON for the master, which signs upload URLs for exactly those files. A distfile is
offered only with the ``DIST`` line of a repository Manifest that names it (size, BLAKE2B, SHA512); the
master signs for it only if the published snapshot the build used has the same line, and moves it into
the mirror only if the upload matches it.
"""

from __future__ import annotations

import argparse
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from portage.getbinpkg import PackageIndex

from gentoo_farm.gentoo_manifest import ManifestError
from gentoo_farm.store.binhost import vouched_distfiles
from gentoo_farm.workers.toolkit import StageError, progress, report

# What Portage leaves in DISTDIR besides finished distfiles: partial downloads and quarantined failures.
UNFINISHED_MARKERS = ("._checksum_failure_.", ".__download__", ".portage_lockfile")
# A mirror's own description, not a distfile.
MIRROR_FILES = {"layout.conf"}


def read_index(text: str) -> PackageIndex:
    index = PackageIndex()
    index.read(io.StringIO(text))
    return index


def fetch(url: str, method: str = "GET", timeout: float = 60) -> bytes | None:
    """The body at ``url``, or None when the server says it does not exist (404/403 on a fresh store)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code in (403, 404):
            return None
        raise StageError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise StageError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None


def new_binpkgs(pkgdir: Path, binhost: str) -> dict[str, str]:
    local_index = pkgdir / "Packages"
    if not local_index.is_file():
        return {}
    remote = fetch(f"{binhost.rstrip('/')}/Packages")
    published = (
        {entry.get("PATH") or entry["CPV"] + ".tbz2" for entry in read_index(remote.decode()).packages}
        if remote
        else set()
    )
    found: dict[str, str] = {}
    for entry in read_index(local_index.read_text()).packages:
        path = entry.get("PATH") or entry["CPV"] + ".tbz2"
        file = pkgdir / path
        if path not in published and file.is_file():
            found[path] = str(file.resolve())
    return found


def manifest_dist_lines(repositories: list[Path]) -> dict[str, dict[str, object]]:
    """``{distfile: {size, blake2b, sha512}}`` from the ``DIST`` lines of every package Manifest."""
    vouched: dict[str, dict[str, object]] = {}
    for repository in repositories:
        if not repository.is_dir():
            raise StageError(f"repository {repository} is not a directory")
        for manifest in sorted(repository.glob("*/*/Manifest")):
            try:
                vouched.update(vouched_distfiles(manifest.read_text(errors="replace")))
            except ManifestError as error:
                raise StageError(f"{manifest}: {error}") from None
    return vouched


def new_distfiles(distdir: Path, mirror: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for file in sorted(distdir.iterdir()):
        name = file.name
        if (
            not file.is_file()
            or name.startswith(".")
            or name in MIRROR_FILES
            or any(mark in name for mark in UNFINISHED_MARKERS)
        ):
            continue
        if fetch(f"{mirror.rstrip('/')}/{urllib.parse.quote(name)}", method="HEAD") is None:
            found[name] = str(file.resolve())
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pkgdir", type=Path, help="Portage PKGDIR of this build")
    parser.add_argument("--binhost", help="URL of the farm binhost for this profile (where Packages is)")
    parser.add_argument("--distdir", type=Path, help="Portage DISTDIR of this build")
    parser.add_argument("--mirror", help="URL of the farm distfile mirror (its distfiles/ directory)")
    parser.add_argument(
        "--repository",
        type=Path,
        action="append",
        default=[],
        help="ebuild repository whose Manifests vouch for the distfiles (repeatable)",
    )
    parser.add_argument("--output", required=True, type=Path, help="where to write the result (JSON)")


def run(args: argparse.Namespace) -> None:
    for directory, url, what in (
        (args.pkgdir, args.binhost, "binhost"),
        (args.distdir, args.mirror, "mirror"),
    ):
        if (directory is None) != (url is None):
            raise StageError(f"give both the directory and the {what} URL, or neither")
        if directory is not None and not directory.is_dir():
            raise StageError(f"{directory} is not a directory")
    binpkgs = new_binpkgs(args.pkgdir, args.binhost) if args.pkgdir else {}
    found = new_distfiles(args.distdir, args.mirror) if args.distdir else {}
    vouched = manifest_dist_lines(args.repository) if found else {}
    distfiles = {name: {"file": file, **vouched[name]} for name, file in found.items() if name in vouched}
    unvouched = sorted(set(found) - set(distfiles))
    result = {
        "packages_index": str((args.pkgdir / "Packages").resolve()) if args.pkgdir else "",
        "binpkgs": binpkgs,
        "distfiles": distfiles,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    for path in binpkgs:
        progress(f"new binary package: {path}")
    for name in distfiles:
        progress(f"new distfile: {name}")
    for name in unvouched:
        progress(f"not pushed back: no Manifest DIST line vouches for the distfile {name}")
    progress(f"{len(binpkgs)} binary packages and {len(distfiles)} distfiles to push back")
    report(new_binpkgs=len(binpkgs), new_distfiles=len(distfiles))
