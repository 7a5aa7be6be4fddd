"""Where each image set went in the clouds: ``images/<set id>/glance.json``, Nodepool's image list per set.

Glance publishing comes after the store publish (an image is in the store before any cloud has it), so
what each cloud did with a set cannot be in its manifest, which is final and may be signed. The master's
Glance step records it beside the manifest instead, one entry per cloud (``cloud`` or ``cloud/region``),
after each publish; rotation there later marks the entries of the images it deleted. Retention deletes
the record with its set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from gentoo_farm.store.base import ArtifactStore, ObjectNotFound, StoreError
from gentoo_farm.store.sets import GLANCE, list_sets

ACTIVE, DELETED, UNREACHABLE, FAILED = "active", "deleted", "unreachable", "failed"


@dataclass(frozen=True)
class CloudImage:
    """One cloud's copy of an image set, as the master last saw it."""

    image_id: str
    """Glance's id of the image; empty when it never got there."""
    status: str
    """``active`` (published, Glance said active), ``deleted`` (rotated out since), ``unreachable`` or
    ``failed`` (not published; ``detail`` says why)."""
    updated_at: str
    """When the master wrote this entry (UTC, ISO 8601)."""
    detail: str = ""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cloud_images_key(set_id: str, kind: str = "images") -> str:
    return f"{kind}/{set_id}/{GLANCE}"


def read_cloud_images(store: ArtifactStore, set_id: str, kind: str = "images") -> dict[str, CloudImage]:
    """The set's entries by cloud; none for a set no Glance step has recorded."""
    try:
        return _parse(store.get_bytes(cloud_images_key(set_id, kind)), cloud_images_key(set_id, kind))
    except ObjectNotFound:
        return {}


def _parse(data: bytes | None, key: str) -> dict[str, CloudImage]:
    if data is None:
        return {}
    try:
        return {cloud: CloudImage(**entry) for cloud, entry in json.loads(data).items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise StoreError(f"{key} is not a record of Glance images: {error}") from error


def _update(
    store: ArtifactStore, set_id: str, change: Callable[[dict[str, CloudImage]], bool], kind: str
) -> None:
    """Read-modify-write the set's record with the store's compare-and-swap: a Glance step and a rotation
    (on another master, say) recording at once both keep what they wrote. ``change`` edits the entries in
    place and says whether it changed any."""
    key = cloud_images_key(set_id, kind)

    def edit(current: bytes | None) -> bytes | None:
        entries = _parse(current, key)
        if not change(entries):
            return None
        data = {cloud: asdict(entry) for cloud, entry in sorted(entries.items())}
        return json.dumps(data, indent=2).encode()

    store.update(key, edit)


def record_cloud_images(
    store: ArtifactStore, set_id: str, outcomes: Mapping[str, CloudImage], kind: str = "images"
) -> None:
    """Merge one Glance step's outcomes into the set's record.

    A failed attempt does not replace an image that is there: a rebuild that cannot reach a cloud leaves
    the image an earlier build published in it as it was.
    """

    def merge(entries: dict[str, CloudImage]) -> bool:
        for cloud, outcome in outcomes.items():
            earlier = entries.get(cloud)
            if outcome.image_id or earlier is None or earlier.status != ACTIVE:
                entries[cloud] = outcome
        return True

    _update(store, set_id, merge, kind)


def record_rotated(
    store: ArtifactStore, cloud: str, image_ids: Collection[str], kind: str = "images"
) -> None:
    """Mark the entries of ``kind``'s images that rotation deleted from ``cloud`` (whichever sets they
    belong to: rotation keeps each variant's images apart)."""
    if not image_ids:
        return

    def mark(entries: dict[str, CloudImage]) -> bool:
        entry = entries.get(cloud)
        if entry is None or entry.image_id not in image_ids or entry.status == DELETED:
            return False
        entries[cloud] = CloudImage(entry.image_id, DELETED, now(), "rotated out by a newer image")
        return True

    for published in list_sets(store, kind):
        if cloud in read_cloud_images(store, published.set_id, kind):
            _update(store, published.set_id, mark, kind)
