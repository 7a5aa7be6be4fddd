"""The image builder: stage3 + snapshot + packages + kernel + overlay -> a qcow2 that boots, published.

Read top to bottom, it is the recipe: resolve the published inputs, then the root: the published stage4
of the same stage3, snapshot, packages and settings when there is one, else unpack, emerge through the
farm's binhost and distfile mirror, push new packages back, prune what only the build needed and publish
that root as a stage4. Then lay in kernel and overlay, list what the image holds, make the disk, boot it,
and only then publish to the store and Glance. A kernel-only or overlay-only change never emerges.

The same recipe makes each image variant (``IMAGE_VARIANTS``): the worker image differs only in what it
emerges and in the store kinds and names it publishes under.
"""

import json

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory

from gentoo_farm.artifacts import (
    DOWNLOAD_MAP,
    IMAGE,
    IMAGE_INPUTS,
    IMAGE_VARIANTS,
    STAGE4_KEY_PROPERTY,
    WORKER_IMAGE,
    ImageVariant,
)
from gentoo_farm.catalog import PACKAGE_MANIFEST_SUFFIX
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.factories.common import publish, push_back, up_to_date
from gentoo_farm.qemuboot import CLOUD_USER
from gentoo_farm.signing import farm_fingerprint
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.steps.glance import PublishToGlance
from gentoo_farm.steps.image import (
    AssembleImage,
    BootTest,
    BuildDisk,
    PruneRoot,
    WriteImageManifest,
)
from gentoo_farm.steps.inputs import (
    STAGE4_PACKAGE_LISTS,
    STAGE4_REUSED_PROPERTY,
    ComputeInputKey,
    ResolveImageInputs,
    ResolveStage4,
)
from gentoo_farm.steps.naming import IMAGE_NAME_PROPERTY, NameImage
from gentoo_farm.steps.packages import EmergePackages, PackRoot, UnpackRoot
from gentoo_farm.steps.uptodate import unless_up_to_date
from gentoo_farm.store import workers_base_url
from gentoo_farm.store.binhost import binhost_url

ROOT = "root"
BINHOST_KEY = "farm-binhost-key.asc"
UPSTREAM_BINHOST_KEYRING = "upstream-binhost-keyring.asc"
# Paths on the worker; in the store every file carries the image's name (NameImage decides it).
DISK = "image/disk.qcow2"
STAGE4 = "inputs/stage4.tar.zst"
STAGE4_DOWNLOAD_MAP = "stage4-download.json"
MANIFEST_JSON = "image/manifest.json"
MANIFEST_TEXT = "image/manifest.txt"


def image_files(name: str) -> dict[str, str]:
    """The image set's files, each named after the image: ``{name in the set: path on the worker}``."""
    return {
        f"{name}.qcow2": DISK,
        f"{name}{PACKAGE_MANIFEST_SUFFIX}": MANIFEST_JSON,
        f"{name}.manifest": MANIFEST_TEXT,
    }


def publishing_requested(step: steps.BuildStep) -> bool:
    """Forced builds may opt out of publishing; scheduled ones always publish."""
    return bool(step.getProperty("publish", True))


def reusing_stage4(step: steps.BuildStep) -> bool:
    return bool(step.getProperty(STAGE4_REUSED_PROPERTY))


def emerging(step: steps.BuildStep) -> bool:
    return not reusing_stage4(step)


def stage4_wanted(step: steps.BuildStep) -> bool:
    """A freshly emerged root is published as a stage4 when the build publishes at all."""
    return emerging(step) and publishing_requested(step)


def stage4_file_name(arch: str) -> str:
    return f"stage4-{arch}.tar.zst"


def download_inputs(*kinds: str, **step_options: object) -> FarmWorkerStep:
    """Download the published ``kinds`` this image is built from (``ResolveImageInputs`` mapped them all)."""
    only = [part for kind in kinds for part in ("--only", IMAGE_INPUTS[kind])]
    return FarmWorkerStep("download-inputs", stage_args=["--map", DOWNLOAD_MAP, *only], **step_options)


def image_input_key(kind: str) -> util.Transform:
    """The input key of the published ``kind`` this image is built from (``ResolveImageInputs``)."""
    return util.Transform(lambda keys: keys[kind], util.Property("image_input_keys"))


