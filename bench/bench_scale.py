"""How the farm's costs grow with what it accumulates: each at two sizes, the second ten times the first.

- binhost merge: one build's push back (``--new-packages`` real gpkg files, signed with a real farm key)
  merged by :func:`~gentoo_farm.store.binhost.merge_pushback` into a binhost whose ``Packages`` index
  already lists 500, then 5,000 packages; beside it the index's own read and write, the part that grows;
- retention: :func:`~gentoo_farm.store.sets.apply_retention` on a store of 100, then 1,000 published
  image sets, in the steady state of a farm that keeps that many (one set more was just published, so
  one goes);
- ``farm images`` (the command's own ``run``, output discarded) on the same stores;
- the Images page, the Flask app of the web UI served on 127.0.0.1 as the tests serve it, with 50, then
  500 images: time to the first byte of its HTTP response (the app renders the whole page first).

Everything runs against a local store in a temporary directory, filled with synthetic but real-format
data: a Packages index written by Portage's PackageIndex, image sets published through ``finalize_set``
with a package manifest, a ``glance.json`` record and the latest pointers. Each time is the median of
``--rounds``; the ratio of the ten-times size to the small one should stay at or under 12 (linear, with a
little noise).

From the repository root:

    .venv/bin/python bench/bench_scale.py [--rounds N] [--new-packages N]
"""

import argparse
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

# A build host has no "portage" user or group; without these Portage warns about it at every import.
os.environ.setdefault("PORTAGE_USERNAME", "root")
os.environ.setdefault("PORTAGE_GRPNAME", "root")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import portage
from portage.getbinpkg import PackageIndex
from portage.gpkg import gpkg
from werkzeug.serving import make_server

from gentoo_farm.commands import images as images_command
from gentoo_farm.config import FarmConfig, FarmSection, StoreSection
from gentoo_farm.image_name import ImageName
from gentoo_farm.master.images_page import images_app
from gentoo_farm.signing import FarmKey
from gentoo_farm.store.binhost import (
    INHERITED_KEYS,
    STAGED_INDEX,
    index_key,
    merge_pushback,
    parse_index,
    render_index,
    staging_prefix,
)
from gentoo_farm.store.clouds import ACTIVE, CloudImage, now, record_cloud_images
from gentoo_farm.store.local import LocalStore
from gentoo_farm.store.sets import (
    ARTIFACT,
    ExpectedFile,
    apply_retention,
    finalize_set,
    new_set_id,
    object_key,
)

GOAL = 12.0
PROFILE = "default/linux/amd64/23.0"
ARCH = "amd64"
KERNEL = "6.12.1-gentoo"
KERNEL_SET_ID = "20240101T000000Z-kernelkey"
PACKAGES_PER_IMAGE = 120
UNREACHABLE_PUBLIC_URL = "http://127.0.0.1:9"
"""The store's public URL: only written into links, never fetched."""
FIRST_IMAGE_DAY = datetime(2024, 1, 1, 3, 30, tzinfo=UTC)

BINHOST_SIZES = (500, 5000)
STORE_SIZES = (100, 1000)
PAGE_SIZES = (50, 500)


def median_seconds(
    rounds: int, run: Callable[[], object], prepare: Callable[[], object] = lambda: None
) -> float:
    """The median wall time of ``run`` over ``rounds``, each after an untimed ``prepare``."""
    times = []
    for _ in range(rounds):
        prepare()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(what: str, unit: str, sizes: tuple[int, int], seconds: tuple[float, float]) -> float:
    ratio = seconds[1] / seconds[0]
    for size, elapsed in zip(sizes, seconds, strict=True):
        print(f"  {what} with {size:>5} {unit}: {elapsed * 1000:9.1f} ms")
    print(f"  {what} ratio {sizes[1]}/{sizes[0]}: {ratio:.2f} (goal <= {GOAL:.0f}: "
          f"{'met' if ratio <= GOAL else 'NOT MET'})")  # fmt: skip
    return ratio


# -- the binhost -----------------------------------------------------------------------------------


def package_entry(number: int) -> dict[str, str]:
    """An index entry as Portage writes one for a gpkg binary package (binpkg-multi-instance PATH)."""
    category, name, version = f"bench-cat{number % 50}", f"package{number}", f"{1 + number % 9}.{number % 13}"
    digest = hashlib.sha1(str(number).encode()).hexdigest()
    return {
        "BUILD_ID": "1",
        "BUILD_TIME": str(1700000000 + number),
        "CPV": f"{category}/{name}-{version}",
        "DEFINED_PHASES": "compile configure install prepare",
        "DEPEND": f"bench-cat{(number + 1) % 50}/package{number + 1} >=sys-libs/glibc-2.38",
        "EAPI": "8",
        "IUSE": "debug +ssl static-libs test",
        "KEYWORDS": "amd64 ~arm64",
        "LICENSE": "GPL-2+",
        "MD5": hashlib.md5(str(number).encode()).hexdigest(),
        "PATH": f"{category}/{name}/{name}-{version}-1.gpkg.tar",
        "PROVIDES": f"x86_64: lib{name}.so.1",
        "RDEPEND": f"bench-cat{(number + 1) % 50}/package{number + 1}",
        "REQUIRES": "x86_64: libc.so.6",
        "SHA1": digest,
        "SIZE": str(10000 + number),
        "SLOT": "0/1",
        "USE": "abi_x86_64 amd64 elibc_glibc kernel_linux ssl",
    }


