"""List the images the farm has published: name, date, kernel, size, sha512 and download URL, and under
each image its copy in each cloud (image id, status), as Nodepool's image list does; `upload` publishes one
to Glance.

``farm images upload NAME`` puts an image the store holds into the [[glance]] clouds (all, or those named
with ``--cloud``), as a build's Glance step does: the way to a new cloud's first worker image, or to an
image a cloud missed while it was down. The clouds' library is imported only for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from gentoo_farm.catalog import IMAGES_KINDS, ImageRecord, find_image, published_images
from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.store import StoreError, open_store
from gentoo_farm.store.clouds import ACTIVE
from gentoo_farm.units import human_size

CLOUD_HELP = "only this [[glance]] target (its cloud, or cloud/region); repeat for more (default: all)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (one object per image) for scripts")
    actions = parser.add_subparsers(dest="images_action", metavar="ACTION")
    upload = actions.add_parser("upload", help="publish an image the store holds to the Glance targets")
    upload.add_argument("name", help="image name (a worker image's too) or set id, or latest")
    upload.add_argument("--cloud", action="append", default=[], metavar="CLOUD", help=CLOUD_HELP)


def table(records: list[ImageRecord]) -> str:
    rows = [("NAME", "DATE", "KERNEL", "SIZE", "SHA512", "URL")]
    for record in records:
        rows.append(
            (
                record.name + (" (latest)" if record.latest else ""),
                record.date,
                record.kernel or "-",
                human_size(record.size),
                record.sha512[:16] + "...",
                record.url,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
        if index:
            lines.extend(glance_lines(records[index - 1]))
    return "\n".join(lines)


def glance_lines(record: ImageRecord) -> list[str]:
    """``  glance CLOUD  IMAGE-ID  STATUS``, one line per cloud, indented under the image."""
    clouds = sorted(record.glance_images.items())
    width = max((len(cloud) for cloud, _ in clouds), default=0)
    return [
        f"  glance {cloud.ljust(width)}  {image.image_id or '-':36}  {image.status}"
        + (f" ({image.detail})" if image.status != ACTIVE and image.detail else "")
        for cloud, image in clouds
    ]


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    if args.images_action == "upload":
        return upload(config, args.name, args.cloud)
    try:
        store = open_store(config.store)
        records = [
            record
            for kind in IMAGES_KINDS
            for record in published_images(store, config.store.url_expiry_seconds, kind=kind)
        ]
    except StoreError as error:
        raise CommandError(str(error)) from error
    if args.json:
        print(json.dumps([asdict(record) for record in records], indent=2, default=str))
    elif records:
        print(table(records))
    else:
        print(f"no images published yet in {store.location}")
    return 0


def upload(config: FarmConfig, name: str, clouds: list[str]) -> int:
    from gentoo_farm.glance import publish_to_target, record_outcomes, target_place, upload_from_record
    from gentoo_farm.signing import farm_fingerprint

    targets = [
        target for target in config.glance if not clouds or {target.cloud, target_place(target)} & set(clouds)
    ]
    if not targets:
        configured = ", ".join(target_place(target) for target in config.glance) or "none"
        wanted = f"named {', '.join(clouds)}" if clouds else "at all"
        raise CommandError(f"farm.toml has no [[glance]] target {wanted} (configured: {configured})")
    expiry = config.store.url_expiry_seconds
    try:
        store = open_store(config.store)
        record = find_image(store, name, expiry)
    except StoreError as error:
        raise CommandError(str(error)) from error
    if record is None:
        raise CommandError(f"no published image named {name!r} in {store.location}; `farm images` lists them")
    image = upload_from_record(
        store, record, config.farm.id, expiry, farm_fingerprint(FarmDir(config.basedir))
    )
    outcomes = []
    for target in targets:
        place = target_place(target)
        print(f"{place}: publishing {record.name} ({human_size(record.size)})", flush=True)
        outcome = publish_to_target(image, target, progress=lambda message: print(f"  {message}", flush=True))
        outcomes.append(outcome)
        print(outcome.result.summary() if outcome.result else outcome.record.detail, flush=True)
    try:
        record_outcomes(store, record.set_id, record.kind, outcomes)
    except StoreError as error:
        print(f"the clouds have it, but the store's record of them was not written: {error}", file=sys.stderr)
    failed = [outcome.place for outcome in outcomes if outcome.result is None]
    if failed:
        print(f"not published to {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