def with_stage4(sources: dict[str, str], stage4_set_id: str) -> dict[str, str]:
    """The image's sources and the stage4 its root came from: retention keeps that stage4 with the image."""
    return {**sources, "stage4": stage4_set_id} if stage4_set_id else sources


def emerged_packages(config: FarmConfig, variant: ImageVariant) -> list[str]:
    """What the variant's root emerges: the cloud image's packages, and the worker image's on top."""
    return config.worker_image_packages if variant.builder == WORKER_IMAGE else config.image.emerged_packages


def factory(config: FarmConfig, variant: ImageVariant = IMAGE_VARIANTS[IMAGE]) -> BuildFactory:
    store = workers_base_url(config.store)
    images, stage4 = variant.images_kind, variant.stage4_kind
    emerged = emerged_packages(config, variant)
    extra_packages = util.Property("extra_packages", default="")
    building = unless_up_to_date()
    publishing = unless_up_to_date(publishing_requested)
    emerge_steps = unless_up_to_date(emerging)
    upstream_binhost_used = config.packages.upstream_binhost != "off"
    packages = " ".join(emerged)
    image_sources = util.Transform(
        with_stage4, util.Property("image_sources", default={}), util.Property("stage4_set_id", default="")
    )
    prune = f"keep_build_deps={config.image.keep_build_deps} keep_repository={config.image.keep_repository}"
    # What the emerged root is made from besides the stage3 and snapshot: both keys hash it. The binhost
    # policy only when it lets upstream packages in, so the default leaves existing keys as they were.
    root_settings: dict[str, object] = {
        "packages": packages,
        "extra_packages": extra_packages,
        "prune": prune,
        **({"upstream_binhost": config.packages.upstream_binhost} if upstream_binhost_used else {}),
    }
    factory = BuildFactory()
    factory.addSteps(
        [
            steps.RemoveDirectory(name="clean", dir="build"),
            ResolveImageInputs(
                config.store, IMAGE_INPUTS, kernel_revision=util.Property("kernel_revision", default="")
            ),
            ComputeInputKey(
                kind=images,
                values={
                    "inputs": util.Transform(json.dumps, util.Property("image_input_keys"), sort_keys=True),
                    "disk": f"{config.image.disk_size} compress={config.image.compress}"
                    + (f" compression={config.image.compression}" if config.image.compress else ""),
                    **root_settings,
                },
            ),
            up_to_date(config, images),
            ComputeInputKey(
                name="stage4-key",
                kind=stage4,
                values={
                    "stage3": image_input_key("stage3"),
                    "portage": image_input_key("portage"),
                    "profile": config.upstream.profile,
                    **root_settings,
                },
                report_as=STAGE4_KEY_PROPERTY,
                **building,
            ),
            ResolveStage4(
                config.store,
                util.Property(STAGE4_KEY_PROPERTY),
                worker_path=STAGE4,
                map_path=STAGE4_DOWNLOAD_MAP,
                kind=stage4,
                **building,
            ),
            FarmWorkerStep(
                "download-inputs",
                stage_args=["--map", STAGE4_DOWNLOAD_MAP],
                name="download-stage4",
                **unless_up_to_date(reusing_stage4),
            ),
            UnpackRoot(stage4=STAGE4, root=ROOT, name="unpack-stage4", **unless_up_to_date(reusing_stage4)),
            download_inputs("kernel", "overlay", **building),
            download_inputs("stage3", "portage", name="download-root-inputs", **emerge_steps),
            UnpackRoot(
                stage3=IMAGE_INPUTS["stage3"], snapshot=IMAGE_INPUTS["portage"], root=ROOT, **emerge_steps
            ),
            # From the master, not the store: whoever can write the store must not be able to swap the key.
            steps.FileDownload(
                mastersrc=str(FarmDir(config.basedir).signing_public_key),
                workerdest=BINHOST_KEY,
                name="binhost-key",
                **emerge_steps,
            ),
            *(
                # Gentoo's keyring, which the farm verifies stages with, also holds its binary package key.
                [
                    steps.FileDownload(
                        mastersrc=str(config.upstream.keyring),
                        workerdest=UPSTREAM_BINHOST_KEYRING,
                        name="upstream-binhost-keyring",
                        **emerge_steps,
                    )
                ]
                if upstream_binhost_used
                else []
            ),
            EmergePackages(
                atoms=util.Transform(lambda extra: [*emerged, *extra.split()], extra_packages),
                root=ROOT,
                pkgdir="packages",
                distdir="distfiles",
                scratch_dir="portage",
                profile=config.upstream.profile,
                binhost=binhost_url(store, config.upstream.profile),
                binhost_key=BINHOST_KEY,
                upstream_binhost=config.packages.upstream_binhost,
                upstream_binhost_key=UPSTREAM_BINHOST_KEYRING if upstream_binhost_used else None,
                distfile_mirror=store,
                upstream_mirrors=[config.upstream.mirror],
                **emerge_steps,
            ),
            *push_back(
                config,
                distdir="distfiles",
                repository=util.Property("repository"),
                snapshot_key=util.Transform(
                    lambda artifacts: artifacts["portage"], util.Property("image_artifacts")
                ),
                pkgdir="packages",
                **emerge_steps,
            ),
            # After the push-back: list-new reads the repository's Manifests, which pruning removes.
            PruneRoot(
                root=ROOT,
                scratch_dir="portage",
                keep_build_deps=config.image.keep_build_deps,
                keep_repository=config.image.keep_repository,
                **emerge_steps,
            ),
            PackRoot(root=ROOT, output=STAGE4, **unless_up_to_date(stage4_wanted)),
            *publish(
                config,
                stage4,
                artifact=stage4_file_name(config.upstream.arch),
                files={stage4_file_name(config.upstream.arch): STAGE4},
                metadata={
                    "arch": config.upstream.arch,
                    "profile": config.upstream.profile,
                    **{name: util.Property(name, default=[]) for name in STAGE4_PACKAGE_LISTS},
                },
                sources=util.Transform(
                    lambda sources: {kind: sources[kind] for kind in ("stage3", "portage")},
                    util.Property("image_sources"),
                ),
                input_key=util.Property(STAGE4_KEY_PROPERTY),
                **unless_up_to_date(stage4_wanted),
            ),
            AssembleImage(
                root=ROOT,
                vmlinuz=IMAGE_INPUTS["kernel"],
                overlay=IMAGE_INPUTS["overlay"],
                admin=config.image.admin,
                **building,
            ),
            WriteImageManifest(
                root=ROOT,
                json_output=MANIFEST_JSON,
                text_output=MANIFEST_TEXT,
                compiled=util.Property("packages_compiled", default=[]),
                binary=util.Property("packages_binary", default=[]),
                upstream_binary=util.Property("packages_upstream_binary", default=[]),
                inputs=util.Transform(
                    json.dumps,
                    {
                        "sources": image_sources,
                        "input_keys": util.Property("image_input_keys", default={}),
                    },
                    sort_keys=True,
                ),
                **building,
            ),
            BuildDisk(
                root=ROOT,
                output=DISK,
                size=config.image.disk_size,
                compress=config.image.compress,
                compression=config.image.compression,
                **building,
            ),
            BootTest(
                image=DISK,
                boot_timeout=config.image.boot_timeout,
                commands=config.image.boot_test_commands,
                # What the disk stage read from the image's /boot: `uname -r` in the guest must say it.
                kernel_release=util.Property("kernel_release"),
                **building,
            ),
            NameImage(config.store, config.upstream.arch, images_kind=images, **publishing),
            *publish(
                config,
                images,
                artifact=util.Interpolate(f"%(prop:{IMAGE_NAME_PROPERTY})s.qcow2"),
                files=util.Transform(image_files, util.Property(IMAGE_NAME_PROPERTY)),
                metadata={
                    "name": util.Property(IMAGE_NAME_PROPERTY),
                    "kernel": util.Property("kernel_release"),
                    "package_count": util.Property("image_package_count"),
                    # What clouds describe an image with (Glance's architecture, os_admin_user...).
                    "arch": config.upstream.arch,
                    "profile": config.upstream.profile,
                    "user": CLOUD_USER,
                    "disk_bytes": util.Property("disk_bytes"),
                },
                sources=image_sources,
                **publishing,
            ),
        ]
    )
    if config.glance:
        factory.addStep(
            PublishToGlance(
                config.store,
                config.glance,
                config.farm.id,
                signing_fingerprint=farm_fingerprint(FarmDir(config.basedir)),
                images_kind=images,
                **publishing,
            )
        )
    return factory
