"""sha512 of files and the ``.sha512`` lines beside them: shared by the worker toolkit and the store."""

import hashlib
from pathlib import Path

READ_CHUNK = 1 << 20


def file_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as stream:
        while chunk := stream.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha512_line(sha512: str, name: str) -> bytes:
    """The ``.sha512`` file beside an object, in ``sha512sum`` format (``sha512sum -c`` checks it)."""
    return f"{sha512}  {name}\n".encode()
