"""The binhost and distfile mirror in the store, filled by builds ("push back").

A worker never writes the binhost directly. The master signs URLs for the new packages under a per-build
staging prefix (``incoming/<token>/``) plus one for the worker's ``Packages`` index; the worker PUTs them;
then :func:`merge_pushback` takes the binhost lock and, for each staged package whose PATH the binhost does
not have yet, verifies it against its index entry (SIZE, SHA1/MD5), signs it with the farm's key
(:mod:`gentoo_farm.signing`; workers emerge with ``verify-signature``) into ``binpkgs/<profile>/``, and
merges the entries into ``binpkgs/<profile>/Packages`` with Portage's own PackageIndex. Two builds
finishing at once both end up in the index; a package path two builds both made is taken from whichever
merged first, file and entry together. Distfiles take the same road: the worker offers each new one with
the Manifest ``DIST`` line that vouches for it, the master signs a URL (bound to that size) under staging
for names the mirror lacks, and :func:`merge_distfiles` moves into ``distfiles/<name>`` (flat layout,
announced by ``distfiles/layout.conf``) only what matches its line, never over a file the mirror has.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portage.getbinpkg import PackageIndex

from gentoo_farm.checksums import Digest, feed
from gentoo_farm.gentoo_manifest import ManifestError, dist_entries
from gentoo_farm.signing import FarmKey, SigningError
from gentoo_farm.store.base import (
    INCOMING,
    ArtifactStore,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    check_key,
)
from gentoo_farm.transfer import ProgressReport, TransferMeter

log = logging.getLogger(__name__)

LAYOUT_CONF_KEY = "distfiles/layout.conf"
LAYOUT_CONF = b"[structure]\n0=flat\n"
# Portage elides these from entries that equal the header; reading them back in keeps the merge exact.
INHERITED_KEYS = ["CHOST", "REPO"]
STAGED_INDEX = "Packages"
API_JOIN_SECONDS = 30
"""How long a released lock waits for its renewer thread (one store request) to stop."""
STAGED_DISTFILES = "distfiles/"
VOUCHED_DISTFILES = "vouched-distfiles.json"
"""What the master signed distfile URLs for, with their DIST lines; written by the master, never a worker."""


def binhost_prefix(profile: str) -> str:
    return check_key(f"binpkgs/{profile.strip('/')}") + "/"


def binhost_url(store_url: str, profile: str) -> str:
    """Where Portage on a worker reads the farm's binhost for ``profile`` (its ``sync-uri``), given the
    store's :func:`~gentoo_farm.store.workers_base_url`."""
    return f"{store_url}/{binhost_prefix(profile)}"


def index_key(profile: str) -> str:
    return binhost_prefix(profile) + "Packages"


def staging_prefix(token: str) -> str:
    return check_key(f"{INCOMING}/{token}") + "/"


# -- the Packages index --------------------------------------------------------------------------------


def parse_index(data: bytes | None, where: str) -> PackageIndex:
    index = PackageIndex(inherited_keys=INHERITED_KEYS)
    if data:
        try:
            index.read(io.StringIO(data.decode("utf-8")))
        except UnicodeDecodeError as error:
            raise StoreError(f"{where} is not a Portage Packages index: {error}") from error
    return index


def render_index(index: PackageIndex) -> bytes:
    out = io.StringIO()
    index.modified = True
    index.write(out)
    return out.getvalue().encode()


def entry_path(entry: Mapping[str, str]) -> str:
    """The package file of an index entry, relative to the binhost (Portage's PATH, default CPV.tbz2)."""
    return entry.get("PATH") or f"{entry['CPV']}.tbz2"


# -- a lease lock in the store -------------------------------------------------------------------------


class Lease:
    """A held store lock, as :func:`store_lock` yields it: whether it is still ours.

    The renewer thread sets :attr:`lost` once the lock object names another owner (or is gone), or when
    store errors kept it from renewing until the lease ran out; :meth:`confirm` also asks the store now.
    """

    def __init__(self, store: ArtifactStore, key: str, owner: str) -> None:
        self.store, self.key, self.owner = store, key, owner
        self.lost: str | None = None
        """Why the lock is no longer ours (naming its key), once known; None while it is held."""

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = f"{self.store.location}: lost the lock {self.key}: {why}"
            log.warning("%s", self.lost)

    def confirm(self) -> str | None:
        """Why the lock is not ours any more, read from the store now (one read), else None. A store error
        here proves nothing (the renewer keeps trying): it leaves the lease as it was."""
        if self.lost is None:
            with suppress(StoreError):
                holder = _holder(self.store.read_versioned(self.key))
                if holder != self.owner:
                    self.lose(_held_by(holder))
        return self.lost


