"""Published sets: dated objects + ``.sha512`` + manifest.json, and ``latest`` pointers written last.

A set of kind K lives under ``K/<set id>/``; the set id is ``<UTC timestamp>-<input key prefix>``, so keys
carry the date and the hash of what went in. Publishing order is what makes it crash-safe:

1. every object (and its ``.sha512``) is uploaded,
2. each is verified by reading it back (size + sha512; size + ETag for objects past ``full_verify_bytes``),
   and, when the master signs, ``K/<set id>/DIGESTS`` is written: BLAKE2B and SHA512 of every object as
   read back, clear-signed with the farm key (Gentoo's DIGESTS format),
3. ``manifest.json`` is written (a set without it is incomplete and is never named by anything),
4. the pointers ``K/latest-K.txt`` (Gentoo style) and ``K/latest.json`` are replaced,
5. the set's artifact (manifest ``artifact``) is copied to its stable name at the top of ``K/``
   (``stage3/stage3-latest.tar.xz``, ``images/gentoo-latest-amd64.qcow2`` ...), then its ``.sha512``
   (and its own signed ``.DIGESTS``).

A crash anywhere before step 4 leaves the pointers on the previous complete set; the stable objects only
ever hold a complete, verified set's artifact.

Images are named here too (:func:`next_image_name`): ``gentoo-YYYYMMDD-ARCH``, then ``gentoo-YYYYMMDD.1-ARCH``
... the same day (:class:`~gentoo_farm.image_name.ImageName`); the name is the stem of every file of the set
and what Glance calls the image.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, BinaryIO, cast

from gentoo_farm.artifacts import ARTIFACT_KINDS, variant_of_kind
from gentoo_farm.checksums import digests_text, sha512_line, stream_digests, stream_sha512
from gentoo_farm.image_name import ImageName, ImageNameError
from gentoo_farm.store.base import (
    INCOMING,
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    StoreError,
)
from gentoo_farm.transfer import ReportingReader, TransferMeter

MANIFEST = "manifest.json"
DIGESTS = "DIGESTS"
GLANCE = "glance.json"
"""What each cloud did with an image set, written after the set is final (:mod:`.clouds`)."""
SIGNING_KEY = "farm-signing-key.asc"
ARTIFACT = "artifact"
"""The manifest metadata naming the set's main file: what downstream builds use and the stable copy holds."""
FULL_VERIFY_BYTES = 512 * 1024 * 1024
"""Objects up to this size are read back in full and hashed; bigger ones are checked by size and ETag."""

ABANDONED_AFTER = timedelta(days=1)
"""Uploads of a set without a manifest, or staged push-backs, untouched this long belong to a dead build."""

POINTER_ATTEMPTS = 20
"""Conditional pointer writes a publish tries before it gives up (each loss means another publish won)."""
STABLE_COPY_LOCK_TIMEOUT = 3600
"""How long a publish waits for another one of its kind to finish writing the stable copy (it copies and
reads back a whole artifact, an image of several GiB)."""

# Sets published before set ids had their random part end at the input key's digest.
_SET_ID = re.compile(r"\d{8}T\d{6}Z-(?P<digest>[0-9a-zA-Z]+)(-[0-9a-f]+)?")


@dataclass(frozen=True)
class PublishedFile:
    name: str
    key: str
    size: int
    sha512: str


