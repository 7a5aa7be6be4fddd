"""c['builders']: mirror, kernel, overlay and image, each from its factory module, and the worker image
(the image's factory for that variant) when the farm builds one."""

from collections.abc import Callable
from functools import partial

from buildbot.plugins import util
from buildbot.process.factory import BuildFactory

from gentoo_farm.artifacts import IMAGE, IMAGE_VARIANTS, KERNEL, MIRROR, OVERLAY, WORKER_IMAGE
from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories import image, kernel, mirror, overlay
from gentoo_farm.master.workers import worker_names_for

FACTORIES: dict[str, Callable[[FarmConfig], BuildFactory]] = {
    MIRROR: mirror.factory,
    KERNEL: kernel.factory,
    OVERLAY: overlay.factory,
    IMAGE: image.factory,
    WORKER_IMAGE: partial(image.factory, variant=IMAGE_VARIANTS[WORKER_IMAGE]),
}


def built_by(config: FarmConfig) -> list[str]:
    """The builders this farm configures: every one, but the worker image's only when it builds one."""
    return [name for name in FACTORIES if name != WORKER_IMAGE or config.builds_worker_image]


def builders(config: FarmConfig) -> list[util.BuilderConfig]:
    return [
        util.BuilderConfig(
            name=name,
            workernames=worker_names_for(config, name),
            factory=FACTORIES[name](config),
            # Each build makes the newest set of its kind: a waiting request that a newer, compatible one
            # (same sources and properties) supersedes is skipped (Buildbot's default collapse rules).
            collapseRequests=True,
        )
        for name in built_by(config)
    ]