def _holder(current: tuple[bytes, str] | None) -> str | None:
    """The owner a lock object names ("?" when it is unreadable), None when there is no lock object."""
    if current is None:
        return None
    try:
        return str(json.loads(current[0]).get("owner", "?"))
    except (ValueError, AttributeError):
        return "?"


def _held_by(holder: str | None) -> str:
    return f"another holder has it now ({holder})" if holder else "the lock object was removed"


@contextmanager
def store_lock(store: ArtifactStore, name: str, timeout: float = 120, lease: float = 600) -> Iterator[Lease]:
    """Hold ``locks/<name>`` in the store: works across master processes and for both backends.

    The lock is a small object written only when absent; a holder that died is taken over once its lease
    has run out (a conditional write on the stale object's etag, so only one waiter wins). A live holder
    renews its lease while it works, so a long merge is never taken over: a renewal that fails with a store
    error (S3 unreachable for a moment) is retried, with a short backoff, until the lease would run out.
    The yielded :class:`Lease` says when the lock was lost all the same.
    """
    key = check_key(f"locks/{name}")
    owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
    deadline = time.monotonic() + timeout
    while True:
        claim = json.dumps({"owner": owner, "expires": time.time() + lease}).encode()
        try:
            store.put_bytes(key, claim, if_absent=True)
            break
        except PreconditionFailed:
            pass
        info = store.head(key)
        if info is not None:
            try:
                holder = json.loads(store.get_bytes(key))
            except (ObjectNotFound, ValueError):
                holder = {"owner": "?", "expires": 0}
            if holder.get("expires", 0) < time.time():
                try:
                    store.put_bytes(key, claim, if_match=info.etag)
                    break
                except (PreconditionFailed, ObjectNotFound):
                    pass
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{store.location}: {key} is held by {holder.get('owner')}; waited {timeout:.0f} s"
                )
        time.sleep(random.uniform(0.05, 0.3))
    held = Lease(store, key, owner)
    renewing = threading.Event()
    renewer = threading.Thread(
        target=_renew_lease,
        args=(held, lease, time.time() + lease, renewing),
        name=f"lease-{name}",
        daemon=True,
    )
    renewer.start()
    try:
        yield held
    finally:
        renewing.set()
        renewer.join(timeout=API_JOIN_SECONDS)
        try:
            if json.loads(store.get_bytes(key)).get("owner") == owner:
                store.delete([key])
        except (ObjectNotFound, ValueError):
            pass


RENEW_BACKOFF_SECONDS = 0.2
"""The first wait after a failed renewal; it doubles, up to a tenth of the lease (at most 5 s)."""


def _renew_lease(held: Lease, lease: float, expires: float, done: threading.Event) -> None:
    """Extend our claim every third of its lease, so work that outlives one lease keeps the lock.

    A renewal that fails with a store error is tried again (backing off) for as long as the claim last
    written still runs; a conditional write that loses reads the lock again, and only a lock object naming
    another owner, or none, means the lock is lost. Either way :attr:`Lease.lost` says so."""
    store, key = held.store, held.key
    while not done.wait(lease / 3):
        failures = 0
        while not done.is_set():
            try:
                current = store.read_versioned(key)
                holder = _holder(current)
                if current is None or holder != held.owner:
                    held.lose(_held_by(holder))
                    return
                renewed = time.time() + lease
                claim = json.dumps({"owner": held.owner, "expires": renewed}).encode()
                store.put_bytes(key, claim, if_match=current[1])
                expires = renewed
                break
            except (PreconditionFailed, ObjectNotFound):
                # The lock changed since we read it (or our own write landed unacknowledged): read again.
                continue
            except StoreError as error:
                failures += 1
                delay = min(RENEW_BACKOFF_SECONDS * 2 ** (failures - 1), lease / 10, 5.0)
                if time.time() + delay >= expires:
                    held.lose(
                        f"could not renew its lease before it ran out ({failures} tries; last: {error})"
                    )
                    return
                log.warning(
                    "%s: renewing %s failed (%s); trying again in %.1f s", store.location, key, error, delay
                )
                done.wait(delay)


# -- what vouches for a distfile -----------------------------------------------------------------------


def vouched_distfiles(manifest_text: str) -> dict[str, dict[str, object]]:
    """``{distfile: {size, sha512, blake2b}}`` from a Manifest's ``DIST`` lines that list a SHA512: what
    push-back compares of a line. ManifestError names a ``DIST`` line Portage cannot read."""
    return {
        entry.name: {"size": entry.size, "sha512": entry.sha512, "blake2b": entry.blake2b}
        for entry in dist_entries(manifest_text)
        if entry.sha512
    }


