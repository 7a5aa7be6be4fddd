"""Paths and tarballs confined to a root: what every stage that writes into a build root goes through.

Inside an image, a symlink means what it means once the image runs: an absolute target names a
path in the image, and ``..`` stops at the image's root. :func:`resolve` resolves a path that way
(the way ``chroot`` would), so a link in a build root or a package can never make a stage read or
write a file of the worker itself.

Tarballs are unpacked by GNU tar (it keeps ownership, modes and file capabilities), which follows
links as the worker sees them. :func:`unpack_tarball` first reads every member header with
:class:`MemberCheck` — the one validator every unpacker uses — and refuses the tarball unless
tar's host view and the image's view of every path it writes agree: no absolute names, no ``..``,
no link leaving the root, no member written through a link tar would follow out of the root, no
device nodes or FIFOs (Gentoo's stage3s ship an empty /dev; the kernel's devtmpfs fills it at boot).
A build root has one writer (the stage), so checking before unpacking is not racy.

The check only protects if tar unpacks the members it checked. Python's tarfile takes a bad
header for the end of the archive while GNU tar skips it and unpacks what follows, so the check
reads the archive strictly — every header valid up to the end-of-archive marker, nothing but
zeros after it, a decompressor that exits cleanly — and tar is handed the checked names
(docs/security.md, "One archive, one reading").
"""

import contextlib
import os
import subprocess
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Self

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.tools import run_tool

# As the kernel's limit on links followed in one lookup (ELOOP beyond it).
MAX_LINKS = 40
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Member types a tarball of files may hold; devices and FIFOs are refused (see the docstring).
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)

ReadLink = Callable[[tuple[str, ...]], str | None]


class _HostDisagrees(Exception):
    """The host would resolve this path differently from the image (reason in the message)."""


def _walk(path: str, readlink: ReadLink, *, follow_last: bool, host_safe: bool) -> tuple[str, ...]:
    """The components, below the root, that ``path`` names with chroot semantics.

    With ``host_safe`` a link the host would follow out of the root (an absolute target, or
    ``..`` above the root) raises :class:`_HostDisagrees` instead of being resolved in the root.
    """
    pending = deque(part for part in PurePosixPath(path).parts if part not in ("/", "."))
    resolved: list[str] = []
    followed = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            elif host_safe:
                raise _HostDisagrees(f"{path!r} climbs above the root")
            continue
        candidate = (*resolved, part)
        target = readlink(candidate) if pending or follow_last else None
        if target is None:
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_LINKS:
            raise StageError(f"{path}: more than {MAX_LINKS} symbolic links to follow")
        if target.startswith("/"):
            if host_safe:
                raise _HostDisagrees(
                    f"/{'/'.join(candidate)} is a link to {target}, outside the root on the host"
                )
            resolved = []
        pending.extendleft(reversed([p for p in PurePosixPath(target).parts if p != "/"]))
    return tuple(resolved)


def _disk_readlink(root: Path) -> ReadLink:
    def readlink(parts: tuple[str, ...]) -> str | None:
        path = root.joinpath(*parts)
        return os.readlink(path) if path.is_symlink() else None

    return readlink


def resolve(root: Path, path: str | PurePosixPath, *, follow_last: bool = True) -> Path:
    """The path on this machine of ``path`` inside ``root``, resolved as a chroot into ``root`` would.

    Every component but the last is a real directory or missing; so is the last unless
    ``follow_last`` is false (then a final symlink is returned itself, as ``lstat`` would see it).
    """
    return root.joinpath(*_walk(str(path), _disk_readlink(root), follow_last=follow_last, host_safe=False))


def read_text(root: Path, path: str) -> str:
    with _open(resolve(root, path), os.O_RDONLY) as handle:
        return handle.read()


