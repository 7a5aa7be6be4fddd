"""Where each image set went in the clouds: ``images/<set id>/glance.json``, Nodepool's image list per set.

Glance publishing comes after the store publish (an image is in the store before any cloud has it), so
what each cloud did with a set cannot be in its manifest, which is final and may be signed. The master's
Glance step records it beside the manifest instead, one entry per cloud (``cloud`` or ``cloud/region``),
after each publish; rotation there later marks the entries of the images it deleted. Retention deletes
the record with its set.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
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


def cloud_images_key(set_id: str) -> str:
    return f"images/{set_id}/{GLANCE}"


def read_cloud_images(store: ArtifactStore, set_id: str) -> dict[str, CloudImage]:
    """The set's entries by cloud; none for a set no Glance step has recorded."""
    key = cloud_images_key(set_id)
    try:
        data = json.loads(store.get_bytes(key))
        return {cloud: CloudImage(**entry) for cloud, entry in data.items()}
    except ObjectNotFound:
        return {}
    except (ValueError, TypeError, AttributeError) as error:
        raise StoreError(f"{key} in {store.location} is not a record of Glance images: {error}") from error


def _write(store: ArtifactStore, set_id: str, entries: Mapping[str, CloudImage]) -> None:
    data = {cloud: asdict(entry) for cloud, entry in sorted(entries.items())}
    store.put_bytes(cloud_images_key(set_id), json.dumps(data, indent=2).encode())


def record_cloud_images(store: ArtifactStore, set_id: str, outcomes: Mapping[str, CloudImage]) -> None:
    """Merge one Glance step's outcomes into the set's record.

    A failed attempt does not replace an image that is there: a rebuild that cannot reach a cloud leaves
    the image an earlier build published in it as it was.
    """
    entries = read_cloud_images(store, set_id)
    for cloud, outcome in outcomes.items():
        earlier = entries.get(cloud)
        if outcome.image_id or earlier is None or earlier.status != ACTIVE:
            entries[cloud] = outcome
    _write(store, set_id, entries)


def record_rotated(store: ArtifactStore, cloud: str, image_ids: Collection[str]) -> None:
    """Mark the entries of images that rotation deleted from ``cloud`` (whichever sets they belong to)."""
    if not image_ids:
        return
    for published in list_sets(store, "images"):
        entries = read_cloud_images(store, published.set_id)
        entry = entries.get(cloud)
        if entry is not None and entry.image_id in image_ids and entry.status != DELETED:
            entries[cloud] = CloudImage(entry.image_id, DELETED, now(), "rotated out by a newer image")
            _write(store, published.set_id, entries)