def snapshot_dist_lines(store: ArtifactStore, snapshot_key: str, names: Iterable[str]) -> dict[str, object]:
    """The ``DIST`` lines for ``names`` in the package Manifests of a Portage snapshot the farm published
    (and verified against Gentoo's signing key): what vouches for a distfile, whatever a worker says."""
    wanted = set(names)
    found: dict[str, object] = {}
    if not wanted:
        return found
    try:
        with store.open_read(snapshot_key) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                # portage/CATEGORY/PACKAGE/Manifest: the package Manifests, which carry the DIST lines.
                parts = [part for part in PurePosixPath(member.name).parts if part != "."]
                if not member.isfile() or len(parts) != 4 or parts[-1] != "Manifest":
                    continue
                content = archive.extractfile(member)
                try:
                    lines = vouched_distfiles((content.read() if content else b"").decode(errors="replace"))
                except ManifestError as error:
                    raise StoreError(f"{snapshot_key}: {member.name}: {error}") from None
                found.update({name: line for name, line in lines.items() if name in wanted})
    except (tarfile.TarError, EOFError, OSError) as error:
        raise StoreError(f"{snapshot_key} is not a readable Portage snapshot: {error}") from error
    return found


# -- push back -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistfileCandidate:
    """A new distfile on the worker and the Manifest ``DIST`` line the build says vouches for it."""

    file: str
    """Absolute path on the worker."""
    size: int
    sha512: str
    blake2b: str = ""

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> DistfileCandidate:
        size, sha512 = raw["size"], raw["sha512"]
        if not isinstance(size, int) or not isinstance(sha512, str) or len(sha512) != 128:
            raise TypeError(f"expected a size and a sha512, got {dict(raw)!r}")
        return cls(str(raw["file"]), size, sha512.lower(), str(raw.get("blake2b") or "").lower())


@dataclass(frozen=True)
class PushbackCandidates:
    """What ``farm-worker list-new`` found on the worker: files the store does not have yet."""

    packages_index: str
    """The worker's PKGDIR/Packages (absolute path on the worker)."""
    binpkgs: Mapping[str, str]
    """Binhost PATH -> absolute file on the worker."""
    distfiles: Mapping[str, DistfileCandidate]
    """Distfile name -> the file on the worker and its DIST line."""

    @classmethod
    def from_json(cls, data: bytes | str, where: str) -> PushbackCandidates:
        try:
            raw = json.loads(data)
            distfiles = {
                str(name): DistfileCandidate.from_json(entry) for name, entry in raw["distfiles"].items()
            }
            return cls(str(raw["packages_index"]), dict(raw["binpkgs"]), distfiles)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise StoreError(f"{where} is not a list-new result: {error}") from error


def distfile_key(name: str) -> str:
    """``distfiles/<name>`` for a distfile name; the mirror's own ``layout.conf`` is no distfile."""
    if "/" in name or name == LAYOUT_CONF_KEY.rsplit("/", 1)[1]:
        raise StoreError(f"{name!r} is not a distfile name")
    return check_key(f"distfiles/{name}")


def pushback_uploads(
    store: ArtifactStore,
    token: str,
    candidates: PushbackCandidates,
    expires_in: int,
    snapshot_key: str | None = None,
) -> dict[str, str]:
    """Signed URLs for one build's push back, as ``farm-worker upload`` reads them ({worker file: URL}).

    Every URL points under the build's staging prefix. A distfile gets one only when the mirror lacks its
    name, whatever the worker says, and the build's snapshot (``snapshot_key``, the published Portage set
    it was made from) has a DIST line for it equal to the worker's; the URL is bound to that size, and the
    lines signed for are kept in staging for :func:`merge_distfiles`. Without a snapshot no distfile goes.
    """
    staging = staging_prefix(token)
    uploads: dict[str, str] = {}
    if candidates.binpkgs:
        uploads[candidates.packages_index] = store.upload_url(staging + STAGED_INDEX, expires_in)
    for path, file in candidates.binpkgs.items():
        uploads[file] = store.upload_url(staging + "binpkgs/" + check_key(path), expires_in)
    new = [name for name in candidates.distfiles if not store.exists(distfile_key(name))]
    lines = snapshot_dist_lines(store, snapshot_key, new) if snapshot_key else {}
    vouched: dict[str, object] = {}
    for name in new:
        candidate = candidates.distfiles[name]
        claimed = {"size": candidate.size, "sha512": candidate.sha512, "blake2b": candidate.blake2b}
        if lines.get(name) != claimed:
            continue
        uploads[candidate.file] = store.upload_url(
            staging + STAGED_DISTFILES + name, expires_in, size=candidate.size
        )
        vouched[name] = claimed
    if vouched:
        store.put_bytes(staging + VOUCHED_DISTFILES, json.dumps(vouched, sort_keys=True).encode())
    return uploads


