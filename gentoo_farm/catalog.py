"""What the farm has published, as people see it: ``farm images``, ``farm download``, the Images page."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gentoo_farm.artifacts import IMAGE_VARIANTS
from gentoo_farm.store import ArtifactStore, StoreError
from gentoo_farm.store.clouds import CloudImage, read_cloud_images
from gentoo_farm.store.sets import (
    PublishedFile,
    PublishedSet,
    digests_key,
    latest_set,
    list_sets,
    read_set,
    sha512_key,
)

IMAGES_KINDS = tuple(variant.images_kind for variant in IMAGE_VARIANTS.values())
"""The store kinds of the farm's images: the cloud image's first."""
DISK_SUFFIXES = (".qcow2", ".raw", ".img")
PACKAGE_MANIFEST_SUFFIX = ".manifest.json"
DEFAULT_URL_EXPIRY = 3600


@dataclass(frozen=True)
class ImageRecord:
    name: str
    """The image's name, e.g. ``gentoo-20261125-amd64`` (manifest ``name``, else the disk file's stem)."""
    date: str
    """When the set was published (UTC, ISO 8601)."""
    kernel: str
    """Kernel version the image boots (the manifest's ``kernel``), empty when unknown."""
    size: int
    sha512: str
    url: str
    """Download URL of the disk image; presigned (and short-lived) when the bucket is private."""
    sha512_url: str
    """Download URL of the disk image's ``.sha512`` (``sha512sum -c`` checks a download with it)."""
    key: str
    """The disk image's store key."""
    set_id: str
    latest: bool
    manifest: Mapping[str, Any] = field(default_factory=dict)
    """The set's manifest.json as published (files, metadata, sources, input key), as parsed JSON."""
    manifest_url: str = ""
    package_count: int | None = None
    """How many packages the image holds (its package manifest's length), None for older images."""
    package_manifest_url: str = ""
    """Download URL of the image's package manifest (``NAME.manifest.json``), empty for older images."""
    digests_url: str = ""
    """Download URL of the set's clear-signed DIGESTS, empty for a set published unsigned."""
    glance_images: Mapping[str, CloudImage] = field(default_factory=dict)
    """Each cloud's copy (``cloud`` or ``cloud/region``: image id, status), as the Glance step recorded it."""
    kind: str = "images"
    """The store kind of its set: ``images``, ``worker-images`` for the worker image."""


def disk_file(published: PublishedSet) -> PublishedFile | None:
    """The disk image of an image set: qcow2 first, then raw."""
    for suffix in DISK_SUFFIXES:
        for file in published.files:
            if file.name.endswith(suffix):
                return file
    return None


def package_manifest_file(published: PublishedSet) -> PublishedFile | None:
    for file in published.files:
        if file.name.endswith(PACKAGE_MANIFEST_SUFFIX):
            return file
    return None


def read_package_manifest(store: ArtifactStore, published: PublishedSet) -> dict[str, object]:
    """The image's package manifest (what the image-manifest stage wrote); StoreError when it has none."""
    file = package_manifest_file(published)
    if file is None:
        raise StoreError(f"image set {published.set_id} has no package manifest (published before they were)")
    try:
        manifest = json.loads(store.get_bytes(file.key))
    except ValueError as error:
        raise StoreError(f"{file.key} is not JSON: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("packages"), list):
        raise StoreError(f"{file.key} is not a package manifest (no package list)")
    return manifest


StoreLink = Callable[[str], str]
"""How a record links a store key (the page's own redirect, say); the default is the store's download URL."""


def image_record(
    store: ArtifactStore,
    published: PublishedSet,
    latest_id: str | None,
    url_expiry: int = DEFAULT_URL_EXPIRY,
    link: StoreLink | None = None,
) -> ImageRecord | None:
    disk = disk_file(published)
    if disk is None:
        return None
    url = link or (lambda key: store.download_url(key, url_expiry))
    stem = disk.name.rsplit(".", 1)[0]
    package_manifest = package_manifest_file(published)
    return ImageRecord(
        name=str(published.metadata.get("name") or stem),
        date=published.published_at,
        kernel=str(published.metadata.get("kernel") or ""),
        size=disk.size,
        sha512=disk.sha512,
        url=url(disk.key),
        sha512_url=url(sha512_key(disk.key)),
        key=disk.key,
        set_id=published.set_id,
        latest=published.set_id == latest_id,
        manifest=published.to_json(),
        manifest_url=url(published.manifest_key),
        package_count=_package_count(published.metadata.get("package_count")),
        package_manifest_url=url(package_manifest.key) if package_manifest else "",
        digests_url=url(digests_key(published.kind, published.set_id)) if published.signed else "",
        glance_images=read_cloud_images(store, published.set_id, published.kind),
        kind=published.kind,
    )


def _package_count(value: object) -> int | None:
    return value if isinstance(value, int) else None


def published_images(
    store: ArtifactStore,
    url_expiry: int = DEFAULT_URL_EXPIRY,
    link: StoreLink | None = None,
    kind: str = "images",
) -> list[ImageRecord]:
    """Every complete published image set of ``kind``, newest first. Blocking: call it from a thread in
    the master."""
    latest = latest_set(store, kind)
    latest_id = latest.set_id if latest else None
    sets = list_sets(store, kind)
    records = (image_record(store, published, latest_id, url_expiry, link) for published in sets)
    return [record for record in records if record is not None]


def image_by_set_id(
    store: ArtifactStore, set_id: str, url_expiry: int = DEFAULT_URL_EXPIRY, kind: str = "images"
) -> ImageRecord | None:
    """The image set ``set_id`` of ``kind`` (``worker-images`` for the worker image), read by its id: one
    manifest, not every published set (nor their URLs)."""
    published = read_set(store, kind, set_id)
    if published is None:
        return None
    latest = latest_set(store, kind)
    return image_record(store, published, latest.set_id if latest else None, url_expiry)


def find_image(store: ArtifactStore, name: str, url_expiry: int = DEFAULT_URL_EXPIRY) -> ImageRecord | None:
    """``latest`` (the newest cloud image), an image name or a set id, of any image variant; the newest
    match wins."""
    if name == "latest":
        latest = latest_set(store, "images")
        return image_record(store, latest, latest.set_id, url_expiry) if latest else None
    for kind in IMAGES_KINDS:
        by_id = image_by_set_id(store, name, url_expiry, kind)
        if by_id is not None:
            return by_id
    for kind in IMAGES_KINDS:
        for record in published_images(store, url_expiry, kind=kind):
            if name in (record.name, record.set_id):
                return record
    return None
