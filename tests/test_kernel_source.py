"""The kernel source comes from the verified snapshot's Manifest: what it vouches for, through which mirror
layout, and what it refuses. No kernel is compiled: the source is checked before anything is built."""

import hashlib
from pathlib import Path

import pytest

from gentoo_farm.gentoo_manifest import DistEntry
from gentoo_farm.workers.toolkit.distfiles import fetch_distfile
from tests import debian
from tests.imagetest import farm_worker
from tests.test_kernel_build import DEFAULT_CONFIG
from tests.world import LAYOUT_CONF, World, WorldServer, build_world, distfile_layout
from tests.world.repository import KERNEL_SOURCES_PACKAGE, manifest_line
from tests.world.stages import run_stage


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return debian.kernel_source_tarball(tmp_path / "debs")


@pytest.fixture
def world(tmp_path: Path, source: Path) -> World:
    return build_world(tmp_path / "world", extra_distfiles=[source])


def test_the_snapshot_vouches_for_the_source_fetched_through_each_mirrors_layout(
    world: World, source: Path, tmp_path: Path
) -> None:
    vouched = run_stage(
        "kernel-source",
        "--snapshot",
        world.file(world.snapshot_path),
        "--package",
        KERNEL_SOURCES_PACKAGE,
        "--distfile",
        source.name,
    )
    assert vouched.returncode == 0, vouched.stderr
    line = str(vouched.result["kernel_source_dist"])
    assert line == manifest_line(source).strip()
    assert vouched.result["kernel_source_sha512"] == hashlib.sha512(source.read_bytes()).hexdigest()

    # The farm's own mirror, still empty, says it is flat; upstream is GLEP 75.
    (tmp_path / "farm" / "distfiles").mkdir(parents=True)
    (tmp_path / "farm" / "distfiles" / "layout.conf").write_text("[structure]\n0=flat\n")
    with WorldServer(tmp_path / "farm") as farm_mirror, WorldServer(world.mirror_dir) as upstream:
        fetched = fetch_distfile(
            [farm_mirror.url, upstream.url], DistEntry.parse(line), tmp_path / "distfiles", "kernel source"
        )
    assert fetched.read_bytes() == source.read_bytes()
    assert farm_mirror.requested_paths() == ["/distfiles/layout.conf", f"/distfiles/{source.name}"]
    assert upstream.requested_paths() == ["/distfiles/layout.conf", f"/{world.distfile_path(source.name)}"]
    assert world.distfile_path(source.name) != f"distfiles/{source.name}"


def test_a_distfile_the_manifest_does_not_list_is_refused(world: World, source: Path) -> None:
    refused = run_stage(
        "kernel-source",
        "--snapshot",
        world.file(world.snapshot_path),
        "--package",
        KERNEL_SOURCES_PACKAGE,
        "--distfile",
        "linux-9.9.tar.xz",
    )
    assert refused.returncode == 1
    assert refused.error == (
        f"linux-9.9.tar.xz is not a DIST entry of {KERNEL_SOURCES_PACKAGE}'s Manifest in "
        f"{world.snapshot_name} (it lists: {source.name})"
    )
    missing = run_stage(
        "kernel-source",
        "--snapshot",
        world.file(world.snapshot_path),
        "--package",
        "sys-kernel/gentoo-sources",
        "--distfile",
        source.name,
    )
    assert missing.error == (
        f"{world.snapshot_name}: has no sys-kernel/gentoo-sources/Manifest: "
        "no package sys-kernel/gentoo-sources in this snapshot"
    )


def test_a_kernel_source_whose_hash_differs_from_the_manifest_fails_naming_the_file(tmp_path: Path) -> None:
    # A mirror serving another linux-6.1.tar.xz of the same size as the one the Manifest lists.
    vouched = tmp_path / "vouched" / "linux-6.1.tar.xz"
    vouched.parent.mkdir()
    vouched.write_bytes(b"the source the snapshot vouches for\n")
    distdir = tmp_path / "mirror" / "distfiles"
    distdir.mkdir(parents=True)
    (distdir / "layout.conf").write_text(LAYOUT_CONF)
    served = distdir / distfile_layout(distdir).get_path(vouched.name)
    served.parent.mkdir()
    served.write_bytes(vouched.read_bytes().replace(b"vouches", b"VOUCHES"))

    with WorldServer(tmp_path / "mirror") as mirror:
        failed = farm_worker(
            "kernel",
            "--mirror",
            mirror.url,
            "--source-dist",
            manifest_line(vouched),
            "--config",
            DEFAULT_CONFIG,
            "--output",
            tmp_path / "vmlinuz.tar.zst",
            "--work-dir",
            tmp_path / "work",
            "--ccache-dir",
            tmp_path / "ccache",
        )
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    headline = failed.stderr.splitlines()[0]
    listed, found = (hashlib.blake2b(path.read_bytes()).hexdigest()[:16] for path in (vouched, served))
    assert headline == (
        f"farm-worker kernel: error: cannot fetch the kernel source linux-6.1.tar.xz: {mirror.url}/distfiles/"
        f"{distfile_layout(distdir).get_path(vouched.name)}: linux-6.1.tar.xz does not match its Manifest "
        f"DIST line (Failed on BLAKE2B verification: the Manifest lists {listed}..., the file has {found}...)"
    )
    assert not (tmp_path / "work" / "distfiles" / "linux-6.1.tar.xz").exists()
    assert not (tmp_path / "vmlinuz.tar.zst").exists()
