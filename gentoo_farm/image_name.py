"""The name of a published image, ``gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH``: formatted and parsed here only.

The name is the stem of every file of an image set (``gentoo-20261202.1-amd64.qcow2``,
``gentoo-20261202.1-amd64.manifest.json``) and what Glance calls the image. ``.N`` counts the images of one
UTC day and architecture after the first (:func:`gentoo_farm.store.sets.next_image_name` picks it).
A variant's images (the worker image, ``gentoo-farm-worker-20261202-amd64``) carry its name after
``gentoo-`` and count their own ``.N``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

WORKER_VARIANT = "farm-worker"
"""The image OpenStack workers boot: the cloud image and what every toolkit stage runs."""
VARIANTS = ("", WORKER_VARIANT)
"""Every image variant's name part; "" is the plain cloud image (``gentoo-YYYYMMDD-ARCH``)."""

_ARCH = re.compile(r"[0-9a-z_]+")
_VARIANT = "|".join(variant for variant in VARIANTS if variant)
_NAME = (
    rf"gentoo-(?:(?P<variant>{_VARIANT})-)?"
    r"(?P<day>\d{8})(?:\.(?P<serial>[1-9]\d*))?-(?P<arch>[0-9a-z_]+)"
)
_IMAGE_NAME = re.compile(_NAME)
_IMAGE_FILE = re.compile(rf"{_NAME}\.(?P<format>[0-9a-z.]+)")
_SHAPE = "gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH"


class ImageNameError(ValueError):
    """A name that is not an image name; the message quotes it and says what was expected."""


@dataclass(frozen=True)
class ImageName:
    """``gentoo-20261125-amd64``, or ``gentoo-20261125.2-amd64`` for the day's third image of amd64."""

    day: date
    arch: str
    serial: int = 0
    """0 for the day's first image of ``arch`` (no ``.N`` in the name), then 1, 2, ..."""
    variant: str = ""
    """One of :data:`VARIANTS`: "" for the cloud image, ``farm-worker`` for ``gentoo-farm-worker-...``."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            known = ", ".join(repr(variant) for variant in VARIANTS)
            raise ImageNameError(f"image variant {self.variant!r} is not one of {known}")
        if not _ARCH.fullmatch(self.arch):
            raise ImageNameError(f"image architecture {self.arch!r} is not lowercase letters, digits or _")
        if self.serial < 0:
            raise ImageNameError(f"image serial {self.serial} of {self.arch} is negative")

    def __str__(self) -> str:
        return f"{self.prefix}{self.day:%Y%m%d}{f'.{self.serial}' if self.serial else ''}-{self.arch}"

    @property
    def prefix(self) -> str:
        """``gentoo-`` and the variant: what the variant's names, stable ones included, start with."""
        return f"gentoo-{self.variant}-" if self.variant else "gentoo-"

    @classmethod
    def parse(cls, text: str) -> ImageName:
        match = _IMAGE_NAME.fullmatch(text)
        if match is None:
            raise ImageNameError(f"{text!r} is not an image name ({_SHAPE})")
        return cls._from_match(match, text)

    @classmethod
    def parse_file(cls, file_name: str) -> tuple[ImageName, str]:
        """The image a set's file belongs to and the file's format (``qcow2``, ``manifest.json`` ...)."""
        match = _IMAGE_FILE.fullmatch(file_name)
        if match is None:
            raise ImageNameError(f"image file {file_name!r} is not named {_SHAPE}.<format>")
        return cls._from_match(match, file_name), match["format"]

    @classmethod
    def _from_match(cls, match: re.Match[str], text: str) -> ImageName:
        try:
            day = datetime.strptime(match["day"], "%Y%m%d").date()
        except ValueError:
            raise ImageNameError(f"{text!r} names no calendar day ({match['day']})") from None
        return cls(day, match["arch"], int(match["serial"] or 0), match["variant"] or "")
