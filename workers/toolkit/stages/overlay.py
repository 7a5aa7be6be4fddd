"""Build the vmoverride tarball (the recipe's modifications to the image) from an overlay directory.

The overlay directory holds ``root/`` (files laid over the image's root as they are) and
``overlay.toml`` (symlinks, modes, and password edits to /etc/shadow). The tarball is reproducible:
members sorted, one fixed mtime, owner root by number, gzip without a timestamp — the same overlay
gives the same bytes, so its sha512 identifies it.
"""

import argparse
import gzip
import io
import json
import os
import re
import stat
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gentoo_farm.checksums import file_sha512, sha512_line
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.confined import MemberCheck
from gentoo_farm.workers.toolkit.vmoverride import EDITS_MEMBER

MANIFEST_NAME = "overlay.toml"
TREE_NAME = "root"
# 2000-01-01T00:00:00Z: a fixed, unremarkable time for every member.
FIXED_MTIME = 946684800
MANIFEST_SECTIONS = ("symlinks", "modes", "passwords")
# shadow's chkname rule for the names useradd accepts (fully numeric names, '.' and '..' are refused too).
USER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?")


@dataclass
class OverlayManifest:
    symlinks: dict[str, str] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)


def _image_path(manifest_file: Path, section: str, name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise StageError(
            f"{manifest_file}: [{section}] {name!r}: expected a path relative to the image root, without '..'"
        )
    return str(path)


def load_manifest(manifest_file: Path) -> OverlayManifest:
    """Read and check ``overlay.toml``; every mistake names the file, the section and the key."""
    if not manifest_file.exists():
        return OverlayManifest()
    try:
        data = tomllib.loads(manifest_file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StageError(f"{manifest_file}: not valid TOML: {error}") from error
    except RecursionError:
        # tomllib parses arrays and inline tables recursively, so deep nesting exhausts the stack
        # instead of raising TOMLDecodeError.
        raise StageError(f"{manifest_file}: not valid TOML: arrays or tables nested too deeply") from None
    unknown = sorted(set(data) - set(MANIFEST_SECTIONS))
    if unknown:
        raise StageError(
            f"{manifest_file}: unknown section(s) {', '.join(unknown)}; "
            f"expected {', '.join(MANIFEST_SECTIONS)}"
        )
    manifest = OverlayManifest()
    for section in MANIFEST_SECTIONS:
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise StageError(f'{manifest_file}: [{section}] must be a table of "key" = "value" lines')
        for key, value in table.items():
            if not isinstance(value, str):
                raise StageError(f"{manifest_file}: [{section}] {key!r}: expected a string, got {value!r}")
            if section == "symlinks":
                if not value:
                    raise StageError(f"{manifest_file}: [symlinks] {key!r}: the link target is empty")
                manifest.symlinks[_image_path(manifest_file, section, key)] = value
            elif section == "modes":
                try:
                    mode = int(value, 8)
                except ValueError:
                    mode = -1
                if not 0 <= mode <= 0o7777:
                    raise StageError(
                        f'{manifest_file}: [modes] {key!r}: {value!r} is not an octal mode like "0755"'
                    )
                manifest.modes[_image_path(manifest_file, section, key)] = mode
            else:
                if not USER_NAME.fullmatch(key) or key.isdigit() or key in (".", ".."):
                    # Refused here: at assembly such a name would only fail to match any line of
                    # /etc/shadow, after the tarball was built and stored.
                    raise StageError(
                        f"{manifest_file}: [passwords] {key!r}: not a user name "
                        "(letters, digits, '_', '.', '-', and a '$' only at the end)"
                    )
                if ":" in value or "\n" in value:
                    raise StageError(
                        f"{manifest_file}: [passwords] {key!r}: a password hash cannot hold ':' or a newline"
                    )
                manifest.passwords[key] = value
    return manifest


def _tree_members(tree: Path) -> dict[str, Path]:
    members: dict[str, Path] = {}
    for directory, subdirectories, files in os.walk(tree):
        for name in subdirectories + files:
            path = Path(directory, name)
            members[str(path.relative_to(tree))] = path
    return members


def _add_parent_directories(archive: tarfile.TarFile, name: str, written: set[str]) -> None:
    parents = list(PurePosixPath(name).parents)[:-1]
    for parent in reversed(parents):
        if str(parent) not in written:
            _add_directory(archive, str(parent), 0o755)
            written.add(str(parent))


def _header(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_directory(archive: tarfile.TarFile, name: str, mode: int) -> None:
    archive.addfile(_header(name, tarfile.DIRTYPE, mode))


def write_overlay_tarball(overlay_dir: Path, output: Path) -> OverlayManifest:
    """Write the vmoverride tarball (``.tar.gz``) of ``overlay_dir`` to ``output``."""
    tree = overlay_dir / TREE_NAME
    if not tree.is_dir():
        raise StageError(
            f"{overlay_dir}: an overlay needs a {TREE_NAME}/ directory holding the image's files"
        )
    manifest_file = overlay_dir / MANIFEST_NAME
    manifest = load_manifest(manifest_file)
    members = _tree_members(tree)
    for name in manifest.modes:
        if name not in members and name not in manifest.symlinks:
            raise StageError(f"{manifest_file}: [modes] {name!r}: no such file under {tree}")
    for name in manifest.symlinks:
        if name in members:
            raise StageError(f"{manifest_file}: [symlinks] {name!r}: {tree / name} exists as well")

    entries: dict[str, tuple[bytes, Path | str]] = {name: (b"", path) for name, path in members.items()}
    entries.update({name: (tarfile.SYMTYPE, target) for name, target in manifest.symlinks.items()})
    edits = {"passwords": manifest.passwords}

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        written: set[str] = set()
        for name in sorted(entries):
            _add_parent_directories(archive, name, written)
            kind, source = entries[name]
            if kind == tarfile.SYMTYPE:
                info = _header(name, tarfile.SYMTYPE, 0o777)
                info.linkname = str(source)
                archive.addfile(info)
                continue
            path = Path(source)
            status = path.lstat()
            if stat.S_ISLNK(status.st_mode):
                info = _header(name, tarfile.SYMTYPE, 0o777)
                info.linkname = os.readlink(path)
                archive.addfile(info)
            elif stat.S_ISDIR(status.st_mode):
                _add_directory(archive, name, manifest.modes.get(name, 0o755))
            elif stat.S_ISREG(status.st_mode):
                default_mode = 0o755 if status.st_mode & stat.S_IXUSR else 0o644
                info = _header(name, tarfile.REGTYPE, manifest.modes.get(name, default_mode))
                info.size = status.st_size
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
            else:
                raise StageError(f"{path}: only files, directories and symlinks can be in an overlay")
            written.add(name)
        edits_data = json.dumps(edits, indent=2, sort_keys=True).encode() + b"\n"
        _add_directory(archive, str(PurePosixPath(EDITS_MEMBER).parent), 0o700)
        info = _header(EDITS_MEMBER, tarfile.REGTYPE, 0o600)
        info.size = len(edits_data)
        archive.addfile(info, io.BytesIO(edits_data))
    # The check assemble makes when it unpacks the tarball, made here too so that a link out of the
    # image fails where it was written.
    check = MemberCheck(overlay_dir)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as archive:
        for member in archive:
            check.check(member)

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with partial.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
        packed.write(buffer.getvalue())
    partial.replace(output)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overlay", type=Path, help="the overlay directory (root/ and overlay.toml)")
    parser.add_argument(
        "--output", required=True, type=Path, help="the vmoverride tarball to write (.tar.gz)"
    )


def run(args: argparse.Namespace) -> None:
    if not args.overlay.is_dir():
        raise StageError(f"{args.overlay}: overlay directory does not exist")
    manifest = write_overlay_tarball(args.overlay, args.output)
    checksum = file_sha512(args.output)
    args.output.with_name(args.output.name + ".sha512").write_bytes(sha512_line(checksum, args.output.name))
    progress(
        f"wrote {args.output} ({args.output.stat().st_size} bytes, {len(manifest.symlinks)} symlinks, "
        f"{len(manifest.passwords)} password edits)"
    )
    report(overlay_path=str(args.output), overlay_sha512=checksum)
