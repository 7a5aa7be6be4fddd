"""The world's tree has what a worker image emerges (gentoo_farm.config.WORKER_PACKAGES), and it runs."""

import time
from pathlib import Path

import pytest

from gentoo_farm.config import WORKER_PACKAGES
from tests.test_world import in_chroot
from tests.workerimage import emerge_worker_root
from tests.world import World, build_world, repository

# What the worker's stages run, and what each prints first when asked its version (extlinux: on stderr).
VERSION_COMMANDS = {
    "python3 --version": "Python 3.11.2",
    "qemu-img --version": "qemu-img version 7.2.22",
    "qemu-system-x86_64 --version": "QEMU emulator version 7.2.22",
    "extlinux --version": "extlinux 6.04",
    "git --version": "git version 2.39.5",
    "zstd --version": "*** Zstandard CLI (64-bit) v1.5.4",
    "genisoimage --version": "genisoimage 1.1.11",
    "ccache --version": "ccache version 4.7.5",
    "gpg --version": "gpg (GnuPG) 2.2.40",
    "xz --version": "xz (XZ Utils) 5.4.1",
    "bc --version": "bc 1.07.1",
    "flex --version": "flex 2.6.4",
    "bison --version": "bison (GNU Bison) 3.8.2",
    "cpio --version": "cpio (GNU cpio) 2.13",
    "kmod --version": "kmod version 30",
    "mke2fs -V": "mke2fs 1.47.0",
    "gcc -dumpfullversion": "12.2.0",
}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "world")


@pytest.mark.slow
def test_the_worker_packages_emerge_from_the_world_and_run_in_the_root(world: World, tmp_path: Path) -> None:
    built = {build.atom for build in repository.WORKER_BUILDS}
    assert set(WORKER_PACKAGES) <= built
    started = time.monotonic()
    root, run = emerge_worker_root(world, tmp_path)
    print(f"unpacking the stage3 and emerging the worker packages took {time.monotonic() - started:.0f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    compiled = run.result["packages_compiled"]
    assert isinstance(compiled, list)
    assert {package.rsplit("-", 1)[0] for package in compiled} == built

    for command, expected in VERSION_COMMANDS.items():
        ran = in_chroot(root, f"{command} 2>&1")
        assert ran.returncode == 0 and ran.stdout.startswith(expected), (command, ran.stdout, ran.stderr)
    # The kernel build's compiler: a C program compiles, links against glibc and runs.
    seven = in_chroot(
        root, "printf 'int main(void) { return 7; }' | gcc -O2 -x c -o /tmp/seven - && /tmp/seven"
    )
    assert seven.returncode == 7, seven.stderr
    venv = in_chroot(root, "python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip --version")
    assert venv.returncode == 0, venv.stderr
    assert venv.stdout.startswith("pip 23.0.1 from /tmp/venv/"), venv.stdout