def write_text(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` in ``root`` (keeping an existing file's mode and owner)."""
    with _open(resolve(root, path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode) as handle:
        handle.write(text)


@contextlib.contextmanager
def _open(path: Path, flags: int, mode: int = 0o644) -> Iterator[IO[str]]:
    # resolve() followed any final link already: O_NOFOLLOW only guards against a link that appears
    # between the two (nothing should write the root meanwhile).
    descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(descriptor, "w" if flags & os.O_WRONLY else "r") as handle:
        yield handle


def _lexical(parts: Sequence[str]) -> tuple[str, ...] | None:
    """``parts`` with ``..`` applied, or None when they climb above the root."""
    result: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not result:
                return None
            result.pop()
        else:
            result.append(part)
    return tuple(result)


class MemberCheck:
    """Checks tarball members, in order, before they are unpacked into ``destination``.

    ``destination`` (None for a tarball being written) is consulted for links already on disk:
    a member is refused when tar would reach it through a link that leaves the root on the host.
    """

    def __init__(self, source: object, destination: Path | None = None, strip_components: int = 0) -> None:
        self.source = source
        self.destination = destination
        self.strip_components = strip_components
        self.links: dict[tuple[str, ...], str | None] = {}

    def _readlink(self, parts: tuple[str, ...]) -> str | None:
        if parts in self.links:
            return self.links[parts]
        if self.destination is None:
            return None
        return _disk_readlink(self.destination)(parts)

    def _refuse(self, name: str, reason: str) -> StageError:
        return StageError(f"{self.source}: member {name!r}: {reason}; refusing to unpack it")

    def _relative(self, name: str, path_name: str, what: str) -> tuple[str, ...] | None:
        path = PurePosixPath(path_name)
        if path.is_absolute():
            raise self._refuse(name, f"{what} is an absolute path")
        if ".." in path.parts:
            raise self._refuse(name, f"{what} contains '..'")
        parts = tuple(part for part in path.parts if part != ".")
        if len(parts) <= self.strip_components:
            return None
        return parts[self.strip_components :]

    def _reachable(self, name: str, parts: tuple[str, ...], what: str) -> None:
        """Refuse ``parts`` when tar, following links as the host does, would write elsewhere."""
        try:
            _walk("/".join(parts), self._readlink, follow_last=False, host_safe=True)
        except _HostDisagrees as error:
            raise self._refuse(name, f"{what} is reached through a link: {error}") from None

    def check(self, info: tarfile.TarInfo) -> str | None:
        """The member's name as unpacked (None when stripped away), or a :class:`StageError`."""
        name = info.name
        parts = self._relative(name, name, "the name")
        if parts is None:
            return None
        self._reachable(name, parts, "the member")
        if info.issym():
            target = PurePosixPath(info.linkname)
            if not info.linkname:
                raise self._refuse(name, "a symlink without a target")
            # An absolute target names a path in the image; a relative one must stay in it.
            if not target.is_absolute() and _lexical([*parts[:-1], *target.parts]) is None:
                raise self._refuse(name, f"symlink to {info.linkname!r} leaves the root")
            self.links[parts] = info.linkname
        elif info.islnk():
            linked = self._relative(name, info.linkname, f"the hard link target {info.linkname!r}")
            if linked is None:
                raise self._refuse(name, f"hard link to {info.linkname!r}, which is stripped away")
            self._reachable(name, linked, f"the hard link target {info.linkname!r}")
            self.links[parts] = None
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = "character device" if info.ischr() else "block device" if info.isblk() else "FIFO"
            raise self._refuse(name, f"a {kind}; images get their device nodes at boot")
        elif info.isdir():
            # tar keeps a link to a directory already at this name (and writes through it): a
            # directory member leaves what is known about the name as it was.
            pass
        elif info.type in FILE_TYPES:
            # tar removes what is at the name and writes the file.
            self.links[parts] = None
        else:
            raise self._refuse(name, f"unsupported member type {info.type!r}")
        return "/".join(parts)


class _StrictTarInfo(tarfile.TarInfo):
    """A member header that refuses a bad header instead of taking it for the end of the archive."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        offset = archive.fileobj.tell()
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # in tarfile, not in its stubs
            raise  # a zero block: the end-of-archive marker (what follows is checked by _clean_end)
        except tarfile.HeaderError as error:
            # TarFile.next() would end the archive quietly here; GNU tar skips the block and goes on.
            raise tarfile.ReadError(f"invalid header at offset {offset}: {error}") from None


def _clean_end(archive: tarfile.TarFile) -> None:
    """Refuse anything but zeros after the end-of-archive marker (GNU tar without -i ignores it)."""
    offset = archive.fileobj.tell()
    while chunk := archive.fileobj.read(tarfile.RECORDSIZE):
        if chunk.strip(b"\0"):
            where = offset + len(chunk) - len(chunk.lstrip(b"\0"))
            raise tarfile.ReadError(f"data after the end-of-archive marker, at offset {where}")
        offset += len(chunk)


@contextlib.contextmanager
def _tar_stream(tarball: Path, decompress: Sequence[str | Path] | None) -> Iterator[tarfile.TarFile]:
    """Member headers of ``tarball`` read sequentially (``decompress`` turns it into a plain tar)."""
    if decompress is None:
        with tarball.open("rb") as handle:
            if handle.read(4) == ZSTD_MAGIC:
                decompress = ["zstd", "-dcq", tarball]
    if decompress is None:
        try:
            with tarfile.open(tarball, mode="r|*", tarinfo=_StrictTarInfo) as archive:
                yield archive
        except (tarfile.TarError, EOFError, OSError) as error:
            raise StageError(f"{tarball}: not a readable tarball: {error}") from error
        return
    process = subprocess.Popen(
        [str(part) for part in decompress], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|", tarinfo=_StrictTarInfo) as archive:
            yield archive
    except BaseException as error:
        # Stopped early (a refused member, a bad header): the rest of the stream is not wanted.
        process.kill()
        if isinstance(error, (tarfile.TarError, EOFError, OSError)):
            raise StageError(f"{tarball}: not a readable tarball: {error}") from error
        raise
    finally:
        process.stdout.close()
        returncode = process.wait()
    # The stream was read to its end: a truncated or damaged one is the decompressor's to report.
    if returncode != 0:
        raise StageError(f"{tarball}: {decompress[0]} failed ({returncode}): a damaged or truncated stream")


def _check_members(
    tarball: Path, destination: Path | None, strip_components: int, decompress: Sequence[str | Path] | None
) -> list[tuple[str, str]]:
    """Check every member of ``tarball``: (name in the archive, name as unpacked) of those unpacked."""
    check = MemberCheck(tarball, destination, strip_components)
    members = []
    last = None
    with _tar_stream(tarball, decompress) as archive:
        try:
            for info in archive:
                name = check.check(info)
                last = info.name
                if name:
                    members.append((info.name, name))
            _clean_end(archive)
        except (tarfile.TarError, EOFError) as error:
            # "unexpected end of data" alone does not say where: name the last member read whole.
            where = f"after member {last!r}" if last is not None else "before any member"
            raise tarfile.ReadError(f"{error} ({where})") from error
    return members


def check_tarball(
    tarball: Path,
    destination: Path | None = None,
    *,
    strip_components: int = 0,
    decompress: Sequence[str | Path] | None = None,
) -> list[str]:
    """Check every member of ``tarball`` (see :class:`MemberCheck`); return the names as unpacked."""
    return [name for _, name in _check_members(tarball, destination, strip_components, decompress)]


def unpack_tarball(
    tarball: Path, destination: Path, *, what: str, options: Sequence[str] = (), strip_components: int = 0
) -> list[str]:
    """Check ``tarball`` against ``destination``, then unpack it there with GNU tar; return its names."""
    if not tarball.is_file():
        raise StageError(f"{tarball}: no such file")
    members = _check_members(tarball, destination, strip_components, None)
    if not members:
        return []  # tar given an empty list of names would unpack every member
    strip = [f"--strip-components={strip_components}"] if strip_components else []
    # tar unpacks exactly the checked names (as the archive spells them, before stripping); a
    # member tar would read differently from Python is then not found, and tar fails.
    with tempfile.NamedTemporaryFile("wb", prefix="members-", suffix=".list") as listing:
        listing.write(b"".join(os.fsencode(name) + b"\0" for name, _ in members))
        listing.flush()
        run_tool(
            [
                "tar",
                "-C",
                destination,
                "--extract",
                *options,
                *strip,
                "--file",
                tarball,
                "--no-recursion",
                "--null",
                "--verbatim-files-from",
                "--files-from",
                listing.name,
            ],
            what=f"unpacking the {what}",
        )
    return [name for _, name in members]