@dataclass(frozen=True)
class PublishedSet:
    kind: str
    set_id: str
    input_key: str
    published_at: str
    files: tuple[PublishedFile, ...]
    metadata: Mapping[str, object] = field(default_factory=dict)
    """What the build says about the set (build id, kernel version, image name, ...)."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Sets this one was made from, ``{kind: set id}``; retention keeps them while this set is kept."""
    signed: bool = False
    """Whether the set has a clear-signed DIGESTS (:func:`digests_key`), written before this manifest."""

    @property
    def manifest_key(self) -> str:
        return f"{self.kind}/{self.set_id}/{MANIFEST}"

    def file(self, name: str) -> PublishedFile:
        for published in self.files:
            if published.name == name:
                return published
        raise KeyError(name)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "set_id": self.set_id,
            "input_key": self.input_key,
            "published_at": self.published_at,
            "files": [vars(published) for published in self.files],
            "metadata": dict(self.metadata),
            "sources": dict(self.sources),
            "signed": self.signed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> PublishedSet:
        try:
            return cls(
                kind=str(data["kind"]),
                set_id=str(data["set_id"]),
                input_key=str(data["input_key"]),
                published_at=str(data["published_at"]),
                files=tuple(PublishedFile(**entry) for entry in data["files"]),
                metadata=dict(data.get("metadata") or {}),
                sources=dict(data.get("sources") or {}),
                signed=bool(data.get("signed", False)),
            )
        except (KeyError, TypeError) as error:
            raise StoreError(f"{where} is not a valid set manifest: {error}") from error


@dataclass(frozen=True)
class ExpectedFile:
    """What the producer of an object says it is (the worker's report), checked against the store."""

    size: int
    sha512: str
    md5: str | None = None


def check_kind(kind: str) -> str:
    if kind not in ARTIFACT_KINDS:
        raise StoreError(f"unknown artifact kind {kind!r}: expected one of {', '.join(ARTIFACT_KINDS)}")
    return kind


def new_set_id(input_key: str, when: datetime | None = None) -> str:
    """``20261125T203100Z-1a2b3c4d5e6f-0a1b2c``: sortable by date, names what went in, and its own: two
    builds of one input in the same second (a forced rebuild on each of two workers) make two sets."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{_input_digest(input_key)}-{secrets.token_hex(3)}"


def _input_digest(input_key: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]", "", input_key)[:12] or "x"


def object_key(kind: str, set_id: str, name: str) -> str:
    if "/" in name or name.startswith(".") or name in (MANIFEST, DIGESTS, GLANCE):
        raise StoreError(f"invalid artifact file name {name!r}")
    return f"{check_kind(kind)}/{set_id}/{name}"


def pointer_keys(kind: str) -> tuple[str, str]:
    """The Gentoo-style text pointer and the JSON index of the latest set of ``kind``."""
    return f"{kind}/latest-{kind}.txt", f"{kind}/latest.json"


def next_image_name(
    store: ArtifactStore, arch: str, when: datetime | None = None, images_kind: str = "images"
) -> ImageName:
    """The name of the next image of ``arch`` published on ``when``'s UTC day (default: now), in the
    variant whose sets ``images_kind`` holds (``worker-images``: ``gentoo-farm-worker-...``).

    Taken are the names the files of every image set carry, complete or still uploading, so a build
    naming its image after another one uploaded does not take the same name.
    """
    taken = {
        _image_of_file(key.rsplit("/", 1)[1])
        for objects in _set_objects(store, images_kind).values()
        for key in objects
    }
    variant = variant_of_kind(check_kind(images_kind)).name_variant
    name = ImageName((when or datetime.now(UTC)).date(), arch, variant=variant)
    while name in taken:
        name = replace(name, serial=name.serial + 1)
    return name


def _image_of_file(file_name: str) -> ImageName | None:
    """The image a file of an image set belongs to; None for the set's other files (DIGESTS, glance.json)."""
    try:
        return ImageName.parse_file(file_name)[0]
    except ImageNameError:
        return None


def latest_name(kind: str, artifact: str) -> str:
    """The stable name the artifact file ``artifact`` of a ``kind`` set is copied to."""
    stable_name = ARTIFACT_KINDS[check_kind(kind)].latest_name
    if stable_name is not None:
        return stable_name
    try:
        image, file_format = ImageName.parse_file(artifact)
    except ImageNameError as error:
        raise StoreError(str(error)) from None
    if variant_of_kind(kind).name_variant != image.variant:
        raise StoreError(f"{artifact!r} is not named as an image of {kind}/")
    return f"{image.prefix}latest-{image.arch}.{file_format}"


def latest_key(kind: str, artifact: str) -> str:
    """``K/<stable name>``: at the top of the kind's prefix, beside the pointers, outside every set."""
    return f"{check_kind(kind)}/{latest_name(kind, artifact)}"


