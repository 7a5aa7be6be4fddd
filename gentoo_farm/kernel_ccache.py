"""The kernel compiler cache the farm keeps for workers that start empty (``[kernel] shared_ccache``).

Local workers keep their ccache between builds; an OpenStack worker starts empty and would compile the
kernel cold. So a kernel build that had ccache misses packs its ccache into a content-addressed tarball,
``caches/kernel-ccache/<arch>/<sha256>.tar.zst``, uploaded through a create-only signed URL, and the
master moves ``caches/kernel-ccache/<arch>/latest.json`` to it, forward only (a later build number wins),
and deletes the tarball that lost, so the store holds one kernel ccache per architecture.
The next build on an empty worker unpacks the tarball the pointer names into its ccache directory.
ccache only changes how fast the kernel compiles, never what it compiles to, so a missing or damaged
tarball only costs a cold build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from gentoo_farm.checksums import feed
from gentoo_farm.store.base import ArtifactStore, StoreError

PREFIX = "caches/kernel-ccache"


def tarball_key(arch: str, sha256: str) -> str:
    """Where the ccache tarball with this content lives."""
    return f"{PREFIX}/{arch}/{sha256}.tar.zst"


def pointer_key(arch: str) -> str:
    """The pointer to the newest ccache tarball of ``arch``; only the master writes it."""
    return f"{PREFIX}/{arch}/latest.json"


@dataclass(frozen=True)
class CcachePointer:
    key: str
    sha256: str
    size: int
    build: int
    """The number of the kernel build that packed it: the pointer only moves to a higher one."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> CcachePointer | None:
        """The pointer in ``data``, or None for anything else (a damaged pointer is as good as none)."""
        try:
            fields = json.loads(data)
            return cls(str(fields["key"]), str(fields["sha256"]), int(fields["size"]), int(fields["build"]))
        except (ValueError, TypeError, KeyError):
            return None


def read_pointer(store: ArtifactStore, arch: str) -> CcachePointer | None:
    current = store.read_versioned(pointer_key(arch))
    return CcachePointer.from_json(current[0]) if current is not None else None


def advance_pointer(store: ArtifactStore, arch: str, pointer: CcachePointer) -> bool:
    """Point ``arch``'s latest ccache at ``pointer`` unless the store already names a build as new or
    newer (two kernel builds finishing out of order must not hand later builds the older cache), then
    delete the tarball that lost: the one named before, or ``pointer``'s own. Each tarball is a whole
    kernel's ccache, so the store keeps only the one named (a build still downloading a deleted one
    compiles cold). Returns whether the pointer moved."""
    replaced: list[CcachePointer | None] = []

    def forward(current: bytes | None) -> bytes | None:
        named = CcachePointer.from_json(current) if current is not None else None
        replaced[:] = [named]
        if named is not None and named.build >= pointer.build:
            return None
        return pointer.to_json()

    moved = store.update(pointer_key(arch), forward)
    (named,) = replaced
    kept = pointer.key if moved else named.key if named is not None else None
    losers = {candidate.key for candidate in (named, pointer) if candidate is not None} - {kept}
    store.delete(sorted(losers))
    return moved


def verify_tarball(store: ArtifactStore, key: str, sha256: str, size: int) -> None:
    """Refuse (StoreError) an uploaded tarball whose bytes are not the ones its key and report name."""
    info = store.head(key)
    if info is None:
        raise StoreError(f"{store.location}: {key} was not uploaded")
    digest = hashlib.sha256()
    with store.open_read(key) as stream:
        feed(stream, digest)
    if info.size != size or digest.hexdigest() != sha256:
        raise StoreError(
            f"{store.location}: {key} has {info.size} bytes with sha256 {digest.hexdigest()[:16]}..., "
            f"not the {size} bytes with sha256 {sha256[:16]}... the worker packed"
        )
