"""Download artifacts from the farm's store and check each against the sha512 the master recorded.

The map is a JSON object ``{"local/path": {"url": "...", "sha512": "..."}}`` written by the master
from the published sets' manifests. A file that does not match is deleted, so a retry starts clean.
URLs are never printed in full: a signed URL is a credential, however short-lived.
"""

import argparse
import json
from pathlib import Path

from gentoo_farm.checksums import file_sha512
from gentoo_farm.store import without_signature
from gentoo_farm.workers.toolkit import StageError, progress
from gentoo_farm.workers.toolkit.downloads import download

DOWNLOAD_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--map", required=True, type=Path, help='JSON file {local path: {"url": ..., "sha512": ...}}'
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATH",
        help="download only this local path of the map (repeatable; default: every entry)",
    )


def _load_map(path: Path) -> dict[str, dict[str, str]]:
    try:
        downloads = json.loads(path.read_text())
    except OSError as error:
        raise StageError(f"cannot read the download map {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise StageError(f"download map {path} is not valid JSON: {error}") from None
    if not isinstance(downloads, dict) or not all(
        isinstance(entry, dict) and {"url", "sha512"} <= set(entry) for entry in downloads.values()
    ):
        raise StageError(f"download map {path}: expected {{local path: {{url, sha512}}}}")
    return downloads


def get(url: str, sha512: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and file_sha512(output) == sha512:
        progress(f"{output}: already here and intact")
        return
    output.unlink(missing_ok=True)
    try:
        download(url, output, timeout=DOWNLOAD_TIMEOUT)
    except StageError as error:
        raise StageError(str(error).replace(url, without_signature(url))) from None
    actual = file_sha512(output)
    if actual != sha512:
        output.unlink()
        raise StageError(
            f"{output.name} from {without_signature(url)}: sha512 mismatch: "
            f"the manifest says {sha512[:16]}..., "
            f"the download has {actual[:16]}... (corrupt in the store or in transit)"
        )
    progress(f"{output}: sha512 verified")


def run(args: argparse.Namespace) -> None:
    downloads = _load_map(args.map)
    missing = sorted(set(args.only) - set(downloads))
    if missing:
        raise StageError(f"download map {args.map} has no entry for {', '.join(missing)}")
    for name, entry in sorted(downloads.items()):
        if not args.only or name in args.only:
            get(entry["url"], entry["sha512"], Path(name))
