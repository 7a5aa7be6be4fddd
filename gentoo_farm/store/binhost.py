"""The binhost and distfile mirror in the store, filled by builds ("push back").

A worker never writes the binhost directly. The master signs URLs for the new packages under a per-build
staging prefix (``incoming/<token>/``) plus one for the worker's ``Packages`` index; the worker PUTs them;
then :func:`merge_pushback` takes the binhost lock and, for each staged package whose PATH the binhost does
not have yet, verifies it against its index entry (SIZE, SHA1/MD5), signs it with the farm's key
(:mod:`gentoo_farm.signing`; workers emerge with ``verify-signature``) into ``binpkgs/<profile>/``, and
merges the entries into ``binpkgs/<profile>/Packages`` with Portage's own PackageIndex. Two builds
finishing at once both end up in the index; a package path two builds both made is taken from whichever
merged first, file and entry together. Distfiles are upstream files with fixed names and Manifest
checksums, so they go straight to
``distfiles/<name>`` (flat layout, announced by ``distfiles/layout.conf``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portage.getbinpkg import PackageIndex

from gentoo_farm.checksums import feed
from gentoo_farm.signing import FarmKey, SigningError
from gentoo_farm.store.base import (
    INCOMING,
    ArtifactStore,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    check_key,
)

LAYOUT_CONF_KEY = "distfiles/layout.conf"
LAYOUT_CONF = b"[structure]\n0=flat\n"
# Portage elides these from entries that equal the header; reading them back in keeps the merge exact.
INHERITED_KEYS = ["CHOST", "REPO"]
STAGED_INDEX = "Packages"


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


@contextmanager
def store_lock(store: ArtifactStore, name: str, timeout: float = 120, lease: float = 600) -> Iterator[None]:
    """Hold ``locks/<name>`` in the store: works across master processes and for both backends.

    The lock is a small object written only when absent; a holder that died is taken over once its lease
    has run out (a conditional write on the stale object's etag, so only one waiter wins).
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
    try:
        yield
    finally:
        try:
            if json.loads(store.get_bytes(key)).get("owner") == owner:
                store.delete([key])
        except (ObjectNotFound, ValueError):
            pass


# -- push back -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushbackCandidates:
    """What ``farm-worker list-new`` found on the worker: files the store does not have yet."""

    packages_index: str
    """The worker's PKGDIR/Packages (absolute path on the worker)."""
    binpkgs: Mapping[str, str]
    """Binhost PATH -> absolute file on the worker."""
    distfiles: Mapping[str, str]
    """Distfile name -> absolute file on the worker."""

    @classmethod
    def from_json(cls, data: bytes | str, where: str) -> PushbackCandidates:
        try:
            raw = json.loads(data)
            return cls(str(raw["packages_index"]), dict(raw["binpkgs"]), dict(raw["distfiles"]))
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{where} is not a list-new result: {error}") from error


def pushback_uploads(
    store: ArtifactStore, token: str, candidates: PushbackCandidates, expires_in: int
) -> dict[str, str]:
    """Signed URLs for one build's push back, as ``farm-worker upload`` reads them ({worker file: URL})."""
    staging = staging_prefix(token)
    uploads: dict[str, str] = {}
    if candidates.binpkgs:
        uploads[candidates.packages_index] = store.upload_url(staging + STAGED_INDEX, expires_in)
    for path, file in candidates.binpkgs.items():
        uploads[file] = store.upload_url(staging + "binpkgs/" + check_key(path), expires_in)
    for name, file in candidates.distfiles.items():
        if "/" in name:
            raise StoreError(f"distfile name {name!r} contains '/'")
        uploads[file] = store.upload_url(check_key(f"distfiles/{name}"), expires_in)
    if candidates.distfiles and not store.exists(LAYOUT_CONF_KEY):
        store.put_bytes(LAYOUT_CONF_KEY, LAYOUT_CONF)
    return uploads


@dataclass
class MergeResult:
    added: list[str] = field(default_factory=list)
    """Package paths now in the binhost index thanks to this push."""
    already_there: list[str] = field(default_factory=list)
    """Package paths another build had pushed first (ours was dropped)."""
    missing: list[str] = field(default_factory=list)
    """Index entries whose file never arrived in staging (not added)."""


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
    store: ArtifactStore, staged_key: str, final_key: str, entry: Mapping[str, str], key: FarmKey
) -> dict[str, str]:
    """Check a staged package against the entry the build reported, sign it with the farm key and put it
    at ``final_key``; the entry as it is now (size and checksums of the signed file)."""
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
        store.put_file(final_key, package)
        return {**entry, "SIZE": str(package.stat().st_size), **_entry_digests(package, entry)}


def merge_pushback(
    store: ArtifactStore, profile: str, token: str, key: FarmKey, lock_timeout: float = 300
) -> MergeResult:
    """Sign one build's staged packages into the binhost and merge their index entries (see module doc)."""
    staging = staging_prefix(token)
    result = MergeResult()
    try:
        staged_index = parse_index(store.get_bytes(staging + STAGED_INDEX), staging + STAGED_INDEX)
    except ObjectNotFound:
        return result
    prefix = binhost_prefix(profile)
    with store_lock(store, "binhost-" + profile.strip("/").replace("/", "_"), timeout=lock_timeout):
        try:
            current = store.get_bytes(index_key(profile))
        except ObjectNotFound:
            current = None
        index = parse_index(current, index_key(profile))
        if current is None:
            index.header.update(staged_index.header)
        present = {entry_path(entry) for entry in index.packages}
        for entry in staged_index.packages:
            path = entry_path(entry)
            staged_key = staging + "binpkgs/" + path
            if path in present:
                result.already_there.append(path)
                continue
            try:
                signed = _signed_copy(store, staged_key, prefix + path, entry, key)
            except ObjectNotFound:
                result.missing.append(path)
                continue
            index.packages.append(signed)
            present.add(path)
            result.added.append(path)
        if result.added:
            store.put_bytes(index_key(profile), render_index(index))
    store.delete([info.key for info in store.list(staging)])
    return result