def new_index() -> PackageIndex:
    index = PackageIndex(inherited_keys=INHERITED_KEYS)
    index.header.update({"ARCH": ARCH, "CHOST": "x86_64-pc-linux-gnu", "REPO": "gentoo", "VERSION": "0"})
    return index


@functools.cache
def gpkg_settings() -> portage.config:
    """Portage's settings for writing gpkg files (zstd, as a farm's workers write them)."""
    # Portage's global config says on stderr that this host has no Gentoo repository; a gpkg needs none.
    with contextlib.redirect_stderr(io.StringIO()):
        settings = portage.config(clone=portage.settings)
    settings["BINPKG_COMPRESS"] = "zstd"
    return settings


def make_gpkg(scratch: Path, entry: dict[str, str]) -> Path:
    """A real gpkg of ``entry``'s package (one small file in its image), as Portage's gpkg writes it."""
    name_version = entry["CPV"].split("/", 1)[1]
    image = scratch / f"image-{name_version}"
    (image / "usr/share" / name_version).mkdir(parents=True)
    (image / "usr/share" / name_version / "README").write_text(f"{entry['CPV']}\n" * 64)
    package = scratch / f"{name_version}-1.gpkg.tar"
    metadata = {"CATEGORY": entry["CPV"].split("/")[0] + "\n", "PF": name_version + "\n", "SLOT": "0/1\n"}
    gpkg(gpkg_settings(), f"{name_version}-1", str(package)).compress(
        str(image), {key: value.encode() for key, value in metadata.items()}
    )
    return package


def stage_push(store: LocalStore, scratch: Path, first_number: int, count: int) -> str:
    """What a build's upload leaves in staging: its new packages and its own Packages index; the token."""
    token = uuid.uuid4().hex
    staging = staging_prefix(token)
    index = new_index()
    for number in range(first_number, first_number + count):
        entry = package_entry(number)
        package = make_gpkg(scratch, entry)
        data = package.read_bytes()
        entry |= {
            "SIZE": str(len(data)),
            "MD5": hashlib.md5(data).hexdigest(),
            "SHA1": hashlib.sha1(data).hexdigest(),
        }
        index.packages.append(entry)
        store.put_file(staging + "binpkgs/" + entry["PATH"], package)
    store.put_bytes(staging + STAGED_INDEX, render_index(index))
    return token


def time_binhost(work: Path, size: int, key: FarmKey, rounds: int, new_packages: int) -> tuple[float, float]:
    """(merge, index read+write) median seconds for a binhost that lists ``size`` packages."""
    store = LocalStore(work / "store", UNREACHABLE_PUBLIC_URL)
    index = new_index()
    index.packages.extend(package_entry(number) for number in range(size))
    store.put_bytes(index_key(PROFILE), render_index(index))
    first_numbers = iter(range(size, size + rounds * new_packages, new_packages))
    tokens: list[str] = []

    def stage() -> None:
        tokens.append(stage_push(store, work, next(first_numbers), new_packages))

    def merge() -> None:
        result = merge_pushback(store, PROFILE, tokens[-1], key)
        if len(result.added) != new_packages:
            sys.exit(f"the merge added {result.added}, expected {new_packages} packages")

    def index_round_trip() -> None:
        render_index(parse_index(store.get_bytes(index_key(PROFILE)), index_key(PROFILE)))

    return median_seconds(rounds, merge, prepare=stage), median_seconds(rounds, index_round_trip)


def bench_binhost(scratch: Path, key: FarmKey, rounds: int, new_packages: int) -> list[float]:
    print(f"binhost merge: {new_packages} new package(s) per push into a binhost of N packages")
    small, large = (
        time_binhost(scratch / f"binhost-{size}", size, key, rounds, new_packages) for size in BINHOST_SIZES
    )
    return [
        report("merge", "packages", BINHOST_SIZES, (small[0], large[0])),
        report("index read+write", "packages", BINHOST_SIZES, (small[1], large[1])),
    ]


# -- published image sets --------------------------------------------------------------------------


