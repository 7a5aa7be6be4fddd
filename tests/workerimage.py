"""The worker image OpenStack workers boot, built from the stand-in world as the farm builds it.

The world's stage3 with what a worker image emerges ([image] packages, sudo for [image] admin = "sudo",
and gentoo_farm.config.WORKER_PACKAGES), Debian's kernel made into a vmlinuz tarball by the
kernel-package stage, the default overlay: assembled, then made into a compressed qcow2 by the disk
stage. Built once per machine into the test cache, keyed by every input (the world generator's source,
the toolkit's stages, the overlay, the kernel package, this code), then used in place.
"""

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gentoo_farm.config import WORKER_PACKAGES
from tests import cache, debian, imagetest, test_emerge
from tests.imagetest import DEFAULT_OVERLAY, assemble, farm_worker, make_overlay, results
from tests.world import World, WorldServer, build_world, generator_hash, repository
from tests.world.stages import StageRun

TOOLKIT = Path(__file__).parent.parent / "workers" / "toolkit"
IMAGE_NAME = "worker.qcow2"
BUILD_RECORD = "build.json"


@dataclass(frozen=True)
class WorkerImage:
    path: Path
    kernel_release: str
    build_seconds: float
    """How long building it took when it went into the cache."""


def emerge_worker_root(world: World, scratch: Path, *also: str) -> tuple[Path, StageRun]:
    """The world's stage3 unpacked into ``scratch/root`` with WORKER_PACKAGES and ``also`` emerged through
    a fresh farm store (``scratch/store``) and the world's mirror: the root and the emerge stage's run."""
    root = test_emerge.build_root(world, scratch / "root")
    store = scratch / "store"
    (store / "binpkgs").mkdir(parents=True)
    (store / "distfiles").mkdir()
    with WorldServer(world.mirror_dir) as upstream, WorldServer(store) as farm:
        run = test_emerge.emerge(world, root, scratch / "work", farm, upstream, *also, *WORKER_PACKAGES)
    return root, run


def _checked(process: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed ({process.returncode}): {process.stdout[-3000:]}{process.stderr}")
    return process


def _build(dest: Path, kernel_package: Path) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gf-worker-image-") as name:
        scratch = Path(name)
        world = build_world(scratch / "world")
        # What the farm emerges for a worker image: the image's packages, sudo, the worker's.
        root, run = emerge_worker_root(world, scratch, *world.package_set, repository.SUDO_PACKAGE)
        if run.returncode != 0:
            raise RuntimeError(
                f"emerging the worker image's packages failed: {run.stdout[-3000:]}{run.stderr}"
            )
        kernel = scratch / "vmlinuz.tar.zst"
        _checked(farm_worker("kernel-package", kernel_package, "--output", kernel), "kernel-package")
        assembled = _checked(assemble(root, kernel, make_overlay(scratch)), "assemble")
        dest.mkdir()
        _checked(farm_worker("disk", root, "--output", dest / IMAGE_NAME, "--compress"), "disk")
    record = {
        "kernel_release": str(results(assembled)["kernel_release"]),
        "build_seconds": time.monotonic() - started,
    }
    (dest / BUILD_RECORD).write_text(json.dumps(record) + "\n")


def worker_image() -> WorkerImage:
    """The worker image from the test cache, built first if it is not there (minutes, on 2 cores)."""
    kernel_package = debian.download(debian.kernel_image_package())
    key = cache.source_hash(
        [Path(__file__), Path(test_emerge.__file__), Path(imagetest.__file__), TOOLKIT, DEFAULT_OVERLAY],
        generator_hash(),
        kernel_package.name,
        *WORKER_PACKAGES,
    )
    entry = cache.entry("worker-image", key, lambda dest: _build(dest, kernel_package))
    record = json.loads((entry / BUILD_RECORD).read_text())
    return WorkerImage(entry / IMAGE_NAME, record["kernel_release"], record["build_seconds"])
