"""The world's stand-in for Gentoo's official binhost: a signed gpkg of a package only it has.

Gentoo publishes binary packages under ``releases/<arch>/binpackages/<profile>/<flavour>/`` on its mirrors,
each gpkg signed by a key in its release keyring, and stage3s ship a ``gentoobinhost.conf`` pointing there.
The world does the same on its mirror: the package (``UPSTREAM_ONLY_PACKAGE``, its ebuild in no snapshot)
is built by the farm's own emerge stage in a throwaway root, signed at build time by Portage's
binpkg-signing with the world's binhost key, which the world's keyring carries (as Gentoo's does).
"""

from pathlib import Path

from tests.world import repository
from tests.world.stages import run_stage

UPSTREAM_BINHOST_PATH = "releases/amd64/binpackages/23.0/x86-64"
# The host the stage3's gentoobinhost.conf names: the world server's port is chosen when it starts, so tests
# point the entry at it (point_stage3_binrepo).
PLACEHOLDER_MIRROR = "https://distfiles.farm.invalid"
STAGE3_BINREPO = "etc/portage/binrepos.conf/gentoobinhost.conf"
UPSTREAM_ONLY_PACKAGE = "app-misc/upstream-only"
UPSTREAM_ONLY_VERSION = "1.0"
UPSTREAM_ONLY_FILE = "usr/share/upstream-only/origin"
UPSTREAM_ONLY_MESSAGE = "built by the upstream binhost"


def stage3_binrepo(mirror: str) -> str:
    """A stage3's gentoobinhost.conf (Gentoo's own words, with the world's mirror)."""
    return (
        "# These settings were set by the catalyst build script that automatically\n"
        "# built this stage.\n"
        "[gentoobinhost]\n"
        "priority = 1\n"
        f"sync-uri = {mirror}/{UPSTREAM_BINHOST_PATH}\n"
    )


def point_stage3_binrepo(root: Path, mirror_url: str) -> Path:
    """Point an unpacked world stage3's gentoobinhost.conf at the world mirror served at ``mirror_url``."""
    entry = root / STAGE3_BINREPO
    entry.write_text(entry.read_text().replace(PLACEHOLDER_MIRROR, mirror_url.rstrip("/")))
    return entry


UPSTREAM_ONLY_EBUILD = f"""\
# Copyright 2026 Gentoo Farm test world
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DESCRIPTION="A package the stand-in upstream binhost has and no snapshot does"
HOMEPAGE="https://farm.invalid/"
S="${{WORKDIR}}"

LICENSE="GPL-2"
SLOT="0"
KEYWORDS="amd64"

src_install() {{
	insinto /{Path(UPSTREAM_ONLY_FILE).parent}
	newins - {Path(UPSTREAM_ONLY_FILE).name} <<< "{UPSTREAM_ONLY_MESSAGE}"
}}
"""


def build_upstream_binhost(
    stage3: Path, snapshot: Path, gnupg_home: Path, key: str, destination: Path, work: Path
) -> None:
    """Build the upstream-only package's gpkg, signed by ``key``, into ``destination`` with its index."""
    root = work / "root"
    unpacked = run_stage("unpack-root", "--stage3", stage3, "--snapshot", snapshot, "--root", root)
    if unpacked.returncode != 0:
        raise RuntimeError(f"unpacking the stage3 for the upstream binhost failed: {unpacked.stderr}")
    package_dir = root / "var/db/repos/gentoo" / UPSTREAM_ONLY_PACKAGE
    package_dir.mkdir(parents=True)
    name = UPSTREAM_ONLY_PACKAGE.split("/")[1]
    (package_dir / f"{name}-{UPSTREAM_ONLY_VERSION}.ebuild").write_text(UPSTREAM_ONLY_EBUILD)
    with (root / "etc/portage/make.conf").open("a") as make_conf:
        # FEATURES is incremental: the emerge stage's own FEATURES add to this.
        make_conf.write(
            'FEATURES="binpkg-signing"\n'
            f'BINPKG_GPG_SIGNING_GPG_HOME="{gnupg_home}"\n'
            f'BINPKG_GPG_SIGNING_KEY="{key}"\n'
            # Portage's default wraps gpg in flock on /run/lock, which a test machine may lack.
            'BINPKG_GPG_SIGNING_BASE_COMMAND="gpg --sign --armor [PORTAGE_CONFIG]"\n'
            # Portage checks the package it just signed; the signing home (root's alone) trusts the key.
            f'BINPKG_GPG_VERIFY_GPG_HOME="{gnupg_home}"\n'
            'GPG_VERIFY_USER_DROP=""\nGPG_VERIFY_GROUP_DROP=""\n'
        )
    built = run_stage(
        "emerge", "--root", root, "--pkgdir", destination, "--distdir", work / "distfiles",
        "--workdir", work / "scratch", "--profile", repository.PROFILE, "--jobs", "1",
        UPSTREAM_ONLY_PACKAGE,
    )  # fmt: skip
    if built.returncode != 0:
        raise RuntimeError(f"building the upstream binhost's package failed:\n{built.stdout[-3000:]}")
