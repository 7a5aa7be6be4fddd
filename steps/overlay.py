"""The overlay builder's step: the vmoverride tarball."""

from gentoo_farm.steps.base import FarmWorkerStep, StageArgument, declared


class BuildOverlay(FarmWorkerStep):
    """``farm-worker overlay``: sets ``overlay_path`` and ``overlay_sha512``."""

    stage = "overlay"
    name = "build-overlay"
    arguments = declared(overlay=StageArgument(), output=StageArgument("--output"))
