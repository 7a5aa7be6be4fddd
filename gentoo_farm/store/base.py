"""The artifact store interface: a flat key space of objects, the same for every backend.

Keys are ``<kind>/<set id>/<file>`` for published sets (plus their ``manifest.json`` and ``latest`` pointers),
``binpkgs/<profile>/`` for the binhost, ``distfiles/<file>`` for the mirror and ``incoming/<token>/`` for
push-back staging; docs/store.md shows the whole layout.
Everything here blocks: master-side callers run it in a thread (``deferToThread``), never on the reactor.
"""

from __future__ import annotations

import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal, Protocol
from urllib.parse import quote, urlsplit

from gentoo_farm.checksums import stream_sha512

INCOMING = "incoming"
"""Top-level prefix where builds stage uploads the master moves into place (binhost push-back)."""

UPDATE_ATTEMPTS = 20
"""How many lost races :meth:`ArtifactStore.update` takes before it gives up with a StoreError."""

_KEY_PATTERN = re.compile(r"[A-Za-z0-9._+@=,~-]+(/[A-Za-z0-9._+@=,~-]+)*")


class StoreError(Exception):
    """The store could not do what was asked; the message names the key/endpoint and why."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class PreconditionFailed(StoreError):
    """A conditional write lost a race: the object changed since it was read."""


class StoreSettings(Protocol):
    """The ``[store]`` section of farm.toml (see gentoo_farm.config.StoreSection); read-only, as its frozen
    dataclass is."""

    @property
    def type(self) -> Literal["local", "s3"]: ...

    @property
    def path(self) -> Path: ...

    @property
    def bucket(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def endpoint_url(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def public_url(self) -> str: ...

    @property
    def part_size_mb(self) -> int: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def keep(self) -> int: ...

    @property
    def url_expiry_seconds(self) -> int: ...

    @property
    def checksums(self) -> Literal["when_supported", "when_required"]: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime
    etag: str
    """Changes whenever the object's content is replaced (S3 ETag; size+mtime locally)."""


ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just transferred."""


def open_upload_source(path: Path) -> BinaryIO:
    """``path`` opened for an upload; a file that cannot be read is a StoreError naming it."""
    try:
        return open(path, "rb")
    except OSError as error:
        raise StoreError(f"cannot read {path}: {error.strerror}") from error


def without_signature(url: str) -> str:
    """A store URL fit for a log or an error message: the query of a signed URL is its credential."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


def check_key(key: str) -> str:
    """Refuse keys that could escape the store or hide from it (``..``, dot files, absolute paths)."""
    if not _KEY_PATTERN.fullmatch(key) or any(part.startswith(".") for part in key.split("/")):
        raise StoreError(f"invalid store key {key!r}: expected relative path segments not starting with '.'")
    return key


class ArtifactStore(ABC):
    """One store, two backends (:class:`~.local.LocalStore`, :class:`~.s3.S3Store`) with the same keys."""

    def __init__(self, location: str, public_url: str) -> None:
        #: Human-readable location, used in error messages (a directory or ``s3://bucket/prefix``).
        self.location = location
        self._public_url = public_url.rstrip("/")

    def public_base_url(self) -> str | None:
        """The URL prefix the store is readable at without signing (binhost/mirror), if there is one."""
        return self._public_url or None

    def public_object_url(self, key: str) -> str:
        """Where ``key`` is read under :meth:`public_base_url`."""
        return f"{self._public_url}/{quote(check_key(key))}"

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, date and etag of an object, or None when it does not exist."""

    @abstractmethod
    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        """A stream of the object's bytes from offset ``start``; raises :class:`ObjectNotFound`."""

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> None:
        """Write a small object atomically.

        ``if_match`` (an etag) or ``if_absent`` make the write conditional; a lost race raises
        :class:`PreconditionFailed` and leaves the object as the winner wrote it.
        """

    @abstractmethod
    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Upload a file (multipart where the backend has it); readers never see a partial object."""

    @abstractmethod
    def put_file_new(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Upload a file as an object that must not exist yet (create-only, like ``put_bytes(...,
        if_absent=True)``): when ``key`` exists, :class:`PreconditionFailed` and the object stays as it is."""

    @abstractmethod
    def copy(self, source_key: str, dest_key: str) -> None:
        """Copy an object inside the store (server-side where the backend can)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete objects; keys that are already gone are fine."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), in key order."""

    @abstractmethod
    def upload_url(self, key: str, expires_in: int, size: int | None = None) -> str:
        """A URL that accepts one HTTP PUT of exactly this key until ``expires_in`` seconds from now.

        The PUT creates the object and cannot replace it (the uploader sends ``If-None-Match: *``, which
        the URL is signed with): once the first upload has landed, and the master has verified it, the URL
        is spent. With ``size`` the URL accepts only a body of exactly that many bytes.
        """

    @abstractmethod
    def download_url(self, key: str, expires_in: int) -> str:
        """A URL people and Portage can GET the object from (presigned when the bucket is private)."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and the etag of exactly those bytes (one read), or None when it does not
        exist."""

    def update(
        self, key: str, change: Callable[[bytes | None], bytes | None], attempts: int = UPDATE_ATTEMPTS
    ) -> bool:
        """Read-modify-write a small object so that no concurrent writer's change is lost (compare and swap).

        ``change`` gets the object's bytes (None while it does not exist) and returns its new bytes, or None
        to leave it as it is. The write is conditional on what was read (its etag, or its absence); when
        another process (another master) changed the object in between, ``change`` runs again on what that
        writer left. After ``attempts`` lost races in a row a StoreError names the key. Returns whether this
        call wrote. ``change`` may run several times: it must compute from its argument alone.
        """
        for attempt in range(attempts):
            current = self.read_versioned(key)
            data, etag = current if current is not None else (None, None)
            new = change(data)
            if new is None:
                return False
            try:
                if etag is None:
                    self.put_bytes(key, new, if_absent=True)
                else:
                    self.put_bytes(key, new, if_match=etag)
                return True
            except (PreconditionFailed, ObjectNotFound):
                # Lost the race (or the object was deleted under us, which S3 reports for If-Match).
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise StoreError(
            f"{self.location}: {key} was changed by other writers {attempts} times while this update tried; "
            "gave up (try again)"
        )

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def sha512(self, key: str) -> str:
        """The sha512 of the object as the store holds it (a full streamed read)."""
        with self.open_read(key) as stream:
            return stream_sha512(stream)
