"""Apply the store's retention: keep [store] keep sets per artifact kind, [image.worker] keep worker images
(--dry-run lists what would go)."""

from __future__ import annotations

import argparse

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.store import StoreError, open_store
from gentoo_farm.store.sets import apply_retention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    parser.add_argument(
        "--keep", type=int, help="sets to keep of every kind (default: [store] keep, [image.worker] keep)"
    )


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    keep = args.keep if args.keep is not None else config.store.keep
    keep_by_kind = config.kept_sets_by_kind if args.keep is None else {}
    try:
        store = open_store(config.store)
        plan = apply_retention(store, keep, dry_run=args.dry_run, keep_by_kind=keep_by_kind)
    except StoreError as error:
        raise CommandError(str(error)) from error
    for kind, kept in plan.kept.items():
        if kept:
            print(f"{kind}: keeping {', '.join(kept)}")
    verb = "would delete" if args.dry_run else "deleted"
    for key in plan.doomed_keys:
        print(f"{verb} {key}")
    print(f"{verb} {len(plan.doomed_keys)} objects from {store.location}")
    return 0