class ImageStore:
    """A local store that gains one published image set a day, as a farm with a nightly build does."""

    def __init__(self, root: Path) -> None:
        self.store = LocalStore(root, UNREACHABLE_PUBLIC_URL)
        self.published = 0
        """Sets published so far (each on its own day)."""
        self.held = 0
        """Sets in the store now: retention deleted the others."""

    def publish(self) -> None:
        when = FIRST_IMAGE_DAY + timedelta(days=self.published)
        name = str(ImageName(when.date(), ARCH))
        input_key = hashlib.sha256(name.encode()).hexdigest()
        set_id = new_set_id(input_key, when)
        disk = f"{name}.qcow2"
        package_manifest = {
            "packages": [
                {"cpv": f"bench-cat{number % 50}/package{number}-1.0", "slot": "0", "origin": "binhost"}
                for number in range(PACKAGES_PER_IMAGE)
            ],
            "kernel": KERNEL,
        }
        contents = {
            disk: hashlib.sha512(name.encode()).digest() * 64,
            f"{name}.manifest.json": json.dumps(package_manifest, indent=2).encode(),
        }
        expected = {}
        for file_name, data in contents.items():
            self.store.put_bytes(object_key("images", set_id, file_name), data)
            expected[file_name] = ExpectedFile(len(data), hashlib.sha512(data).hexdigest())
        metadata = {
            "name": name,
            "kernel": KERNEL,
            "build": f"image/{self.published + 1}",
            "package_count": PACKAGES_PER_IMAGE,
            ARTIFACT: disk,
        }
        finalize_set(self.store, "images", set_id, input_key, expected, metadata, {"kernel": KERNEL_SET_ID})
        record_cloud_images(self.store, set_id, {"openstack": CloudImage(str(uuid.uuid4()), ACTIVE, now())})
        self.published += 1
        self.held += 1

    def grow_to(self, sets: int) -> None:
        while self.held < sets:
            self.publish()


def farm_images(store: LocalStore) -> Callable[[], None]:
    """``farm images`` on the store, through the command's own run() and a real farm config."""
    config = FarmConfig(
        farm=FarmSection(id="bench"),
        store=StoreSection(path=store.root, public_url=UNREACHABLE_PUBLIC_URL),
    )
    parser = argparse.ArgumentParser()
    images_command.add_arguments(parser)
    arguments = parser.parse_args([])

    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            images_command.run(arguments, config)

    return run


def retention_round(images: ImageStore, keep: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(prepare, run): a farm keeping ``keep`` sets publishes one more, then its retention deletes one."""

    def run() -> None:
        plan = apply_retention(images.store, keep)
        images.held = len(plan.kept["images"])
        if images.held != keep:
            sys.exit(f"retention kept {images.held} image sets, expected {keep}")

    return images.publish, run


@contextlib.contextmanager
def serving_page(store: LocalStore) -> Iterator[tuple[str, int]]:
    """The Images page's app on 127.0.0.1 (as tests/test_images_page.py serves it); yields host, port."""
    # Werkzeug logs every request at INFO; the figures are what this prints.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, images_app(store), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_port
    finally:
        server.shutdown()
        thread.join()


def first_byte_seconds(address: tuple[str, int], rounds: int) -> float:
    """The median time from sending a GET of the page to its response's first byte (the connection is
    made before the clock starts, the rest of the page is read after it stops)."""
    request = f"GET /index.html HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode()
    times = []
    for _ in range(rounds):
        with socket.create_connection(address, timeout=120) as connection:
            started = time.perf_counter()
            connection.sendall(request)
            if not connection.recv(1):
                sys.exit("the Images page closed the connection without an answer")
            times.append(time.perf_counter() - started)
            while connection.recv(65536):
                pass
    return statistics.median(times)


def bench_sets(scratch: Path, rounds: int) -> list[float]:
    """Retention and ``farm images`` over 100/1,000 sets, the Images page over 50/500: one growing store."""
    images = ImageStore(scratch / "sets")
    page_seconds, listing_seconds, retention_seconds = [], [], []
    for page_size, store_size in zip(PAGE_SIZES, STORE_SIZES, strict=True):
        images.grow_to(page_size)
        with serving_page(images.store) as address:
            page_seconds.append(first_byte_seconds(address, rounds))
        images.grow_to(store_size)
        listing_seconds.append(median_seconds(rounds, farm_images(images.store)))
        prepare, run = retention_round(images, store_size)
        retention_seconds.append(median_seconds(rounds, run, prepare=prepare))
    print("published image sets")
    ratios = [report("retention", "sets", STORE_SIZES, (retention_seconds[0], retention_seconds[1]))]
    ratios.append(report("farm images", "sets", STORE_SIZES, (listing_seconds[0], listing_seconds[1])))
    ratios.append(report("Images page, first byte", "images", PAGE_SIZES, (page_seconds[0], page_seconds[1])))
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per size, median kept (default: 3)")
    parser.add_argument(
        "--new-packages", type=int, default=2, help="packages each benchmarked push back adds (default: 2)"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.new_packages < 1:
        parser.error("--rounds and --new-packages must be at least 1")
    print(f"load average: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch_name:
        scratch = Path(scratch_name)
        key = FarmKey.create(scratch / "farm-key", "Bench farm <bench@localhost>")
        try:
            ratios = bench_binhost(scratch, key, args.rounds, args.new_packages)
        finally:
            key.stop_agent()
        ratios += bench_sets(scratch, args.rounds)
    print(f"load average: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    return 0 if all(ratio <= GOAL for ratio in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
