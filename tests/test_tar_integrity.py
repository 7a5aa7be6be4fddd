"""Every unpacker refuses a tarball that Python's tarfile and GNU tar would read differently.

A bad header, a truncated stream or a second archive after the first must not let tar unpack
members the check never saw: the hidden members here write through an absolute link to a
directory of the worker, and make a device node and a FIFO.
"""

import gzip
import lzma
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.build_root import REPOSITORY_DIR
from gentoo_farm.workers.toolkit.confined import unpack_tarball
from gentoo_farm.workers.toolkit.stages.assemble import unpack
from gentoo_farm.workers.toolkit.stages.kernel_package import unpack_package
from gentoo_farm.workers.toolkit.stages.unpack_root import TAR_OPTIONS
from tests.test_hostile_inputs import Outside


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path / "outside")


def header(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    info.size = len(data)
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    padding = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + padding


END = b"\0" * (2 * tarfile.BLOCKSIZE)
# Not zeros and not a valid header (its checksum is wrong): GNU tar skips it and reads on.
BAD_BLOCK = b"corrupt".ljust(tarfile.BLOCKSIZE, b"\xff")


def hidden(prefix: str) -> tuple[bytes, bytes]:
    """What a check must see, and what it must not miss: writes through the root's link opt/data."""
    seen = header(f"{prefix}boot/extlinux.conf", data=b"DEFAULT gentoo\n")
    missed = (
        header(f"{prefix}opt/data/planted", data=b"planted\n")
        + header(f"{prefix}run/pipe", tarfile.FIFOTYPE)
        + header(f"{prefix}dev/null", tarfile.CHRTYPE)
    )
    return seen, missed


def corrupt_header(prefix: str) -> tuple[bytes, str]:
    seen, missed = hidden(prefix)
    return seen + BAD_BLOCK + missed + END, f"invalid header at offset {len(seen)}"


def concatenated(prefix: str) -> tuple[bytes, str]:
    seen, missed = hidden(prefix)
    first = seen + END
    return first + missed + END, f"data after the end-of-archive marker, at offset {len(first)}"


def truncated(prefix: str) -> tuple[bytes, str]:
    # Cut after a whole member: the end-of-archive marker never comes (what followed is unknown).
    seen, _ = hidden(prefix)
    return seen, f"offset {len(seen)}"


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "xz":
        return lzma.compress(data)
    if compression == "zst":
        return subprocess.run(["zstd", "-qc"], input=data, capture_output=True, check=True).stdout
    return data


def write(path: Path, data: bytes, compression: str) -> Path:
    path = path.with_name(path.name + (f".tar.{compression}" if compression else ".tar"))
    path.write_bytes(compress(data, compression))
    return path


def unpack_stage3(tarball: Path, root: Path) -> None:
    unpack_tarball(tarball, root, what="stage3", options=TAR_OPTIONS)


def unpack_snapshot(tarball: Path, root: Path) -> None:
    unpack_tarball(tarball, root / REPOSITORY_DIR, what="snapshot", options=TAR_OPTIONS, strip_components=1)


def assemble_unpack(tarball: Path, root: Path) -> None:
    unpack(tarball, root, "vmoverride")


def unpack_kernel_package(tarball: Path, root: Path) -> None:
    unpack_package(tarball, root)


# Each unpacker, the top directory its tarballs hold (a snapshot's is stripped) and where it unpacks.
UNPACKERS: dict[str, tuple[Callable[[Path, Path], None], str, Path]] = {
    "stage3": (unpack_stage3, "", Path()),
    "snapshot": (unpack_snapshot, "portage/", REPOSITORY_DIR),
    "vmlinuz": (assemble_unpack, "", Path()),
    "vmoverride": (assemble_unpack, "", Path()),
    "kernel package": (unpack_kernel_package, "", Path()),
}
DAMAGE = {"corrupt header": corrupt_header, "concatenated": concatenated, "truncated": truncated}


def tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): os.readlink(path)
        if path.is_symlink()
        else stat.filemode(path.lstat().st_mode)
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("compression", ["", "gz", "xz", "zst"])
@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("unpacker", list(UNPACKERS))
def test_a_damaged_tarball_is_refused_before_anything_is_unpacked(
    tmp_path: Path, outside: Outside, unpacker: str, damage: str, compression: str
) -> None:
    run, prefix, below = UNPACKERS[unpacker]
    data, where = DAMAGE[damage](prefix)
    tarball = write(tmp_path / unpacker.replace(" ", "-"), data, compression)
    root = tmp_path / "root"
    (root / REPOSITORY_DIR).mkdir(parents=True)  # made by unpack-root before the snapshot
    (root / "boot").mkdir()
    (root / "boot/extlinux.conf").write_text("DEFAULT old\n")
    # A link the image may have (it names /some/dir of the image), which tar follows on the host.
    (root / below / "opt").mkdir()
    (root / below / "opt/data").symlink_to(outside.path)
    (outside.path / "planted").write_text("the worker's file, not the tarball's\n")
    outside.before = outside.state()
    before = tree(root)

    with pytest.raises(StageError) as refused:
        run(tarball, root)

    assert str(refused.value).startswith(f"{tarball}: ")
    assert where in str(refused.value)
    outside.assert_unchanged()
    # Nothing was unpacked: no link, no device node, no FIFO, not even the benign first member.
    assert tree(root) == before


@pytest.mark.parametrize("compression", ["gz", "xz", "zst"])
def test_a_compressed_stream_cut_short_is_refused_naming_where(
    tmp_path: Path, outside: Outside, compression: str
) -> None:
    seen, missed = hidden("")
    # Random data does not compress: half the stream ends inside "big".
    whole = compress(header("big", data=os.urandom(1 << 16)) + seen + missed + END, compression)
    tarball = tmp_path / f"vmoverride.tar.{compression}"
    tarball.write_bytes(whole[: len(whole) // 2])
    root = tmp_path / "root"
    root.mkdir()

    with pytest.raises(StageError) as refused:
        unpack(tarball, root, "vmoverride")

    assert str(refused.value).startswith(f"{tarball}: ")
    # zstd writes nothing of a block it could not finish: then the stream is empty.
    assert "(after member 'big')" in str(refused.value) or "at offset 0" in str(refused.value)
    assert list(root.iterdir()) == []
    outside.assert_unchanged()


def test_a_sound_tarball_unpacks_every_member_and_only_those(tmp_path: Path, outside: Outside) -> None:
    seen, _ = hidden("")
    data = (
        seen
        + header("opt/data", tarfile.SYMTYPE, str(outside.path))
        + header("etc/hostname", data=b"h\n")
        + END
    )
    tarball = write(tmp_path / "vmoverride", data, "zst")
    root = tmp_path / "root"
    root.mkdir()

    names = unpack(tarball, root, "vmoverride")

    assert names == ["boot/extlinux.conf", "opt/data", "etc/hostname"]
    assert (root / "boot/extlinux.conf").read_text() == "DEFAULT gentoo\n"
    assert os.readlink(root / "opt/data") == str(outside.path)
    assert (root / "etc/hostname").read_text() == "h\n"
    outside.assert_unchanged()
