"""The local-directory backend: the embedded default, served over HTTP by :mod:`.server`."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

from gentoo_farm.checksums import chunks
from gentoo_farm.store.base import (
    UPDATE_ATTEMPTS,
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    ProgressCallback,
    StoreError,
    check_key,
    open_upload_source,
)

# Private state lives under a dot directory: keys can never name it and the server never serves it.
STATE_DIR = ".farm"
SECRET_FILE = "upload-secret"


def _etag(stat: os.stat_result) -> str:
    # Every write is a rename of a fresh file, so the inode alone changes on each replacement.
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"


def upload_signature(secret: bytes, key: str, expires: int, size: int | None = None) -> str:
    """The HMAC of one upload: the key, the expiry and, when the master knows it, the exact size."""
    bound = "" if size is None else str(size)
    return hmac.new(secret, f"PUT\n{key}\n{expires}\n{bound}".encode(), hashlib.sha256).hexdigest()


@contextlib.contextmanager
def _complete_copy(target: Path, source: BinaryIO, progress: ProgressCallback | None) -> Iterator[Path]:
    """``source`` written whole to a hidden file beside ``target`` (readable by all, as the store serves
    it), for the caller to move or link into place; the file is gone afterwards either way, so readers
    never see a partial object under ``target``'s name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        copy = Path(tmp.name)
        try:
            for chunk in chunks(source):
                tmp.write(chunk)
                if progress:
                    progress(len(chunk))
            tmp.flush()
            os.fchmod(tmp.fileno(), 0o644)
        except BaseException:
            copy.unlink()
            raise
    try:
        yield copy
    finally:
        copy.unlink(missing_ok=True)


class LocalStore(ArtifactStore):
    def __init__(self, root: Path, public_url: str) -> None:
        if not root.is_absolute():
            raise StoreError(f"store path {root} must be absolute")
        super().__init__(str(root), public_url)
        self.root = root
        try:
            (root / STATE_DIR / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the store directory {root}: {error.strerror}") from error

    # -- paths and locks ------------------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        lock_name = hashlib.sha256(key.encode()).hexdigest()
        with open(self.root / STATE_DIR / "locks" / lock_name, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def upload_secret(self) -> bytes:
        """The HMAC key for signed upload URLs, made once per store and kept beside it (mode 0600)."""
        path = self.root / STATE_DIR / SECRET_FILE
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        with self._key_lock(STATE_DIR):
            if not path.exists():
                fd = os.open(path.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as new_secret:
                    new_secret.write(secrets.token_bytes(32))
                os.replace(path.with_suffix(".new"), path)
            return path.read_bytes()

    def _write_atomically(self, key: str, source: BinaryIO, progress: ProgressCallback | None = None) -> None:
        target = self.path_of(key)
        try:
            with _complete_copy(target, source, progress) as copy:
                os.replace(copy, target)
        except OSError as error:
            raise StoreError(f"cannot write {target}: {error.strerror}") from error

    # -- ArtifactStore --------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path_of(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC), _etag(stat))

    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        try:
            stream = open(self.path_of(key), "rb")  # noqa: SIM115 - the caller owns the stream
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"{key} is not in the store {self.location}") from None
        stream.seek(start)
        return stream

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> None:
        if if_match is None and not if_absent:
            self._write_atomically(key, io.BytesIO(data))
            return
        with self._key_lock(key):
            current = self.head(key)
            if if_absent and current is not None:
                raise PreconditionFailed(f"{key} already exists in {self.location}")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key} changed in {self.location} since it was read")
            self._write_atomically(key, io.BytesIO(data))

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self.path_of(key), "rb") as stream:
                # Writes replace the file by renaming a new one over it: the open file is one version.
                return stream.read(), _etag(os.fstat(stream.fileno()))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def update(
        self, key: str, change: Callable[[bytes | None], bytes | None], attempts: int = UPDATE_ATTEMPTS
    ) -> bool:
        """The read, ``change`` and write all under the key's file lock (flock, every process on this
        machine), so no other conditional writer or update comes in between: nothing to retry."""
        with self._key_lock(key):
            current = self.read_versioned(key)
            new = change(current[0] if current is not None else None)
            if new is None:
                return False
            self._write_atomically(key, io.BytesIO(new))
            return True

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        with open_upload_source(path) as source:
            self._write_atomically(key, source, progress)

    def put_file_new(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        with open_upload_source(path) as source:
            self.put_new(key, source, progress)

    def put_new(self, key: str, stream: BinaryIO, progress: ProgressCallback | None = None) -> None:
        """Write an object that must not exist yet (the store server's signed PUT).

        The file is linked into place, which fails when the name exists: of two PUTs through one URL only
        the first lands, and nothing replaces an object the master has already verified.
        """
        target = self.path_of(key)
        try:
            with _complete_copy(target, stream, progress) as copy:
                os.link(copy, target)
        except FileExistsError:
            raise PreconditionFailed(f"{key} already exists in {self.location}") from None
        except OSError as error:
            raise StoreError(f"cannot write {target}: {error.strerror}") from error

    def check_upload(self, key: str, query: Mapping[str, str], content_length: int | None) -> str | None:
        """Why a PUT of ``content_length`` bytes to ``key`` with this signed query may not go ahead, or None.

        Everything it looks at arrives with the request's headers, so the store server asks before reading
        a byte of the body.
        """
        expires, signature, size = (query.get(name, "") for name in ("expires", "signature", "size"))
        if not expires.isdigit() or not signature or (size and not size.isdigit()):
            return "the URL is not signed (expires and signature are required)"
        if int(expires) < time.time():
            return "the upload URL has expired"
        wanted = upload_signature(self.upload_secret(), key, int(expires), int(size) if size else None)
        if not hmac.compare_digest(wanted, signature):
            return "the signature does not match this key"
        if content_length is None:
            return "the request has no Content-Length (uploads are single PUTs of a known size)"
        if size and content_length != int(size):
            return f"the URL is for {size} bytes, the request announces {content_length}"
        return None

    def copy(self, source_key: str, dest_key: str) -> None:
        with self.open_read(source_key) as source:
            self._write_atomically(dest_key, source)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self.path_of(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            # Empty set directories would linger forever; remove them up to the kind's folder.
            for parent in path.parents:
                if parent == self.root:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        directory, _, _ = prefix.rpartition("/")
        start = self.root / directory if directory else self.root
        if not start.is_dir():
            return
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            relative = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = (relative / name).as_posix() if relative != Path(".") else name
                if key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            info = self.head(key)
            if info is not None:
                yield info

    def upload_url(self, key: str, expires_in: int, size: int | None = None) -> str:
        expires = int(time.time()) + expires_in
        fields: dict[str, object] = {"expires": expires}
        if size is not None:
            fields["size"] = size
        fields["signature"] = upload_signature(self.upload_secret(), key, expires, size)
        return f"{self.public_object_url(key)}?{urlencode(fields)}"

    def download_url(self, key: str, expires_in: int) -> str:
        return self.public_object_url(key)