@dataclass
class MergeResult:
    """What merging one build's push-back did, by package path (binhost) or distfile name (mirror)."""

    added: list[str] = field(default_factory=list)
    """Now in the binhost index or the mirror thanks to this push."""
    already_there: list[str] = field(default_factory=list)
    """Another build had pushed them first: the store's copy stays, ours was dropped."""
    missing: list[str] = field(default_factory=list)
    """Vouched for (a staged index entry, a signed URL) but never uploaded: not added."""
    lock_lost: str | None = None
    """Why the merge's lock (named) was no longer its own by the end, if it was not (binhost merges)."""


@dataclass
class DistfileMergeResult(MergeResult):
    """The mirror's merge, which also checks each upload against the DIST line it was signed for."""

    rejected: list[str] = field(default_factory=list)
    """Why an upload did not match the DIST line vouching for it (it was dropped)."""


def _check_against_dist_line(store: ArtifactStore, key: str, name: str, line: Mapping[str, object]) -> None:
    info = store.head(key)
    if info is None:
        raise ObjectNotFound(key)
    if info.size != line["size"]:
        raise StoreError(f"{name}: {info.size} bytes uploaded, its DIST line says {line['size']}")
    digests: dict[str, Digest] = {"SHA512": hashlib.sha512()}
    if line.get("blake2b"):
        digests["BLAKE2B"] = hashlib.blake2b()
    with store.open_read(key) as stream:
        feed(stream, *digests.values())
    for algorithm, digest in digests.items():
        if digest.hexdigest() != line[algorithm.lower()]:
            raise StoreError(f"{name}: {algorithm} does not match its DIST line")


def merge_distfiles(store: ArtifactStore, token: str, lock_timeout: float = 300) -> DistfileMergeResult:
    """Move one build's staged distfiles into the mirror: each only if it matches the DIST line the
    master signed its URL for, and only under a name the mirror does not have (never replacing a file)."""
    staging = staging_prefix(token)
    result = DistfileMergeResult()
    try:
        vouched = json.loads(store.get_bytes(staging + VOUCHED_DISTFILES))
    except ObjectNotFound:
        return result
    with store_lock(store, "distfiles", timeout=lock_timeout):
        for name, line in sorted(vouched.items()):
            staged_key = staging + STAGED_DISTFILES + name
            if store.exists(distfile_key(name)):
                result.already_there.append(name)
                continue
            try:
                _check_against_dist_line(store, staged_key, name, line)
            except ObjectNotFound:
                result.missing.append(name)
                continue
            except StoreError as mismatch:
                result.rejected.append(str(mismatch))
                continue
            store.copy(staged_key, distfile_key(name))
            result.added.append(name)
        if result.added:
            with suppress(PreconditionFailed):
                store.put_bytes(LAYOUT_CONF_KEY, LAYOUT_CONF, if_absent=True)
    store.delete([staging + VOUCHED_DISTFILES, *(staging + STAGED_DISTFILES + name for name in vouched)])
    return result


# Checksum fields a Packages entry may carry, as hashlib names them.
ENTRY_DIGESTS = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512", "BLAKE2B": "blake2b"}


def _entry_digests(path: Path, entry: Mapping[str, str]) -> dict[str, str]:
    """The checksums of ``path`` for every checksum field ``entry`` has (MD5 and SHA1 at least)."""
    names = [name for name in ENTRY_DIGESTS if entry.get(name)] or ["MD5", "SHA1"]
    digests = {name: hashlib.new(ENTRY_DIGESTS[name]) for name in names}
    with path.open("rb") as stream:
        feed(stream, *digests.values())
    return {name: digest.hexdigest() for name, digest in digests.items()}


