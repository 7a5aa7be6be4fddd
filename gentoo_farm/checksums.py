"""Reading files and streams a chunk at a time, and hashing them as they go by.

Shared by the worker toolkit, the store and the Glance publisher: one way to read big objects without
holding them in memory, and the ``.sha512`` lines written beside them.
"""

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

READ_CHUNK = 1 << 20


class Digest(Protocol):
    """What :mod:`hashlib` objects have in common (sha512, sha256, md5, blake2b...)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The rest of ``stream``, a megabyte at a time."""
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def feed(stream: BinaryIO, *digests: Digest) -> None:
    """Update every digest with the rest of ``stream`` (one pass, however many digests).

    A digest that already holds earlier bytes goes on from there: a resumed download hashes the part it
    has, then each new chunk.
    """
    for chunk in chunks(stream):
        for digest in digests:
            digest.update(chunk)


def stream_sha512(stream: BinaryIO) -> str:
    digest = hashlib.sha512()
    feed(stream, digest)
    return digest.hexdigest()


def file_sha512(path: Path) -> str:
    with open(path, "rb") as stream:
        return stream_sha512(stream)


def stream_digests(stream: BinaryIO) -> tuple[str, str]:
    """The BLAKE2B (512 bits, as Gentoo's) and SHA512 hex digests of the rest of ``stream``, in one pass."""
    blake2b, sha512 = hashlib.blake2b(), hashlib.sha512()
    feed(stream, blake2b, sha512)
    return blake2b.hexdigest(), sha512.hexdigest()


def digests_text(digests: dict[str, tuple[str, str]]) -> str:
    """Gentoo's DIGESTS format: a ``# BLAKE2B HASH`` and a ``# SHA512 HASH`` section, one line a file."""
    lines = ["# BLAKE2B HASH", *(f"{blake2b}  {name}" for name, (blake2b, _) in sorted(digests.items()))]
    lines += ["# SHA512 HASH", *(f"{sha512}  {name}" for name, (_, sha512) in sorted(digests.items()))]
    return "\n".join(lines) + "\n"


def sha512_line(sha512: str, name: str) -> bytes:
    """The ``.sha512`` file beside an object, in ``sha512sum`` format (``sha512sum -c`` checks it)."""
    return f"{sha512}  {name}\n".encode()
