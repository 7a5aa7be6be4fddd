"""List the images the farm has published: name, date, kernel, size, sha512 and download URL, and under
each image its copy in each cloud (image id, status), as Nodepool's image list does."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from gentoo_farm.catalog import ImageRecord, published_images
from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.store import StoreError, open_store
from gentoo_farm.store.clouds import ACTIVE
from gentoo_farm.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (one object per image) for scripts")


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
    try:
        store = open_store(config.store)
        records = published_images(store, config.store.url_expiry_seconds)
    except StoreError as error:
        raise CommandError(str(error)) from error
    if args.json:
        print(json.dumps([asdict(record) for record in records], indent=2, default=str))
    elif records:
        print(table(records))
    else:
        print(f"no images published yet in {store.location}")
    return 0
