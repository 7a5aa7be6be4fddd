"""c['builders']: mirror, kernel, overlay and image, each from its factory module."""

from buildbot.plugins import util

from gentoo_farm.artifacts import IMAGE, KERNEL, MIRROR, OVERLAY
from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories import image, kernel, mirror, overlay
from gentoo_farm.master.workers import worker_names_for

FACTORIES = {MIRROR: mirror.factory, KERNEL: kernel.factory, OVERLAY: overlay.factory, IMAGE: image.factory}


def builders(config: FarmConfig) -> list[util.BuilderConfig]:
    return [
        util.BuilderConfig(
            name=name,
            workernames=worker_names_for(config, name),
            factory=make(config),
            # Each build makes the newest set of its kind: a waiting request that a newer, compatible one
            # (same sources and properties) supersedes is skipped (Buildbot's default collapse rules).
            collapseRequests=True,
        )
        for name, make in FACTORIES.items()
    ]
