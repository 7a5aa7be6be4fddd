"""The image's name, decided on the master from the store right before its files are uploaded."""

from __future__ import annotations

from buildbot.process.results import SUCCESS

from gentoo_farm.image_name import ImageNameError
from gentoo_farm.steps.base import REQUIRED
from gentoo_farm.steps.store import StoreStep, declared_parameters
from gentoo_farm.store import StoreError
from gentoo_farm.store.sets import next_image_name

IMAGE_NAME_PROPERTY = "image_name"


class NameImage(StoreStep):
    """Decide the image's name (``gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH`` of the variant ``images_kind``
    holds, :func:`next_image_name`) right before its files are uploaded under it; the property
    ``image_name`` carries it to the publish steps."""

    name = "name-image"
    parameters = declared_parameters(arch=REQUIRED, images_kind="images")
    renderables = ("arch",)
    images_kind: str

    async def run(self) -> int:
        try:
            name = await self.in_thread(next_image_name, str(self.arch), None, self.images_kind)
        except (StoreError, ImageNameError) as error:
            return await self.fail(error)
        self.set_properties({IMAGE_NAME_PROPERTY: str(name)})
        self.outcome = f"image name {name}"
        return SUCCESS
