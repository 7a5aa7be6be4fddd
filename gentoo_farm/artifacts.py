"""The farm's vocabulary: its builders, the artifact kinds they publish, and the names every layer shares.

A builder is named after what it does (``image``), a store kind after what it holds (``images``); one record
per kind ties the two together with the kind's stable name and its path on an image build's worker, so the
CLI, the master, the steps and the store read these facts from here instead of repeating them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gentoo_farm.image_name import WORKER_VARIANT

MIRROR, KERNEL, OVERLAY, IMAGE = "mirror", "kernel", "overlay", "image"
WORKER_IMAGE = "worker-image"
"""The builder of the image OpenStack workers boot ([image.worker]), made by the image's recipe."""
BUILDERS: tuple[str, ...] = (MIRROR, KERNEL, OVERLAY, IMAGE, WORKER_IMAGE)
"""Every builder, in the order the master configures them."""


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact the store holds as dated sets under ``<kind>/``."""

    kind: str
    """The store prefix and the name steps, manifests and ``farm`` commands use."""
    builder: str
    """The builder that publishes it: what to run when none is published yet."""
    latest_name: str | None
    """The stable name of the newest set's artifact at the top of ``<kind>/`` (the seed's names). None for
    images, whose stable name carries their architecture and format (``gentoo-latest-ARCH.<format>``)."""
    image_worker_path: str | None
    """Where an image build downloads it on its worker; None for what is not an input of an image."""


ARTIFACT_KINDS: Mapping[str, ArtifactKind] = MappingProxyType(
    {
        record.kind: record
        for record in (
            ArtifactKind("stage3", MIRROR, "stage3-latest.tar.xz", "inputs/stage3.tar.xz"),
            ArtifactKind("portage", MIRROR, "portage-latest.tar.xz", "inputs/portage.tar.xz"),
            ArtifactKind("kernel", KERNEL, "vmlinuz-latest.tar.zst", "inputs/vmlinuz.tar.zst"),
            ArtifactKind("overlay", OVERLAY, "vmoverride-latest.tar.gz", "inputs/vmoverride.tar.gz"),
            ArtifactKind("stage4", IMAGE, "stage4-latest.tar.zst", None),
            ArtifactKind("images", IMAGE, None, None),
            # The worker image's root holds more packages: its stage4s and images are sets of their own,
            # so the two variants never move each other's latest pointers.
            ArtifactKind("worker-stage4", WORKER_IMAGE, "stage4-worker-latest.tar.zst", None),
            ArtifactKind("worker-images", WORKER_IMAGE, None, None),
        )
    }
)
"""Every kind published as dated sets with a manifest and ``latest`` pointers, by store kind."""


@dataclass(frozen=True)
class ImageVariant:
    """One image the image recipe makes: its builder, the store kinds of its sets and its name's variant."""

    builder: str
    images_kind: str
    stage4_kind: str
    name_variant: str
    """The :class:`~gentoo_farm.image_name.ImageName` variant its images are named with."""


IMAGE_VARIANTS: Mapping[str, ImageVariant] = MappingProxyType(
    {
        IMAGE: ImageVariant(IMAGE, "images", "stage4", ""),
        WORKER_IMAGE: ImageVariant(WORKER_IMAGE, "worker-images", "worker-stage4", WORKER_VARIANT),
    }
)
"""Every image variant, by builder."""


def variant_of_kind(images_kind: str) -> ImageVariant:
    """The variant whose images the store kind ``images_kind`` holds."""
    return next(variant for variant in IMAGE_VARIANTS.values() if variant.images_kind == images_kind)


IMAGE_INPUTS: Mapping[str, str] = MappingProxyType(
    {
        record.kind: record.image_worker_path
        for record in ARTIFACT_KINDS.values()
        if record.image_worker_path is not None
    }
)
"""What an image is built from: ``{kind: path on the image build's worker}``."""

DOWNLOAD_MAP = "downloads.json"
"""The file on the worker where the step resolving a build's inputs writes their URLs for
``farm-worker download-inputs``."""
PUSHBACK_CANDIDATES = "push-back.json"
"""What ``farm-worker list-new`` found that the farm lacks, for the push-back step to sign URLs for."""
PUSHBACK_UPLOADS = "push-back-uploads.json"
"""The signed upload URLs the push-back step writes for ``farm-worker upload``."""

INPUT_KEY_PROPERTY = "input_key"
"""The content hash of what a build is made from (``farm-worker input-key``): its set's key in the store."""
STAGE4_KEY_PROPERTY = "stage4_key"
"""An image build's second key: of the emerged root alone (stage3, snapshot, packages, settings), which a
kernel-only or overlay-only change leaves as it was."""
UP_TO_DATE_PROPERTY = "up_to_date"
"""Set by the up-to-date check: the store holds this input's build already, so the build skips the rest."""
REBUILD_PROPERTY = "rebuild"
"""Set by a forced build (`farm build --force`, the web form's checkbox): build even when up to date."""


def force_scheduler(builder: str) -> str:
    """The name of the force scheduler that starts ``builder`` (the web UI's button, `farm build`)."""
    # The image's is the web UI's "Build image" form, named for what it does like the other buttons' labels.
    return "build-image" if builder == IMAGE else f"force-{builder}"
