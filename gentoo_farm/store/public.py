"""A store's public side, read over HTTP with no credentials: what anyone given its URL can do.

The public URL of a local store (its store server) or of a public S3 bucket serves every object
unsigned; it lists nothing, so only what a pointer or a manifest names can be found (the newest
image through ``images/latest.json``). Writing is the farm's business: every write is refused.
"""

from __future__ import annotations

import builtins
import email.utils
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from gentoo_farm.store.base import ArtifactStore, ObjectInfo, ObjectNotFound, StoreError, without_signature

HTTP_TIMEOUT_SECONDS = 60
UNKNOWN_DATE = datetime.fromtimestamp(0, UTC)


class PublicStore(ArtifactStore):
    """The objects under ``url`` (a store's public URL), read-only."""

    def __init__(self, url: str) -> None:
        base = url.rstrip("/")
        super().__init__(without_signature(base), base)

    def _request(self, key: str, method: str = "GET", start: int = 0) -> urllib.request.Request:
        headers = {"Range": f"bytes={start}-"} if start else {}
        return urllib.request.Request(self.public_object_url(key), method=method, headers=headers)

    def _open(self, request: urllib.request.Request, key: str) -> http.client.HTTPResponse:
        try:
            return urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as error:
            if error.code in (403, 404):  # a public bucket answers 403 for a key it does not have
                raise ObjectNotFound(f"{key}: not found at {self.location} (HTTP {error.code})") from None
            raise StoreError(f"{key}: {self.location} answered HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise StoreError(f"{key}: cannot reach {self.location}: {reason}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._open(self._request(key, "HEAD"), key) as response:
                headers = response.headers
        except ObjectNotFound:
            return None
        modified = headers.get("Last-Modified")
        return ObjectInfo(
            key=key,
            size=int(headers.get("Content-Length", 0)),
            modified=email.utils.parsedate_to_datetime(modified)
            if modified
            else datetime.fromtimestamp(0, UTC),
            etag=headers.get("ETag", ""),
        )

    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        response = self._open(self._request(key, start=start), key)
        if start and response.status != 206:
            response.close()
            raise StoreError(f"{key}: {self.location} cannot resume at byte {start} (no range support)")
        return response

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self._open(self._request(key), key)
        except ObjectNotFound:
            return None
        with response:
            return response.read(), response.headers.get("ETag", "")

    def download_url(self, key: str, expires_in: int) -> str:
        return self.public_object_url(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise StoreError(
            f"{self.location}: a store's public URL lists nothing; only the newest image can be found there"
        )

    def _read_only(self) -> StoreError:
        return StoreError(f"{self.location}: a store's public URL is read-only")

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> None:
        raise self._read_only()

    def put_file(self, key: str, path: Path, progress: object = None) -> None:
        raise self._read_only()

    def put_file_new(self, key: str, path: Path, progress: object = None) -> None:
        raise self._read_only()

    def copy(self, source_key: str, dest_key: str) -> None:
        raise self._read_only()

    def delete(self, keys: builtins.list[str]) -> None:  # list: the method above
        raise self._read_only()

    def upload_url(self, key: str, expires_in: int, size: int | None = None) -> str:
        raise self._read_only()
