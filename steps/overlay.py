"""The overlay builder's step: the vmoverride tarball."""

from gentoo_farm.steps.base import FarmWorkerStep


class BuildOverlay(FarmWorkerStep):
    """``farm-worker overlay``: sets ``overlay_path`` and ``overlay_sha512``."""

    renderables = ("overlay", "output")

    def __init__(self, overlay: object, output: object, **kwargs) -> None:
        kwargs.setdefault("name", "build-overlay")
        super().__init__("overlay", **kwargs)
        self.overlay = overlay
        self.output = output

    def stage_arguments(self) -> list[object]:
        return [self.overlay, "--output", self.output]
