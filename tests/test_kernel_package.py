"""A binary kernel package (Debian's linux-image, as gentoo-kernel-bin would be) fetched through the
farm's distfile mirror and made into the vmlinuz tarball; and the kernel builder that uses it."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gentoo_farm.master.buildmaster import buildmaster_config
from tests import debian
from tests.farmtest import farm_command, set_option
from tests.world import LAYOUT_CONF, distfile_layout
from tests.world.repository import manifest_line
from tests.world.server import WorldServer
from tests.world.stages import run_stage


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upstream mirror in GLEP 75 layout holding the kernel package."""
    root = tmp_path_factory.mktemp("mirror")
    distdir = root / "distfiles"
    distdir.mkdir()
    (distdir / "layout.conf").write_text(LAYOUT_CONF)
    package = distdir / distfile_layout(distdir).get_path("linux-image.deb")
    package.parent.mkdir()
    shutil.copyfile(debian.download(debian.kernel_image_package()), package)
    return root


def package_dist(mirror: Path) -> str:
    """The DIST line a snapshot's Manifest would have for the package."""
    return manifest_line(next((mirror / "distfiles").glob("*/linux-image.deb")))


def test_the_package_comes_through_the_first_mirror_that_has_it(mirror: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "distfiles").mkdir(parents=True)
    (tmp_path / "empty" / "distfiles" / "layout.conf").write_text("[structure]\n0=flat\n")
    with WorldServer(tmp_path / "empty") as farm_mirror, WorldServer(mirror) as upstream:
        arguments = [
            "--package-dist", package_dist(mirror),
            "--distdir", tmp_path / "distfiles",
            "--output", tmp_path / "vmlinuz.tar.zst",
        ]  # fmt: skip
        first = run_stage("kernel-package", "--mirror", farm_mirror.url, "--mirror", upstream.url, *arguments)
        again = run_stage("kernel-package", "--mirror", upstream.url, *arguments)

    assert first.returncode == 0, first.stderr
    # Each mirror's layout.conf placed the file: flat on the farm's, GLEP 75 upstream.
    assert "/distfiles/linux-image.deb" in farm_mirror.requested_paths()
    assert f"/distfiles/{distfile_layout(mirror / 'distfiles').get_path('linux-image.deb')}" in (
        upstream.requested_paths()
    )
    release = first.result["kernel_release"]
    listing = ["tar", "-tf", tmp_path / "vmlinuz.tar.zst"]
    names = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
    assert f"boot/vmlinuz-{release}" in names
    assert f"boot/initramfs-{release}" in names
    assert any(name.startswith(f"lib/modules/{release}/") for name in names)
    assert "kernel package linux-image.deb: already downloaded and matches its Manifest" in again.stdout
    assert again.result["vmlinuz_sha512"]


def test_a_package_that_differs_from_its_manifest_is_refused(mirror: Path, tmp_path: Path) -> None:
    # The BLAKE2B and the size still match: only the SHA512 the Manifest lists differs.
    line = re.sub(r"SHA512 [0-9a-f]+", "SHA512 " + "0" * 128, package_dist(mirror))
    with WorldServer(mirror) as upstream:
        failed = run_stage(
            "kernel-package",
            "--mirror",
            upstream.url,
            "--package-dist",
            line,
            "--distdir",
            tmp_path / "distfiles",
            "--output",
            tmp_path / "vmlinuz.tar.zst",
        )
    assert failed.returncode == 1
    assert failed.error.startswith("cannot fetch the kernel package linux-image.deb: ")
    expected = "linux-image.deb does not match its Manifest DIST line (Failed on SHA512 verification"
    assert expected in failed.error
    assert not (tmp_path / "distfiles" / "linux-image.deb").exists()


def test_no_mirror_has_the_package(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with WorldServer(tmp_path / "empty") as empty:
        failed = run_stage(
            "kernel-package",
            "--mirror",
            empty.url,
            "--package-dist",
            "DIST linux-image.deb 10 BLAKE2B 1a SHA512 2b",
            "--distdir",
            tmp_path / "distfiles",
            "--output",
            tmp_path / "vmlinuz.tar.zst",
        )
    assert failed.returncode == 1
    assert "cannot fetch the kernel package linux-image.deb: " in failed.error
    assert "distfiles/linux-image.deb: Not Found" in failed.error
    assert not (tmp_path / "vmlinuz.tar.zst").exists()


def test_farm_toml_package_switches_the_kernel_builder_to_it(tmp_path: Path) -> None:
    farm_command("init", str(tmp_path / "farm"))
    set_option(tmp_path / "farm", "kernel", "package", '"gentoo-kernel-bin-6.1.119-1.gpkg.tar"')

    config = buildmaster_config(tmp_path / "farm")

    (kernel,) = [builder for builder in config["builders"] if builder.name == "kernel"]
    names = [step.buildStep().name for step in kernel.factory.steps]
    assert "kernel-from-package" in names
    # The published snapshot's Manifest line for the package keys the build and checks the download.
    assert names[names.index("clean") + 1 :][:4] == [
        "resolve-snapshot",
        "download-snapshot",
        "kernel-source",
        "input-key",
    ]
    assert "build-kernel" not in names and "checkout-kernel-config" not in names
    # Nothing vouches for a kernel package (no Manifest): kernel builds push nothing into the mirror.
    assert "list-new" not in names and "push-back" not in names