@contextmanager
def _reading_back(
    store: ArtifactStore, key: str, size: int, progress: Callable[[str], None]
) -> Iterator[BinaryIO]:
    """The object's bytes, saying how far the read is every REPORT_SECONDS: a large image takes minutes."""
    with store.open_read(key) as stream:
        # Reads as the file it wraps does, which is all the digest functions ask of it.
        yield cast(BinaryIO, ReportingReader(stream, TransferMeter(f"reading back {key}", size), progress))


def verify_object(
    store: ArtifactStore,
    key: str,
    expected: ExpectedFile,
    read_back: bool = True,
    progress: Callable[[str], None] = lambda message: None,
) -> None:
    """Read the object back and compare it with what its producer reported; StoreError names the mismatch.
    Without ``read_back`` only its presence and size are checked (the caller reads it itself)."""
    info = store.head(key)
    if info is None:
        raise StoreError(f"{key} is missing from {store.location} (the upload did not arrive)")
    if info.size != expected.size:
        raise StoreError(f"{key} in {store.location} has {info.size} bytes, expected {expected.size}")
    if not read_back:
        return
    etag = info.etag.strip('"')
    # A single-part upload's ETag is its MD5 on plain S3, which spares reading a large object back; with
    # SSE-KMS, or on some S3-compatible servers, it is not, and then only the sha512 decides.
    if info.size > FULL_VERIFY_BYTES and expected.md5 and ("-" in etag or etag == expected.md5):
        return
    with _reading_back(store, key, info.size, progress) as stream:
        actual = stream_sha512(stream)
    if actual != expected.sha512:
        raise StoreError(
            f"{key} in {store.location}: sha512 {actual[:16]}... != expected {expected.sha512[:16]}..."
        )


def publish_signing_key(store: ArtifactStore, armored: str) -> None:
    """Keep the farm key's public half at :data:`SIGNING_KEY`, where downloaders fetch it (they check
    its fingerprint against the one they were given: whoever can write the store can replace it)."""
    existing = store.head(SIGNING_KEY)
    if existing is None or store.get_bytes(SIGNING_KEY) != armored.encode():
        store.put_bytes(SIGNING_KEY, armored.encode())


def digests_key(kind: str, set_id: str) -> str:
    """The set's clear-signed DIGESTS (every file's BLAKE2B and SHA512)."""
    return f"{check_kind(kind)}/{set_id}/{DIGESTS}"


def stable_digests_key(stable_key: str) -> str:
    """The clear-signed DIGESTS of a stable ``*-latest`` object, beside it (Gentoo's ``NAME.DIGESTS``)."""
    return f"{stable_key}.{DIGESTS}"


def _signed_digests(
    store: ArtifactStore,
    kind: str,
    set_id: str,
    expected: Mapping[str, ExpectedFile],
    progress: Callable[[str], None],
) -> dict[str, tuple[str, str]]:
    """BLAKE2B and SHA512 of every object of the set as the store holds it; a sha512 that is not the
    expected one fails the publish (what is signed is what was verified)."""
    digests = {}
    for name, file in expected.items():
        key = object_key(kind, set_id, name)
        with _reading_back(store, key, file.size, progress) as stream:
            digests[name] = _, sha512 = stream_digests(stream)
        if sha512 != file.sha512:
            raise StoreError(
                f"{key} in {store.location}: sha512 {sha512[:16]}... != expected {file.sha512[:16]}..."
            )
    return digests


def sha512_key(key: str) -> str:
    """Where the ``.sha512`` of the object at ``key`` is published, beside it."""
    return key + ".sha512"


def _write_sha512_files(
    store: ArtifactStore, kind: str, set_id: str, expected: Mapping[str, ExpectedFile]
) -> None:
    for name, file in expected.items():
        store.put_bytes(sha512_key(object_key(kind, set_id, name)), sha512_line(file.sha512, name))


