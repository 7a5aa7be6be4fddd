"""Download a published image: resumes a partial file, verifies its sha512, says where the file is.

From the farm's store (farm.toml), or from a store's public URL alone (no farm.toml, no credentials):
``farm download https://images.example.org/`` takes the newest image its ``latest`` pointer names.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path, PurePosixPath

from gentoo_farm.catalog import ImageRecord, find_image
from gentoo_farm.checksums import chunks, feed
from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.signing import SigningError, key_fingerprints, verify_clearsigned
from gentoo_farm.store import ArtifactStore, StoreError, open_store
from gentoo_farm.store.public import PublicStore
from gentoo_farm.store.sets import SIGNING_KEY, digests_key
from gentoo_farm.transfer import ProgressReport, TransferMeter
from gentoo_farm.units import human_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        default="latest",
        help="image name or set id (default: latest), or a store's public URL (its newest image; "
        "no farm.toml needed)",
    )
    parser.add_argument("directory", nargs="?", type=Path, default=Path("."), help="where to put it")
    parser.add_argument(
        "--key",
        metavar="FILE|FINGERPRINT",
        help="the farm's signing key (a key file, or its fingerprint to check the store's copy against): "
        "the image's signed DIGESTS must vouch for the download",
    )


def trusted_key(store: ArtifactStore, key: str) -> tuple[bytes, tuple[str, ...]]:
    """The armored keys ``--key`` names and the fingerprints a signature must come from: every key of a
    file, or from the store's copy only the key whose fingerprint is given (during a rotation the copy
    holds the new key and the old one; a bucket writer could add their own)."""
    if Path(key).is_file():
        return Path(key).read_bytes(), ()
    fingerprint = key.replace(" ", "").upper()
    if not re.fullmatch(r"[0-9A-F]{40}", fingerprint):
        raise CommandError(f"--key {key!r}: neither a key file nor a 40-digit fingerprint")
    try:
        armored = store.get_bytes(SIGNING_KEY)
    except StoreError as error:
        raise CommandError(f"--key: cannot read the farm's public key {SIGNING_KEY}: {error}") from error
    found = key_fingerprints(armored)
    if fingerprint not in found:
        raise CommandError(
            f"{SIGNING_KEY} in {store.location} is key {', '.join(found) or 'none'}, not {fingerprint}"
        )
    return armored, (fingerprint,)


def check_signature(
    store: ArtifactStore, record: ImageRecord, trusted: tuple[bytes, tuple[str, ...]], file_name: str
) -> str:
    """The signed DIGESTS of the image's set, verified; CommandError unless they vouch for its sha512."""
    try:
        signed = store.get_bytes(digests_key("images", record.set_id))
    except StoreError as error:
        raise CommandError(f"{record.name} has no signed DIGESTS ({error}): it cannot be checked") from error
    try:
        armored_keys, signers = trusted
        text = verify_clearsigned(armored_keys, signed, signers)
    except SigningError as error:
        raise CommandError(f"{record.name}: DIGESTS: {error}") from error
    sha512_section = text.split("# SHA512 HASH", 1)[-1]
    if f"{record.sha512}  {file_name}" not in sha512_section.splitlines():
        raise CommandError(f"{record.name}: the signed DIGESTS do not vouch for {file_name}'s sha512")
    return signed.decode()


TERMINAL_REFRESH_SECONDS = 0.2
"""How often the bar on a terminal moves (elsewhere a line every REPORT_SECONDS, as for Glance uploads)."""


def show_progress(total: int, done: int) -> ProgressReport:
    """``downloading 1.2 GiB / 4.0 GiB (30 %), 48.0 MiB/s, 1 min left`` on stderr: redrawn behind a bar on
    a terminal, a line every REPORT_SECONDS and at the end otherwise."""
    meter = TransferMeter("downloading", total, done)
    if not sys.stderr.isatty():
        return ProgressReport(meter, lambda line: print(line, file=sys.stderr, flush=True))

    def redraw(line: str) -> None:
        percent = meter.done * 100 // meter.total if meter.total else 100
        print(f"\r[{'#' * (percent // 4):<25}] {line}", end="", file=sys.stderr, flush=True)

    return ProgressReport(meter, redraw, TERMINAL_REFRESH_SECONDS)


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
    progress = show_progress(size, have)
    with store.open_read(key, start=have) as source, open(partial, "ab") as target:
        for chunk in chunks(source):
            target.write(chunk)
            digest.update(chunk)
            progress(len(chunk))
    progress.finish()
    if sys.stderr.isatty():
        print(file=sys.stderr)  # below the bar
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


def is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def needs_farm(args: argparse.Namespace) -> bool:
    return not is_url(args.name)


def published_at(url: str) -> tuple[ArtifactStore, ImageRecord]:
    """The store whose public URL is ``url`` (its top, or its ``images/``) and its newest image."""
    top = url.rstrip("/").removesuffix("/images")
    store = PublicStore(top)
    try:
        record = find_image(store, "latest")
    except StoreError as error:
        raise CommandError(f"{store.location}: no farm store here ({error})") from error
    if record is None:
        raise CommandError(f"{store.location}: the store has published no image yet")
    return store, record


def run(args: argparse.Namespace, config: FarmConfig | None) -> int:
    if config is None:
        store, record = published_at(args.name)
    else:
        store, record = published(config, args.name)
    trusted = trusted_key(store, args.key) if args.key else None
    destination = download(store, record, args.directory)
    if trusted is None:
        print(f"{destination} ({human_size(record.size)}, sha512 verified; the signature was not checked: "
              "give --key FILE|FINGERPRINT)")  # fmt: skip
        return 0
    try:
        signed = check_signature(store, record, trusted, destination.name)
    except CommandError:
        destination.unlink()
        destination.with_name(destination.name + ".sha512").unlink(missing_ok=True)
        raise
    destination.with_name(destination.name + ".DIGESTS").write_text(signed)
    print(f"{destination} ({human_size(record.size)}, sha512 verified and signed by the farm key)")
    return 0
