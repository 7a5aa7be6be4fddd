"""Compute a build's input key: a content hash of the files, trees and values it is built from.

The same inputs always give the same key, so a builder can tell whether the store already
holds its artifact before doing any work.
"""

import argparse
import hashlib
import os
from pathlib import Path

from gentoo_farm.checksums import feed
from gentoo_farm.workers.toolkit import StageError, progress, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, help="artifact kind (stage3, kernel, overlay, image ...)")
    parser.add_argument(
        "--file", dest="files", action="append", default=[], type=Path, help="a file or tree the build reads"
    )
    parser.add_argument(
        "--value", dest="values", action="append", default=[], help="NAME=VALUE the build depends on"
    )
    parser.add_argument(
        "--report-as",
        default="input_key",
        help="the result's name (default input_key): a build that keys a second artifact names its key",
    )


def _hash_tree(digest: "hashlib._Hash", top: Path) -> None:
    """Hash names relative to ``top``, so the key does not depend on where the worker checked out."""
    paths = [top] if not top.is_dir() else sorted(p for p in top.rglob("*") if not p.is_dir())
    for path in paths:
        digest.update(str(path.relative_to(top)).encode() + b"\0")
        if path.is_symlink():
            digest.update(b"symlink\0" + os.readlink(path).encode())
            continue
        digest.update(oct(path.stat().st_mode & 0o7777).encode() + b"\0")
        with path.open("rb") as handle:
            feed(handle, digest)


def run(args: argparse.Namespace) -> None:
    if not args.report_as.isidentifier():
        raise StageError(f"--report-as {args.report_as!r}: expected a property name (letters, digits, _)")
    digest = hashlib.sha256(f"kind={args.kind}\0".encode())
    for value in sorted(args.values):
        if "=" not in value:
            raise StageError(f"--value {value!r}: expected NAME=VALUE")
        digest.update(value.encode() + b"\0")
    for path in args.files:
        if not path.exists():
            raise StageError(f"{path}: input file does not exist")
        _hash_tree(digest, path)
    key = digest.hexdigest()[:16]
    progress(f"{args.kind} input key {key}")
    report(**{args.report_as: key})
