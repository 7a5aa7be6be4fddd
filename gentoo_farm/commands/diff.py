"""Show what changed between two published images: packages added, removed, upgraded, and the kernel."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from portage.versions import catpkgsplit, vercmp

from gentoo_farm.catalog import find_image, read_package_manifest
from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.store import ArtifactStore, StoreError, open_store
from gentoo_farm.store.sets import PublishedSet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="the older image: name, set id or latest")
    parser.add_argument("new", nargs="?", default="latest", help="the newer image (default: latest)")


@dataclass
class ImageDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)
    """(package, old version, new version), upgrades and downgrades alike."""
    kernel: tuple[str, str] | None = None

    def lines(self) -> list[str]:
        lines = []
        if self.kernel:
            old, new = self.kernel
            lines.append(f"kernel: {old} -> {new}")
        for package, old, new in self.changed:
            direction = "upgraded" if vercmp(new, old) > 0 else "downgraded"
            lines.append(f"{direction}: {package} {old} -> {new}")
        lines += [f"added: {cpv}" for cpv in self.added]
        lines += [f"removed: {cpv}" for cpv in self.removed]
        return lines


def _by_package(packages: Sequence[Mapping[str, object]]) -> dict[tuple[str, str], tuple[str, str]]:
    """{(category/package, slot): (version, cpv)} of a manifest's package list."""
    found = {}
    for package in packages:
        cpv = str(package["cpv"])
        split = catpkgsplit(cpv)
        if split is None:
            raise CommandError(f"the package manifest lists {cpv!r}, which is not category/package-version")
        category, name, version, revision = split
        full_version = version if revision == "r0" else f"{version}-{revision}"
        found[(f"{category}/{name}", str(package.get("slot", "")))] = (full_version, cpv)
    return found


def diff_manifests(old: Mapping[str, Any], new: Mapping[str, Any]) -> ImageDiff:
    """Compare two image manifests (parsed JSON)."""
    before = _by_package(old["packages"])
    after = _by_package(new["packages"])
    result = ImageDiff()
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            result.removed.append(before[key][1])
        elif key not in before:
            result.added.append(after[key][1])
        elif before[key][0] != after[key][0]:
            result.changed.append((key[0], before[key][0], after[key][0]))
    old_kernel = str(old.get("kernel", {}).get("release", ""))
    new_kernel = str(new.get("kernel", {}).get("release", ""))
    if old_kernel != new_kernel:
        result.kernel = (old_kernel or "-", new_kernel or "-")
    return result


def _manifest(store: ArtifactStore, name: str) -> tuple[str, dict[str, object]]:
    record = find_image(store, name)
    if record is None:
        raise CommandError(f"no published image called {name!r} in {store.location} (see `farm images`)")
    return record.name, read_package_manifest(store, PublishedSet.from_json(record.manifest, record.key))


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    try:
        store = open_store(config.store)
        old_name, old = _manifest(store, args.old)
        new_name, new = _manifest(store, args.new)
    except StoreError as error:
        raise CommandError(str(error)) from error
    print(f"--- {old_name}\n+++ {new_name}")
    lines = diff_manifests(old, new).lines()
    print("\n".join(lines) if lines else "no package or kernel changed")
    return 0
