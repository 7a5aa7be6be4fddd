"""The tests' cache of expensive things, outside the checkout and kept between runs.

Root: ``$GENTOO_FARM_TEST_CACHE`` (default /var/cache/gentoo-farm-tests); ``./run-tests --clear-cache``
empties it. Two kinds of things live there:

- entries, ``<root>/<kind>/<key>``: immutable, keyed by a hash of every input, including the source
  of the code that builds them (``source_hash``), so a change to any input builds a new entry. An
  entry is built under a temporary name and renamed when complete: a build that dies leaves only a
  temporary directory, which is never used (and removed by the next ``clear``). When the entries
  exceed ``$GENTOO_FARM_TEST_CACHE_MAX_GIB`` (default 20), the least recently used go first.
- shared directories, ``<root>/<name>`` (``directory``): caches that key their own contents, like
  Debian's .debs (by file name and version) and the kernel's ccache (by ccache's own hashes; ccache
  caps its own size), which ``merge_tree`` adds to.
"""

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT_VARIABLE = "GENTOO_FARM_TEST_CACHE"
DEFAULT_ROOT = Path("/var/cache/gentoo-farm-tests")
MAX_GIB_VARIABLE = "GENTOO_FARM_TEST_CACHE_MAX_GIB"
DEFAULT_MAX_GIB = 20.0
TEMPORARY_PREFIX = ".tmp-"
KERNEL_CCACHE = "kernel-ccache"
"""The shared directory of the ccache every test that compiles the default kernel config uses or seeds."""


def root() -> Path:
    configured = os.environ.get(ROOT_VARIABLE)
    return Path(configured) if configured else DEFAULT_ROOT


def max_bytes() -> int:
    return int(float(os.environ.get(MAX_GIB_VARIABLE, DEFAULT_MAX_GIB)) * 2**30)


def directory(name: str) -> Path:
    """A shared directory of the cache (created), for caches that key their own contents."""
    path = root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_hash(paths: Iterable[Path], *values: str) -> str:
    """Hash of the given files' names and bytes (directories: every file under them) and of ``values``."""
    digest = hashlib.sha256()
    files: set[Path] = set()
    for path in paths:
        if path.is_dir():
            files.update(
                found for found in path.rglob("*") if found.is_file() and "__pycache__" not in found.parts
            )
        else:
            files.add(path)
    for file in sorted(files):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    for value in values:
        digest.update(value.encode() + b"\0")
    return digest.hexdigest()[:16]


def entry(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """The complete entry ``kind/key``, built by ``build(path)`` (``path`` does not exist yet) if missing.

    Concurrent runs wait for one builder (a lock per entry) instead of building it twice.
    """
    kind_dir = root() / kind
    path = kind_dir / key
    if not path.is_dir():
        kind_dir.mkdir(parents=True, exist_ok=True)
        with (kind_dir / f".{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.is_dir():
                # Short names: a build may put sockets in its tree (gpg-agent's), whose paths are
                # limited to 107 bytes.
                scratch = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=kind_dir))
                try:
                    build(scratch / "e")
                    (scratch / "e").rename(path)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
    # The mtime says when the entry was last used: eviction goes by it.
    os.utime(path)
    evict(max_bytes(), keep=path)
    return path


def _size(path: Path) -> int:
    return sum(found.stat().st_size for found in path.rglob("*") if found.is_file())


def evict(limit: int, *, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the entries take at most ``limit`` bytes."""
    if not root().is_dir():
        return []
    entries = [
        path
        for kind_dir in root().iterdir()
        if kind_dir.is_dir()
        for path in kind_dir.iterdir()
        if path.is_dir() and not path.name.startswith((TEMPORARY_PREFIX, "."))
    ]
    # Only the kinds made by ``entry``: a kind directory holds its entries' lock files.
    entries = [path for path in entries if (path.parent / f".{path.name}.lock").exists()]
    sizes = {path: _size(path) for path in entries}
    total = sum(sizes.values())
    evicted = []
    for path in sorted(entries, key=lambda path: path.stat().st_mtime):
        if total <= limit:
            break
        if path == keep:
            continue
        # Renamed away first, so no run finds a half-removed entry under its name.
        doomed = path.with_name(f"{TEMPORARY_PREFIX}evicted-{path.name}-{os.getpid()}")
        try:
            path.rename(doomed)
        except FileNotFoundError:  # another run evicted it first
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        total -= sizes[path]
        evicted.append(path)
    return evicted


def merge_tree(source: Path, destination: Path) -> None:
    """Add ``source``'s files missing from ``destination``, each copied under a temporary name, then renamed.

    What another run reads meanwhile is a whole file or none (ccache reads its cache that way too).
    """
    for file in source.rglob("*"):
        target = destination / file.relative_to(source)
        if not file.is_file() or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{TEMPORARY_PREFIX}{target.name}-{os.getpid()}")
        shutil.copy2(file, partial)
        partial.rename(target)


def clear() -> None:
    """Empty the cache (entries, shared directories and any leftover temporary directory)."""
    if root().is_dir():
        for path in root().iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
