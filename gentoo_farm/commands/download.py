"""Download a published image: resumes a partial file, verifies its sha512, says where the file is."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path, PurePosixPath

from gentoo_farm.catalog import ImageRecord, find_image, human_size
from gentoo_farm.checksums import chunks, feed
from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.store import ArtifactStore, StoreError, open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default="latest", help="image name or set id (default: latest)")
    parser.add_argument("directory", nargs="?", type=Path, default=Path("."), help="where to put it")


class Progress:
    """A one-line bar on a terminal; a line every 10 % otherwise (logs, CI)."""

    def __init__(self, total: int, done: int) -> None:
        self.total = total
        self.done = done
        self.started = time.monotonic()
        self.start_bytes = done
        self.next_percent = 10
        self.tty = sys.stderr.isatty()

    def advance(self, amount: int) -> None:
        self.done += amount
        percent = self.done * 100 // self.total if self.total else 100
        rate = (self.done - self.start_bytes) / max(time.monotonic() - self.started, 1e-6)
        line = f"{percent:3d}% {human_size(self.done)} of {human_size(self.total)}, {human_size(int(rate))}/s"
        if self.tty:
            bar = "#" * (percent // 4)
            print(f"\r[{bar:<25}] {line}", end="", file=sys.stderr, flush=True)
        elif percent >= self.next_percent:
            print(line, file=sys.stderr, flush=True)
            self.next_percent = (percent // 10 + 1) * 10

    def finish(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def fetch(store: ArtifactStore, key: str, size: int, partial: Path) -> hashlib._Hash:
    """Append the rest of ``key`` to ``partial``; returns the sha512 of the whole file."""
    digest = hashlib.sha512()
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    if have:
        print(f"resuming {partial.name} at {human_size(have)}", file=sys.stderr)
        with open(partial, "rb") as existing:
            feed(existing, digest)
    progress = Progress(size, have)
    with store.open_read(key, start=have) as source, open(partial, "ab") as target:
        for chunk in chunks(source):
            target.write(chunk)
            digest.update(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return digest


def download(store: ArtifactStore, record: ImageRecord, directory: Path) -> Path:
    """``record``'s qcow2 in ``directory``, its sha512 verified and written next to it as NAME.sha512."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        destination = (directory / PurePosixPath(record.key).name).resolve()
        partial = destination.with_name(destination.name + ".part")
        print(f"{record.name}: {human_size(record.size)} from {store.location}", file=sys.stderr)
        digest = fetch(store, record.key, record.size, partial)
    except StoreError as error:
        raise CommandError(str(error)) from error
    except OSError as error:
        raise CommandError(f"cannot write {error.filename}: {error.strerror}") from error
    if digest.hexdigest() != record.sha512:
        partial.unlink()
        raise CommandError(
            f"{destination.name}: sha512 does not match the published one; the corrupt download was removed, "
            "run the command again"
        )
    partial.replace(destination)
    destination.with_name(destination.name + ".sha512").write_text(f"{record.sha512}  {destination.name}\n")
    return destination


def published(config: FarmConfig, name: str) -> tuple[ArtifactStore, ImageRecord]:
    """The farm's store and its image ``name`` (``latest``, an image name or a set id)."""
    try:
        store = open_store(config.store)
        record = find_image(store, name, config.store.url_expiry_seconds)
    except StoreError as error:
        raise CommandError(str(error)) from error
    if record is None:
        raise CommandError(f"no published image named {name!r}; `farm images` lists them")
    return store, record


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    store, record = published(config, args.name)
    destination = download(store, record, args.directory)
    print(f"{destination} ({human_size(record.size)}, sha512 verified)")
    return 0