def finalize_set(
    store: ArtifactStore,
    kind: str,
    set_id: str,
    input_key: str,
    expected: Mapping[str, ExpectedFile],
    metadata: Mapping[str, object] | None = None,
    sources: Mapping[str, str] | None = None,
    progress: Callable[[str], None] = lambda message: None,
    sign: Callable[[str], str] | None = None,
) -> PublishedSet:
    """Verify objects already uploaded to ``kind/set_id/`` (by a worker, through signed URLs), then
    write their ``.sha512`` files, with ``sign`` (text → clear-signed text) the set's DIGESTS, the
    manifest, the latest pointers and, last, the stable copy of the artifact (``metadata["artifact"]``)."""
    check_kind(kind)
    if not expected:
        raise StoreError(f"nothing to publish for {kind} set {set_id}")
    artifact = str((metadata or {}).get(ARTIFACT, ""))
    if artifact and artifact not in expected:
        raise StoreError(f"{kind} set {set_id}: its artifact {artifact!r} is not among the files to publish")
    # Before anything is written: a name without a stable counterpart must not leave a half-done publish.
    stable_key = latest_key(kind, artifact) if artifact else None
    # Signing reads every object back whole for its digests, which checks the sha512 on the way.
    for name, file in expected.items():
        verify_object(store, object_key(kind, set_id, name), file, read_back=sign is None, progress=progress)
    digests = _signed_digests(store, kind, set_id, expected, progress) if sign is not None else {}
    for name, file in expected.items():
        progress(f"verified {object_key(kind, set_id, name)} ({file.size} bytes)")
    _write_sha512_files(store, kind, set_id, expected)
    for name, file in expected.items():
        sums_key = sha512_key(object_key(kind, set_id, name))
        if store.get_bytes(sums_key) != sha512_line(file.sha512, name):
            raise StoreError(f"{sums_key} in {store.location} does not read back as written")
    if sign is not None:
        store.put_bytes(digests_key(kind, set_id), sign(digests_text(digests)).encode())
        progress(f"signed {digests_key(kind, set_id)}")
    published = PublishedSet(
        kind=kind,
        set_id=set_id,
        input_key=input_key,
        published_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        files=tuple(
            PublishedFile(name, object_key(kind, set_id, name), file.size, file.sha512)
            for name, file in sorted(expected.items())
        ),
        metadata=dict(metadata or {}),
        sources=dict(sources or {}),
        signed=sign is not None,
    )
    manifest = json.dumps(published.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    store.put_bytes(published.manifest_key, manifest)
    if store.get_bytes(published.manifest_key) != manifest:
        raise StoreError(f"{published.manifest_key} in {store.location} does not read back as written")
    if not _write_pointers(store, published):
        progress(f"published {kind} set {set_id}; latest stays at a newer set")
        return published
    progress(f"published {kind} set {set_id}; latest now points at it")
    if stable_key:
        # Not at the top: binhost imports Portage, which a publish has no other use for.
        from gentoo_farm.store.binhost import store_lock

        # Two publishes of a kind may both have moved the pointer (the older first): the stable copy is
        # written under a lock, by a publish whose set the pointer still names, so an older copy never
        # lands over a newer one, nor a half-copied newer one fails the older one's verification.
        with store_lock(store, f"latest-{kind}", timeout=STABLE_COPY_LOCK_TIMEOUT):
            current = latest_set(store, kind)
            if current is None or current.set_id != set_id:
                progress(f"a newer {kind} set has moved latest since; it writes {stable_key}")
                return published
            _write_latest_copy(store, published.file(artifact), stable_key)
            progress(f"{stable_key} (+ .sha512) is now {set_id}'s {artifact}")
            if sign is not None:
                stable_name = stable_key.rsplit("/", 1)[1]
                signed = sign(digests_text({stable_name: digests[artifact]}))
                store.put_bytes(stable_digests_key(stable_key), signed.encode())
    return published


def _write_latest_copy(store: ArtifactStore, artifact: PublishedFile, key: str) -> None:
    """Copy the artifact to its stable key, verify the copy, then write its ``.sha512`` (under the stable
    name, so ``sha512sum -c`` checks what a person downloaded by that name)."""
    store.copy(artifact.key, key)
    verify_object(store, key, ExpectedFile(artifact.size, artifact.sha512))
    store.put_bytes(sha512_key(key), sha512_line(artifact.sha512, key.rsplit("/", 1)[1]))


def _write_pointers(store: ArtifactStore, published: PublishedSet) -> bool:
    """Move both ``latest`` pointers to ``published`` unless they name a newer set; whether they moved.

    Set ids sort by the time their build started, so a pointer only moves forward: each pointer is
    replaced with a conditional write on what was read (absent, or its etag), and a writer that loses the
    race reads again. Two publishes finishing at once leave both pointers (and the stable copies) at the
    newer set.
    """
    text_key, json_key = pointer_keys(published.kind)
    now = datetime.now(UTC)
    lines = [
        f"# Latest as of {now.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
        f"# ts={int(now.timestamp())}",
        *(f"{published.set_id}/{file.name} {file.size}" for file in published.files),
    ]
    # JSON first: the text pointer is what Gentoo-style readers look at, so it flips last.
    manifest = json.dumps(published.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    moved = _move_forward(store, json_key, published.set_id, manifest)
    _move_forward(store, text_key, published.set_id, ("\n".join(lines) + "\n").encode())
    return moved


def _pointer_set_id(data: bytes) -> str:
    """The set id a pointer names (JSON: its set_id; text: the directory of its first file line)."""
    text = data.decode(errors="replace")
    if text.lstrip().startswith("{"):
        return str(json.loads(text).get("set_id", ""))
    for line in text.splitlines():
        if line and not line.startswith("#"):
            return line.split("/", 1)[0]
    return ""


def _move_forward(store: ArtifactStore, key: str, set_id: str, data: bytes) -> bool:
    def forward(current: bytes | None) -> bytes | None:
        return data if current is None or _pointer_set_id(current) < set_id else None

    return store.update(key, forward, attempts=POINTER_ATTEMPTS)


def read_manifest(store: ArtifactStore, key: str) -> PublishedSet:
    try:
        return PublishedSet.from_json(json.loads(store.get_bytes(key)), key)
    except json.JSONDecodeError as error:
        raise StoreError(f"{key} in {store.location} is not valid JSON: {error}") from error


def latest_set(store: ArtifactStore, kind: str) -> PublishedSet | None:
    """The set the ``latest`` pointer names, or None before the first publish."""
    _, json_key = pointer_keys(check_kind(kind))
    try:
        return read_manifest(store, json_key)
    except ObjectNotFound:
        return None


def read_set(store: ArtifactStore, kind: str, set_id: str) -> PublishedSet | None:
    """The complete set ``set_id`` of ``kind``, read from its manifest alone (no listing of the store);
    None when there is no such set or it is still uploading."""
    if not _SET_ID.fullmatch(set_id):
        return None
    try:
        return read_manifest(store, f"{check_kind(kind)}/{set_id}/{MANIFEST}")
    except ObjectNotFound:
        return None


def _set_objects(store: ArtifactStore, kind: str) -> dict[str, dict[str, ObjectInfo]]:
    """Every set id under ``kind/`` with all its objects by key, complete or not."""
    sets: dict[str, dict[str, ObjectInfo]] = {}
    for info in store.list(f"{kind}/"):
        parts = info.key.split("/")
        if len(parts) == 3 and _SET_ID.fullmatch(parts[1]):
            sets.setdefault(parts[1], {})[info.key] = info
    return sets


def list_sets(store: ArtifactStore, kind: str) -> list[PublishedSet]:
    """Complete (manifest-bearing) sets of ``kind``, newest first."""
    found = []
    for set_id, keys in sorted(_set_objects(store, check_kind(kind)).items(), reverse=True):
        manifest_key = f"{kind}/{set_id}/{MANIFEST}"
        if manifest_key in keys:
            found.append(read_manifest(store, manifest_key))
    return found


def find_set(store: ArtifactStore, kind: str, input_key: str) -> PublishedSet | None:
    """The newest complete set made from ``input_key`` ("up to date" check), or None."""
    latest = latest_set(store, kind)
    if latest is not None and latest.input_key == input_key:
        return latest
    digest = _input_digest(input_key)
    for published in list_sets(store, kind):
        named = _SET_ID.fullmatch(published.set_id)
        if named and named["digest"] == digest and published.input_key == input_key:
            return published
    return None


@dataclass(frozen=True)
class RetentionPlan:
    kept: Mapping[str, tuple[str, ...]]
    """Set ids that stay, per kind."""
    doomed_keys: tuple[str, ...]
    """Every key that goes (whole sets, and leftovers of crashed publishes)."""


def plan_retention(
    store: ArtifactStore,
    keep: int,
    abandoned_after: timedelta = ABANDONED_AFTER,
    keep_by_kind: Mapping[str, int] = MappingProxyType({}),
) -> RetentionPlan:
    """Decide what :func:`apply_retention` deletes.

    Per kind the ``keep`` newest complete sets stay (``keep_by_kind``'s number for a kind it names), plus
    the set each pointer names and any complete set newer than it (its publish has not moved the pointer
    yet), plus every set a kept set lists in its ``sources`` (e.g. the kernel of a kept image). Sets
    without a manifest (a crashed publish) and staged push-back uploads go once nothing in them changed
    for ``abandoned_after``: until then they may belong to a build still uploading.
    """
    if keep < 1 or any(number < 1 for number in keep_by_kind.values()):
        raise StoreError(f"[store] keep must be at least 1, got {min(keep, *keep_by_kind.values())}")
    all_sets = {kind: _set_objects(store, kind) for kind in ARTIFACT_KINDS}
    complete = {
        kind: sorted((sid for sid, keys in sets.items() if f"{kind}/{sid}/{MANIFEST}" in keys), reverse=True)
        for kind, sets in all_sets.items()
    }
    kept = {kind: set(ids[: keep_by_kind.get(kind, keep)]) for kind, ids in complete.items()}
    for kind in ARTIFACT_KINDS:
        latest = latest_set(store, kind)
        if latest is not None:
            kept[kind].add(latest.set_id)
        # A complete set newer than the pointer is being published: its pointer write comes next.
        kept[kind].update(sid for sid in complete[kind] if latest is None or sid > latest.set_id)
    # Images reference kernels/overlays/stage3s...; follow references until nothing new is protected.
    pending = [(kind, sid) for kind, ids in kept.items() for sid in ids]
    while pending:
        kind, sid = pending.pop()
        for source_kind, source_id in read_manifest(store, f"{kind}/{sid}/{MANIFEST}").sources.items():
            if source_kind in kept and source_id not in kept[source_kind]:
                kept[source_kind].add(source_id)
                if (
                    source_id in all_sets[source_kind]
                    and f"{source_kind}/{source_id}/{MANIFEST}" in all_sets[source_kind][source_id]
                ):
                    pending.append((source_kind, source_id))
    abandoned = datetime.now(UTC) - abandoned_after
    doomed: list[str] = []
    for kind, sets in all_sets.items():
        for sid, objects in sets.items():
            if sid in kept[kind]:
                continue
            is_complete = f"{kind}/{sid}/{MANIFEST}" in objects
            if is_complete or max(info.modified for info in objects.values()) <= abandoned:
                doomed.extend(objects)
    doomed.extend(info.key for info in store.list(f"{INCOMING}/") if info.modified <= abandoned)
    return RetentionPlan(
        {kind: tuple(sorted(ids, reverse=True)) for kind, ids in kept.items()}, tuple(sorted(doomed))
    )


def apply_retention(
    store: ArtifactStore,
    keep: int,
    dry_run: bool = False,
    abandoned_after: timedelta = ABANDONED_AFTER,
    keep_by_kind: Mapping[str, int] = MappingProxyType({}),
) -> RetentionPlan:
    """Delete what :func:`plan_retention` says goes (nothing when ``dry_run``); returns the plan."""
    plan = plan_retention(store, keep, abandoned_after, keep_by_kind)
    if not dry_run and plan.doomed_keys:
        store.delete(list(plan.doomed_keys))
    return plan
