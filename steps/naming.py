"""The image's name, decided on the master from the store right before its files are uploaded."""

from __future__ import annotations

from buildbot.process.results import SUCCESS

from gentoo_farm.image_name import ImageNameError
from gentoo_farm.steps.base import Renderable
from gentoo_farm.steps.store import StoreStep
from gentoo_farm.store import StoreError, StoreSettings
from gentoo_farm.store.sets import next_image_name

IMAGE_NAME_PROPERTY = "image_name"


class NameImage(StoreStep):
    """Decide the image's name (``gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH`` of the variant ``images_kind``
    holds, :func:`next_image_name`) right before its files are uploaded under it; the property
    ``image_name`` carries it to the publish steps."""

    renderables = ("arch",)

    def __init__(
        self, store_settings: StoreSettings, arch: Renderable, images_kind: str = "images", **kwargs: object
    ) -> None:
        kwargs.setdefault("name", "name-image")
        super().__init__(store_settings, **kwargs)
        self.arch = arch
        self.images_kind = images_kind

    async def run(self) -> int:
        try:
            name = await self.in_thread(next_image_name, str(self.arch), None, self.images_kind)
        except (StoreError, ImageNameError) as error:
            return await self.fail(error)
        self.set_properties({IMAGE_NAME_PROPERTY: str(name)})
        self.outcome = f"image name {name}"
        return SUCCESS
