"""Distfiles as Gentoo's mirrors serve them, accepted only as the verified snapshot vouches for them.

Where a distfile lives on a mirror is what the mirror's ``distfiles/layout.conf`` says: GLEP 75's
``filename-hash BLAKE2B 8`` on distfiles.gentoo.org (the flat copies are gone), ``flat`` on the farm's
own mirror. Portage's own MirrorLayoutConfig reads it and places the file, as emerge does; a mirror
without a layout.conf is flat, as Portage takes it. A download is kept only when it has the size and
hashes of its ``DIST`` line in a package's Manifest (Portage's verify_all checks them), read from the
Portage snapshot that was verified against Gentoo's snapshot key.
"""

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from portage.checksum import verify_all
from portage.package.ebuild.fetch import DistfileName, MirrorLayoutConfig

from gentoo_farm.gentoo_manifest import DistEntry, ManifestError, dist_entries
from gentoo_farm.workers.toolkit import StageError, progress

DOWNLOAD_TIMEOUT = 60.0


def dist_entry(line: str) -> DistEntry:
    """``line`` (a stage's argument) as a Manifest DIST entry; a StageError quoting it when it is none."""
    try:
        return DistEntry.parse(line)
    except ManifestError as error:
        raise StageError(str(error)) from None


def manifest_entry(snapshot: Path, package: str, distfile: str) -> DistEntry:
    """The DIST line for ``distfile`` in ``package``'s Manifest inside a Portage snapshot tarball."""
    if package.count("/") != 1:
        raise StageError(f"{package!r}: expected a package as category/name, e.g. sys-kernel/vanilla-sources")
    manifest = f"{package}/Manifest"
    try:
        with tarfile.open(snapshot, "r|*") as archive:
            for member in archive:
                # Snapshots have one top directory (portage/ or gentoo-<date>/).
                if member.isfile() and member.name.split("/", 1)[-1] == manifest:
                    stream = archive.extractfile(member)
                    text = stream.read().decode() if stream is not None else ""
                    break
            else:
                raise StageError(f"{snapshot.name}: has no {manifest}: no package {package} in this snapshot")
    except (OSError, tarfile.TarError) as error:
        raise StageError(f"{snapshot}: cannot read the Portage snapshot: {error}") from None
    listed = []
    try:
        for entry in dist_entries(text):
            if entry.name == distfile:
                return entry
            listed.append(entry.name)
    except ManifestError as error:
        raise StageError(f"{snapshot.name}: {manifest}: {error}") from None
    raise StageError(
        f"{distfile} is not a DIST entry of {package}'s Manifest in {snapshot.name} "
        f"(it lists: {', '.join(listed) or 'nothing'})"
    )


def distfile_url(mirror: str, entry: DistEntry, timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """Where ``mirror`` (a base URL, without ``/distfiles``) serves the distfile, by its layout.conf."""
    base = mirror.rstrip("/")
    layout_url = f"{base}/distfiles/layout.conf"
    layout = MirrorLayoutConfig()
    try:
        with urllib.request.urlopen(layout_url, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        if error.code not in (403, 404):
            raise StageError(f"{layout_url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise StageError(f"{layout_url}: {getattr(error, 'reason', error)}") from None
    else:
        with tempfile.NamedTemporaryFile(prefix="layout-", suffix=".conf") as conf:
            conf.write(text)
            conf.flush()
            layout.read_from_file(conf.name)
    name = DistfileName(entry.name, digests=entry.hashes)
    path = layout.get_best_supported_layout(filename=name).get_path(name)
    return f"{base}/distfiles/{urllib.parse.quote(path)}"


def _problem(path: Path, entry: DistEntry) -> str | None:
    """Why ``path`` is not the file ``entry`` describes, or None when it is."""
    matches, reason = verify_all(str(path), entry.hashes)
    if matches:
        return None
    # Portage's reason: (what failed, the file's value, the Manifest's value).
    what, actual, listed = (*reason, "?", "?")[:3]
    return f"{what}: the Manifest lists {str(listed)[:16]}..., the file has {str(actual)[:16]}..."


def fetch_distfile(mirrors: list[str], entry: DistEntry, distdir: Path, what: str) -> Path:
    """``entry``'s distfile in ``distdir``: kept from before if intact, else from the first mirror that
    serves it intact. Fails naming the file and what every mirror did."""
    distfile = distdir / entry.name
    if distfile.is_file() and _problem(distfile, entry) is None:
        progress(f"{what} {entry.name}: already downloaded and matches its Manifest")
        return distfile
    distdir.mkdir(parents=True, exist_ok=True)
    partial = distfile.with_name(entry.name + ".partial")
    failures = []
    for mirror in mirrors:
        try:
            url = distfile_url(mirror, entry)
        except StageError as error:
            failures.append(str(error))
            continue
        progress(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError) as error:
            failures.append(f"{url}: {getattr(error, 'reason', error)}")
            continue
        problem = _problem(partial, entry)
        if problem is not None:
            failures.append(f"{url}: {entry.name} does not match its Manifest DIST line ({problem})")
            continue
        partial.replace(distfile)
        progress(f"{what} {entry.name}: size and {', '.join(sorted(set(entry.hashes) - {'size'}))} match")
        return distfile
    partial.unlink(missing_ok=True)
    raise StageError(f"cannot fetch the {what} {entry.name}: " + "; ".join(failures))
