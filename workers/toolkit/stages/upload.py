"""Upload files to the farm's store through the signed, short-lived URLs the master made for them.

The map is a JSON object ``{"local/path": "https://signed-url", ...}``. Each file is sent with one HTTP PUT
(S3 presigned URL or the master's store server: the same path for both); transient failures (connection
errors, 5xx, 429) are retried with exponential backoff. URLs are never printed: they are credentials.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from gentoo_farm.store import without_signature
from gentoo_farm.workers.toolkit import StageError, progress, report

CHUNK = 1024 * 1024
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class _CountingReader:
    """Feeds the file to http.client and prints progress every tenth of the way."""

    def __init__(self, stream: BinaryIO, size: int, label: str) -> None:
        self.stream = stream
        self.size = size
        self.label = label
        self.sent = 0
        self.next_report = 10
        self.sha512 = hashlib.sha512()
        # S3 stores the MD5 of a single-part PUT as its ETag: publishing checks big files against it.
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, amount: int = CHUNK) -> bytes:
        data = self.stream.read(amount)
        self.sent += len(data)
        self.sha512.update(data)
        self.md5.update(data)
        percent = self.sent * 100 // self.size if self.size else 100
        if percent >= self.next_report and self.size > CHUNK:
            progress(f"  {self.label}: {percent}% of {self.size} bytes")
            self.next_report = (percent // 10 + 1) * 10
        return data


def put_file(path: Path, url: str, attempts: int, timeout: float) -> dict[str, object]:
    """PUT one file; returns the size, sha512 and md5 of the bytes that were sent."""
    size = path.stat().st_size
    for attempt in range(1, attempts + 1):
        with open(path, "rb") as stream:
            reader = _CountingReader(stream, size, path.name)
            request = urllib.request.Request(
                url,
                data=reader,
                method="PUT",
                # The URL is signed for a PUT that creates the object, never one that replaces it.
                headers={
                    "Content-Length": str(size),
                    "Content-Type": "application/octet-stream",
                    "If-None-Match": "*",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    response.read()
                return {
                    "size": reader.sent,
                    "sha512": reader.sha512.hexdigest(),
                    "md5": reader.md5.hexdigest(),
                }
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace").strip()[:300]
                if error.code == 412:
                    detail = "the object exists already; an upload URL writes once " + (
                        "(an earlier attempt may have landed before its answer was lost)"
                        if attempt > 1
                        else "(another upload through this URL came first)"
                    )
                if error.code not in RETRYABLE_STATUS or attempt == attempts:
                    raise StageError(
                        f"upload of {path} to {without_signature(url)} refused: HTTP {error.code} {detail}"
                    ) from None
                problem = f"HTTP {error.code}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                if attempt == attempts:
                    raise StageError(
                        f"upload of {path} to {without_signature(url)} failed after {attempts} attempts: "
                        f"{reason}"
                    ) from None
                problem = str(reason)
        delay = min(2 ** (attempt - 1), 30)
        progress(f"  {path.name}: {problem}; retrying in {delay} s (attempt {attempt + 1} of {attempts})")
        time.sleep(delay)
    raise StageError(f"upload of {path}: no attempts made (--attempts must be at least 1)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--map", required=True, type=Path, help="JSON file {local path: signed upload URL}")
    parser.add_argument("--attempts", type=int, default=5, help="tries per file for transient errors")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds without progress before a try fails"
    )
    parser.add_argument(
        "--report-checksums",
        action="store_true",
        help="hand {stored name: {size, sha512, md5}} of what was sent to the build (property 'uploaded')",
    )


def run(args: argparse.Namespace) -> None:
    try:
        uploads = json.loads(args.map.read_text())
    except OSError as error:
        raise StageError(f"cannot read the upload map {args.map}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise StageError(f"upload map {args.map} is not valid JSON: {error}") from None
    if not isinstance(uploads, dict) or not all(isinstance(v, str) for v in uploads.values()):
        raise StageError(f"upload map {args.map}: expected an object of local path -> URL strings")
    missing = [name for name in uploads if not Path(name).is_file()]
    if missing:
        raise StageError(f"upload map {args.map} names files that do not exist: {', '.join(missing)}")
    total = 0
    sent: dict[str, dict[str, object]] = {}
    started = time.monotonic()
    for number, (name, url) in enumerate(sorted(uploads.items()), start=1):
        path = Path(name)
        progress(f"[{number}/{len(uploads)}] {path} -> {without_signature(url)}")
        checksums = put_file(path, url, args.attempts, args.timeout)
        # Keyed by the file's name in the store (the URL's last segment): what publishing checks.
        sent[PurePosixPath(unquote(urlsplit(url).path)).name] = checksums
        total += path.stat().st_size
    seconds = time.monotonic() - started
    progress(f"uploaded {len(uploads)} files, {total} bytes in {seconds:.1f} s")
    if args.report_checksums:
        report(uploaded_files=len(uploads), uploaded_bytes=total, uploaded=sent)
    else:
        report(uploaded_files=len(uploads), uploaded_bytes=total)
