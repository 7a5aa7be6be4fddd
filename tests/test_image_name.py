"""ImageName: the one place that formats ``gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH`` and reads it back."""

from __future__ import annotations

from datetime import date

import pytest

from gentoo_farm.image_name import WORKER_VARIANT, ImageName, ImageNameError


@pytest.mark.parametrize(
    ("image", "text"),
    [
        (ImageName(date(2026, 11, 25), "amd64"), "gentoo-20261125-amd64"),
        (ImageName(date(2026, 11, 25), "amd64", 2), "gentoo-20261125.2-amd64"),
        (ImageName(date(2027, 1, 2), "arm64", 11), "gentoo-20270102.11-arm64"),
        (ImageName(date(2026, 11, 25), "amd64", 0, WORKER_VARIANT), "gentoo-farm-worker-20261125-amd64"),
        (ImageName(date(2026, 11, 25), "amd64", 3, WORKER_VARIANT), "gentoo-farm-worker-20261125.3-amd64"),
    ],
)
def test_a_name_formats_and_parses_back(image: ImageName, text: str) -> None:
    assert str(image) == text
    assert ImageName.parse(text) == image


def test_a_file_of_the_set_names_its_image_and_format() -> None:
    image = ImageName(date(2026, 12, 2), "amd64", 1)
    assert ImageName.parse_file("gentoo-20261202.1-amd64.qcow2") == (image, "qcow2")
    assert ImageName.parse_file("gentoo-20261202.1-amd64.manifest.json") == (image, "manifest.json")
    worker = ImageName(date(2026, 12, 2), "amd64", 1, WORKER_VARIANT)
    assert ImageName.parse_file("gentoo-farm-worker-20261202.1-amd64.qcow2") == (worker, "qcow2")


def test_the_worker_variant_is_a_different_image_of_the_same_day() -> None:
    plain = ImageName.parse("gentoo-20261202-amd64")
    worker = ImageName.parse("gentoo-farm-worker-20261202-amd64")
    assert plain != worker
    assert (plain.prefix, worker.prefix) == ("gentoo-", "gentoo-farm-worker-")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "gentoo-latest-amd64",
            "'gentoo-latest-amd64' is not an image name (gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH)",
        ),
        ("gentoo-farm-worker-latest-amd64", "'gentoo-farm-worker-latest-amd64' is not an image name"),
        # Only the variants the farm builds: a name with another word there is no image of this farm.
        ("gentoo-builder-20261125-amd64", "'gentoo-builder-20261125-amd64' is not an image name"),
        ("gentoo-farm-worker-20261125.0-amd64", "'gentoo-farm-worker-20261125.0-amd64' is not an image name"),
        (
            "gentoo-farm-worker-20261340-amd64",
            "'gentoo-farm-worker-20261340-amd64' names no calendar day (20261340)",
        ),
        # .0 is never written: the day's first image has no serial, so two spellings never name one image.
        ("gentoo-20261125.0-amd64", "'gentoo-20261125.0-amd64' is not an image name"),
        ("gentoo-20261125-AMD64", "'gentoo-20261125-AMD64' is not an image name"),
        ("gentoo-20261125-amd64.qcow2", "'gentoo-20261125-amd64.qcow2' is not an image name"),
        ("gentoo-20261340-amd64", "'gentoo-20261340-amd64' names no calendar day (20261340)"),
    ],
)
def test_a_bad_name_is_refused_naming_it(text: str, reason: str) -> None:
    with pytest.raises(ImageNameError) as refused:
        ImageName.parse(text)
    assert str(refused.value).startswith(reason)


def test_a_bad_file_name_says_what_a_file_is_named() -> None:
    with pytest.raises(ImageNameError) as refused:
        ImageName.parse_file("disk.qcow2")
    assert str(refused.value) == (
        "image file 'disk.qcow2' is not named gentoo-[VARIANT-]YYYYMMDD[.N]-ARCH.<format>"
    )


def test_a_name_is_made_only_of_what_parses_back() -> None:
    with pytest.raises(ImageNameError, match="image architecture 'x86-64' is not lowercase letters"):
        ImageName(date(2026, 11, 25), "x86-64")
    with pytest.raises(ImageNameError, match="image serial -1 of amd64 is negative"):
        ImageName(date(2026, 11, 25), "amd64", -1)
    with pytest.raises(ImageNameError, match="image variant 'builder' is not one of '', 'farm-worker'"):
        ImageName(date(2026, 11, 25), "amd64", 0, "builder")
