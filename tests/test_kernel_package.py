"""A binary kernel package (Debian's linux-image, as gentoo-kernel-bin would be) fetched through the
farm's distfile mirror and made into the vmlinuz tarball; and the kernel builder that uses it."""

import shutil
import subprocess
from pathlib import Path

import pytest

from gentoo_farm.master.buildmaster import buildmaster_config
from tests import debian
from tests.farmtest import farm_command, set_option
from tests.world.server import WorldServer
from tests.world.stages import run_stage


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distfile mirror holding the kernel package, as the farm's store would after a first fetch."""
    root = tmp_path_factory.mktemp("mirror")
    (root / "distfiles").mkdir()
    shutil.copyfile(debian.download(debian.kernel_image_package()), root / "distfiles" / "linux-image.deb")
    return root


def test_the_package_comes_through_the_first_mirror_that_has_it(mirror: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with WorldServer(tmp_path / "empty") as farm_mirror, WorldServer(mirror) as upstream:
        urls = [f"{farm_mirror.url}/distfiles/linux-image.deb", f"{upstream.url}/distfiles/linux-image.deb"]
        arguments = ["--distdir", tmp_path / "distfiles", "--output", tmp_path / "vmlinuz.tar.zst"]
        first = run_stage(
            "kernel-package", *[item for url in urls for item in ("--package-url", url)], *arguments
        )
        again = run_stage("kernel-package", "--package-url", urls[1], *arguments)

    assert first.returncode == 0, first.stderr
    release = first.result["kernel_release"]
    listing = ["tar", "-tf", tmp_path / "vmlinuz.tar.zst"]
    names = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
    assert f"boot/vmlinuz-{release}" in names
    assert f"boot/initramfs-{release}" in names
    assert any(name.startswith(f"lib/modules/{release}/") for name in names)
    assert "kernel package linux-image.deb: already downloaded" in again.stdout
    assert again.result["vmlinuz_sha512"]


def test_no_mirror_has_the_package(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with WorldServer(tmp_path / "empty") as empty:
        failed = run_stage(
            "kernel-package",
            "--package-url",
            f"{empty.url}/distfiles/linux-image.deb",
            "--distdir",
            tmp_path / "distfiles",
            "--output",
            tmp_path / "vmlinuz.tar.zst",
        )
    assert failed.returncode == 1
    assert "cannot fetch the kernel package: " in failed.error
    assert "distfiles/linux-image.deb: Not Found" in failed.error
    assert not (tmp_path / "vmlinuz.tar.zst").exists()


def test_farm_toml_package_switches_the_kernel_builder_to_it(tmp_path: Path) -> None:
    farm_command("init", str(tmp_path / "farm"))
    set_option(tmp_path / "farm", "kernel", "package", '"gentoo-kernel-bin-6.1.119-1.gpkg.tar"')

    config = buildmaster_config(tmp_path / "farm")

    (kernel,) = [builder for builder in config["builders"] if builder.name == "kernel"]
    names = [step.buildStep().name for step in kernel.factory.steps]
    assert "kernel-from-package" in names
    assert "build-kernel" not in names and "checkout-kernel-config" not in names
    # Nothing vouches for a kernel package (no Manifest): kernel builds push nothing into the mirror.
    assert "list-new" not in names and "push-back" not in names