def _signed_copy(
    store: ArtifactStore,
    staged_key: str,
    final_key: str,
    entry: Mapping[str, str],
    key: FarmKey,
    progress: Callable[[str], None],
) -> dict[str, str]:
    """Check a staged package against the entry the build reported, sign it with the farm key and put it
    at ``final_key``; the entry as it is now (size and checksums of the signed file).

    The put is create-only (:meth:`~.base.ArtifactStore.put_file_new`): when another merge has put a file
    at ``final_key`` meanwhile (it held the lock after ours was lost), PreconditionFailed, and that merge's
    file stays with the index entry that merge writes."""
    if not final_key.endswith(".gpkg.tar"):
        raise StoreError(f"{staged_key}: not a gpkg binary package; the farm signs only gpkg (BINPKG_FORMAT)")
    with tempfile.TemporaryDirectory(prefix="farm-binpkg-") as scratch:
        package = Path(scratch) / PurePosixPath(final_key).name
        with store.open_read(staged_key) as stream, package.open("wb") as out:
            shutil.copyfileobj(stream, out)
        size = package.stat().st_size
        if entry.get("SIZE") and int(entry["SIZE"]) != size:
            raise StoreError(f"{staged_key}: {size} bytes in the store, the index entry says {entry['SIZE']}")
        for name, value in _entry_digests(package, entry).items():
            if entry.get(name) and value != entry[name].lower():
                raise StoreError(f"{staged_key}: {name} does not match its Packages entry (corrupt upload)")
        try:
            key.sign_gpkg(package)
        except SigningError as error:
            raise StoreError(f"{staged_key}: {error}") from error
        upload = ProgressReport(TransferMeter(f"uploading {final_key}", package.stat().st_size), progress)
        store.put_file_new(final_key, package, upload)
        upload.finish()
        return {**entry, "SIZE": str(package.stat().st_size), **_entry_digests(package, entry)}


def merge_pushback(
    store: ArtifactStore,
    profile: str,
    token: str,
    key: FarmKey,
    lock_timeout: float = 300,
    progress: Callable[[str], None] = lambda message: None,
    lock_lease: float = 600,
) -> MergeResult:
    """Sign one build's staged packages into the binhost and merge their index entries (see module doc).
    ``progress`` gets how each signed package's upload goes (a line every REPORT_SECONDS and at its end)."""
    staging = staging_prefix(token)
    result = MergeResult()
    try:
        staged_index = parse_index(store.get_bytes(staging + STAGED_INDEX), staging + STAGED_INDEX)
    except ObjectNotFound:
        return result
    prefix = binhost_prefix(profile)
    lock = "binhost-" + profile.strip("/").replace("/", "_")
    with store_lock(store, lock, timeout=lock_timeout, lease=lock_lease) as lease:
        try:
            current = store.get_bytes(index_key(profile))
        except ObjectNotFound:
            current = None
        present = {entry_path(entry) for entry in parse_index(current, index_key(profile)).packages}
        signed: list[dict[str, str]] = []
        for entry in staged_index.packages:
            path = entry_path(entry)
            staged_key = staging + "binpkgs/" + path
            if path in present:
                result.already_there.append(path)
                continue
            try:
                signed.append(_signed_copy(store, staged_key, prefix + path, entry, key, progress))
            except ObjectNotFound:
                result.missing.append(path)
                continue
            except PreconditionFailed:
                # Another merge put this PATH meanwhile: its file goes with its own index entry, not ours.
                progress(f"{prefix + path} was written by another merge meanwhile: dropped this build's copy")
                result.already_there.append(path)
                continue
            present.add(path)
        if signed:
            result.added, raced = _index_entries(store, profile, staged_index.header, signed)
            result.already_there.extend(raced)
        result.lock_lost = lease.confirm()
        if result.lock_lost:
            # Nothing was overwritten (package files are created only if absent, the index is changed by
            # compare and swap), but another master worked under the same lock meanwhile.
            progress(f"{result.lock_lost}; package files were written only where absent, the index merged")
    store.delete([info.key for info in store.list(staging)])
    return result


def _index_entries(
    store: ArtifactStore, profile: str, header: Mapping[str, str], entries: list[dict[str, str]]
) -> tuple[list[str], list[str]]:
    """Add ``entries`` to the binhost's Packages with the store's compare-and-swap (:meth:`~.base.
    ArtifactStore.update`): should another master have written the index since this merge read it (its
    lease on the binhost lock ran out while it was paused, say), the entries are merged again into what that
    master wrote, never over it. Returns the paths added and those another merge had indexed meanwhile."""
    outcome: tuple[list[str], list[str]] = ([], [])

    def add(current: bytes | None) -> bytes | None:
        nonlocal outcome
        index = parse_index(current, index_key(profile))
        if current is None:
            index.header.update(header)
        present = {entry_path(entry) for entry in index.packages}
        added = [entry for entry in entries if entry_path(entry) not in present]
        outcome = ([entry_path(entry) for entry in added], [entry_path(e) for e in entries if e not in added])
        if not added:
            return None
        index.packages.extend(added)
        return render_index(index)

    store.update(index_key(profile), add)
    return outcome
