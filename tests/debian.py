"""Debian packages the tests feed the farm (a binary kernel, the kernel source, the stand-in stage3's parts).

``apt-get download`` fetches them once per machine into a cache (``FARM_DEB_CACHE``, default the test
cache's ``debs`` directory: tests/cache.py), so CI needs only apt access: no package is installed on the host.
A package's file name carries its version, so a new candidate version is a download of its own.
"""

import fcntl
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests import cache

KERNEL_META_PACKAGE = "linux-image-amd64"
KERNEL_SOURCE_PACKAGE = "linux-source-6.1"


def cache_dir() -> Path:
    configured = os.environ.get("FARM_DEB_CACHE")
    if not configured:
        return cache.directory("debs")
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def kernel_image_package() -> str:
    """The linux-image-KVER-amd64 package the linux-image-amd64 metapackage currently names."""
    depends = subprocess.run(
        ["apt-cache", "depends", KERNEL_META_PACKAGE], check=True, capture_output=True, text=True
    ).stdout
    for line in depends.splitlines():
        name = line.strip().removeprefix("Depends: ")
        if name.startswith("linux-image-") and name != KERNEL_META_PACKAGE:
            return name
    raise RuntimeError(f"apt-cache depends {KERNEL_META_PACKAGE} names no linux-image package:\n{depends}")


def download(package: str) -> Path:
    """The .deb of ``package`` (the candidate version), downloaded into the cache if missing."""
    directory = cache_dir()
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(directory.glob(f"{package}_*.deb"))
        if not found:
            subprocess.run(["apt-get", "download", "-q", package], cwd=directory, check=True)
            found = sorted(directory.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no {package}_*.deb in {directory}")
    return found[-1]


def dependencies(deb: Path) -> set[str]:
    """Every package name ``deb``'s Depends and Pre-Depends mention (each alternative, no versions)."""
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Depends", "Pre-Depends"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = set()
    for line in fields.splitlines():
        relations = line.split(":", 1)[1] if line.startswith(("Depends:", "Pre-Depends:")) else line
        for alternative in relations.replace("|", ",").split(","):
            if alternative.strip():
                names.add(alternative.split()[0].split(":")[0])
    return names


def members(deb: Path) -> list[str]:
    """The paths ``deb`` installs (``./usr/sbin/sshd`` ...), directories included."""
    archive = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.getnames()


def extract(deb: Path, root: Path) -> None:
    """Unpack ``deb``'s files into ``root`` without running its maintainer scripts (nothing is installed)."""
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)], check=True)


def kernel_source_tarball(destination: Path) -> Path:
    """Debian's Linux source tarball (linux-source-6.1.tar.xz), extracted from its package once."""
    deb = download(KERNEL_SOURCE_PACKAGE)
    tarball = cache_dir() / f"{KERNEL_SOURCE_PACKAGE}.tar.xz"
    if not tarball.exists():
        partial = tarball.with_name(tarball.name + ".partial")
        with partial.open("wb") as out:
            unpacked = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            subprocess.run(
                ["tar", "-xO", f"./usr/src/{KERNEL_SOURCE_PACKAGE}.tar.xz"],
                stdin=unpacked.stdout,
                stdout=out,
                check=True,
            )
            unpacked.wait()
        partial.replace(tarball)
    destination.mkdir(parents=True, exist_ok=True)
    linked = destination / tarball.name
    if not linked.exists():
        try:
            os.link(tarball, linked)
        except OSError:  # another filesystem: a copy does the same job
            shutil.copyfile(tarball, linked)
    return linked
