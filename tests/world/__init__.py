"""The stand-in Gentoo world: a signed stage3, a signed Portage snapshot and distfiles, served like upstream.

``build_world(dest)`` lays out, under ``dest/mirror``, what a Gentoo mirror publishes::

    releases/amd64/autobuilds/latest-stage3-amd64-openrc.txt           (clear-signed pointer)
    releases/amd64/autobuilds/<ts>/stage3-amd64-openrc-<ts>.tar.xz      (+ .DIGESTS, .asc, .CONTENTS.gz)
    snapshots/portage-<date>.tar.xz  and  portage-latest.tar.xz         (+ .gpgsig, .md5sum)
    releases/amd64/binpackages/23.0/x86-64/                             (upstream binhost: Packages, gpkg)
    distfiles/<BLAKE2B(name)[:2]>/<name>                                (GLEP 75, as layout.conf says)

Stages, DIGESTS and the pointer are signed by a throwaway release key, snapshots by a throwaway snapshot
key, binary packages by a throwaway binhost key, as Gentoo signs them. ``dest/gentoo-keyring.asc`` holds
the public halves (what a farm is configured
with, like Gentoo's gentoo-release.asc), ``dest/fingerprints.json`` their fingerprints and ``dest/gnupg``
the secret halves (so tests can sign tampered files). The slow part is built once per machine into the
test cache (tests/cache.py) keyed by the generator's own source (and OpenRC's scripts in openrc/), then
copied; the Debian packages the stage3 and the repackaged ebuilds are made of are cached per machine by
tests/debian.py. Measured on 2 cores: 172 s cold (empty deb and world caches; 91 s before the worker
image's packages joined the tree), 0.45 s cached (a copy of 134 MB, 120 MB of it their distfiles).
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from portage.package.ebuild.fetch import ContentHashLayout, FilenameHashLayout, FlatLayout, MirrorLayoutConfig

from tests import cache, debian
from tests.world import repository, signing
from tests.world.server import ServedRequest, WorldServer
from tests.world.stage3 import populate_stage3_root
from tests.world.upstream_binhost import UPSTREAM_BINHOST_PATH, build_upstream_binhost

STAGE3_TIMESTAMP = "20261122T170403Z"
SNAPSHOT_DATE = "20261124"
SNAPSHOT_TIMESTAMP_CHK = "Tue, 24 Nov 2026 00:45:01 +0000"
AUTOBUILDS = "releases/amd64/autobuilds"
POINTER_NAME = "latest-stage3-amd64-openrc.txt"
# What distfiles.gentoo.org's distfiles/layout.conf says; like upstream, only the hashed copies exist.
LAYOUT_CONF = "[structure]\n0=filename-hash BLAKE2B 8\n1=flat\n"


@dataclass(frozen=True)
class World:
    """Every path and URL path of a built world that a test or the demo needs."""

    root: Path
    mirror_dir: Path
    keyring: Path
    gnupg_home: Path
    stage3_timestamp: str
    stage3_name: str
    snapshot_date: str
    snapshot_name: str
    profile: str
    package_set: tuple[str, ...]
    static_package: str
    static_binary: str
    hello_message: str
    service_package: str
    service_name: str
    distfiles: tuple[str, ...]

    pointer_path: str = f"{AUTOBUILDS}/{POINTER_NAME}"

    @property
    def stage3_path(self) -> str:
        """URL path of the stage3 tarball (relative to the mirror root)."""
        return f"{AUTOBUILDS}/{self.stage3_timestamp}/{self.stage3_name}"

    @property
    def snapshot_path(self) -> str:
        return f"snapshots/{self.snapshot_name}"

    def file(self, url_path: str) -> Path:
        """The file on disk behind a URL path of the mirror."""
        return self.mirror_dir / url_path

    def distfiles_of(self, cpvs: Iterable[str]) -> list[str]:
        """The distfiles of the packages ``cpvs`` (category/name-version), sorted: what emerging them
        fetches. The world has more (the worker image's packages) than an image emerges."""
        wanted = {f"{cpv.split('/', 1)[1]}.tar.gz" for cpv in cpvs}
        return sorted(name for name in self.distfiles if name in wanted)

    def distfile_path(self, name: str) -> str:
        """URL path of a distfile, in the layout the mirror's layout.conf names (Portage's reading of it)."""
        return f"distfiles/{distfile_layout(self.mirror_dir / 'distfiles').get_path(name)}"

    @property
    def release_fingerprint(self) -> str:
        """The key that signs stages, DIGESTS and the pointer (a farm's ``[upstream] release_key``)."""
        return self._fingerprints()["release"]

    @property
    def snapshot_fingerprint(self) -> str:
        """The key that signs snapshots (a farm's ``[upstream] snapshot_key``)."""
        return self._fingerprints()["snapshot"]

    @property
    def binhost_fingerprint(self) -> str:
        """The key that signs the upstream binhost's packages."""
        return self._fingerprints()["binhost"]

    @property
    def upstream_binhost_dir(self) -> Path:
        """The upstream binhost on disk (its Packages index and gpkg files)."""
        return self.mirror_dir / UPSTREAM_BINHOST_PATH

    def _fingerprints(self) -> dict[str, str]:
        return json.loads((self.root / "fingerprints.json").read_text())


def _world_for(root: Path) -> World:
    return World(
        root=root,
        mirror_dir=root / "mirror",
        keyring=root / "gentoo-keyring.asc",
        gnupg_home=root / "gnupg",
        stage3_timestamp=STAGE3_TIMESTAMP,
        stage3_name=f"stage3-amd64-openrc-{STAGE3_TIMESTAMP}.tar.xz",
        snapshot_date=SNAPSHOT_DATE,
        snapshot_name=f"portage-{SNAPSHOT_DATE}.tar.xz",
        profile=repository.PROFILE,
        package_set=repository.PACKAGE_SET,
        static_package=repository.STATIC_PACKAGE,
        static_binary="/usr/bin/farm-hello",
        hello_message=repository.HELLO_MESSAGE,
        service_package=repository.SERVICE_PACKAGE,
        service_name=repository.SERVICE_NAME,
        distfiles=tuple(sorted(_distfile_names())),
    )


def _distfile_names() -> list[str]:
    return [package.distfile for package in repository.packages() if package.distfile is not None]


def distfile_layout(distdir: Path) -> FlatLayout | FilenameHashLayout | ContentHashLayout:
    """The layout a mirror's ``layout.conf`` names, as Portage picks it."""
    layout = MirrorLayoutConfig()
    layout.read_from_file(str(distdir / "layout.conf"))
    return layout.get_best_supported_layout()


def _lay_out_distfiles(flat: Path, distdir: Path) -> None:
    """Move flat distfiles into the mirror's GLEP 75 layout, with its layout.conf."""
    distdir.mkdir(parents=True, exist_ok=True)
    (distdir / "layout.conf").write_text(LAYOUT_CONF)
    layout = distfile_layout(distdir)
    for path in sorted(flat.iterdir()):
        if path.name != "layout.conf":
            destination = distdir / layout.get_path(path.name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, destination)


def write_digests(home: Path, tarball: Path, key: str, companions: Iterable[Path] = ()) -> None:
    """Write ``<tarball>.DIGESTS``, clear-signed, with BLAKE2B and SHA512 sections as Gentoo does."""
    lines = []
    for path in (tarball, *companions):
        data = path.read_bytes()
        lines.append(f"# BLAKE2B HASH\n{hashlib.blake2b(data).hexdigest()}  {path.name}\n")
        lines.append(f"# SHA512 HASH\n{hashlib.sha512(data).hexdigest()}  {path.name}\n")
    digests = tarball.with_name(tarball.name + ".DIGESTS")
    digests.write_text(signing.clear_sign(home, "".join(lines), key))


def _tar_xz(source_dir: Path, members: list[str], destination: Path) -> None:
    subprocess.run(
        ["tar", "--create", "--xattrs", "--numeric-owner", "--sort=name", "--use-compress-program=xz -6",
         "--file", str(destination), "--directory", str(source_dir), *members],
        check=True,
    )  # fmt: skip


def _build_stage3(world: World, work: Path) -> None:
    release_dir = world.mirror_dir / AUTOBUILDS / world.stage3_timestamp
    release_dir.mkdir(parents=True)
    root = work / "stage3-root"
    root.mkdir()
    populate_stage3_root(root)
    tarball = release_dir / world.stage3_name
    _tar_xz(root, ["."], tarball)
    listing = subprocess.run(
        ["tar", "--list", "--verbose", "--numeric-owner", "--file", str(tarball)],
        check=True,
        capture_output=True,
    ).stdout
    contents = tarball.with_name(tarball.name + ".CONTENTS.gz")
    contents.write_bytes(
        subprocess.run(["gzip", "-9n"], input=listing, check=True, capture_output=True).stdout
    )
    key = world.release_fingerprint
    write_digests(world.gnupg_home, tarball, key, [contents])
    signing.sign_detached(world.gnupg_home, tarball, tarball.with_name(tarball.name + ".asc"), key)
    pointer_text = (
        "# Latest as of Sun, 22 Nov 2026 18:00:04 +0000\n"
        "# ts=1795370404\n"
        f"{world.stage3_timestamp}/{world.stage3_name} {tarball.stat().st_size}\n"
    )
    (world.mirror_dir / world.pointer_path).write_text(
        signing.clear_sign(world.gnupg_home, pointer_text, key)
    )


def _build_snapshot(world: World, work: Path, flat_distfiles: Path, compile_scale: int) -> None:
    snapshots = world.mirror_dir / "snapshots"
    snapshots.mkdir(parents=True)
    repository.write_repository(work / "portage", flat_distfiles, SNAPSHOT_TIMESTAMP_CHK, compile_scale)
    # The Linux source the kernel tests build; the tests serve the tarball itself (build_world's
    # extra_distfiles), the snapshot vouches for it.
    repository.write_kernel_sources(work / "portage", debian.kernel_source_tarball(work / "kernel-source"))
    dated = snapshots / world.snapshot_name
    _tar_xz(work, ["portage"], dated)
    # Gentoo publishes the dated snapshot and a portage-latest copy, each with .gpgsig and .md5sum.
    for tarball in (dated, snapshots / "portage-latest.tar.xz"):
        if tarball != dated:
            shutil.copyfile(dated, tarball)
        signing.sign_detached(
            world.gnupg_home,
            tarball,
            tarball.with_name(tarball.name + ".gpgsig"),
            world.snapshot_fingerprint,
        )
        md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
        tarball.with_name(tarball.name + ".md5sum").write_text(f"{md5}  {tarball.name}\n")


def _generate(root: Path, compile_scale: int) -> None:
    world = _world_for(root)
    work = root / "work"
    work.mkdir(parents=True)
    fingerprints = {
        "release": signing.make_signing_key(world.gnupg_home, signing.RELEASE_KEY_UID),
        "snapshot": signing.make_signing_key(world.gnupg_home, signing.SNAPSHOT_KEY_UID),
        "binhost": signing.make_signing_key(world.gnupg_home, signing.BINHOST_KEY_UID),
    }
    (root / "fingerprints.json").write_text(json.dumps(fingerprints, indent=2) + "\n")
    try:
        signing.export_public_key(world.gnupg_home, world.keyring)
        flat = work / "distfiles"
        _build_stage3(world, work)
        repository.write_distfiles(flat, work / "stage3-root", compile_scale)
        _build_snapshot(world, work, flat, compile_scale)
        build_upstream_binhost(
            world.file(world.stage3_path),
            world.file(world.snapshot_path),
            world.gnupg_home,
            fingerprints["binhost"],
            world.upstream_binhost_dir,
            work / "upstream-binhost",
        )
        _lay_out_distfiles(flat, world.mirror_dir / "distfiles")
    finally:
        signing.stop_agent(world.gnupg_home)
    shutil.rmtree(work)


def generator_hash() -> str:
    """Content hash of the code and files that generate the world (OpenRC's scripts too): the cache key."""
    here = Path(__file__).parent
    # debian.py names the Linux source whose Manifest line the snapshot carries.
    return cache.source_hash([here, here.parent / "debian.py"])


def _cached_world(compile_scale: int) -> Path:
    key = generator_hash() if compile_scale == 1 else f"{generator_hash()}-scale{compile_scale}"
    return cache.entry("world", key, lambda dest: _generate(dest, compile_scale))


def build_world(dest: Path, *, extra_distfiles: Iterable[Path] = (), compile_scale: int = 1) -> World:
    """Lay out a fresh copy of the world in ``dest`` (created; must not exist yet).

    ``compile_scale`` multiplies the C each synthetic library compiles (the benchmark's heavier world;
    the package set is the same). Each scale is a world of its own in the cache.
    """
    if compile_scale < 1:
        raise ValueError(f"compile_scale must be at least 1, not {compile_scale}")
    shutil.copytree(_cached_world(compile_scale), dest, symlinks=True, ignore=shutil.ignore_patterns("S.*"))
    world = _world_for(Path(dest))
    extra_names = []
    for extra in extra_distfiles:
        destination = world.file(world.distfile_path(extra.name))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extra, destination)
        extra_names.append(extra.name)
    return dataclasses.replace(world, distfiles=tuple(sorted((*world.distfiles, *extra_names))))


__all__ = [
    "LAYOUT_CONF",
    "ServedRequest",
    "World",
    "WorldServer",
    "build_world",
    "distfile_layout",
    "write_digests",
]
