"""The kernel builder: the watched kernel config at the pushed revision, compiled into a vmlinuz tarball,
or a binary kernel package (``[kernel] package``) made into one.

Either distfile must be a DIST entry of ``[kernel] source_package``'s Manifest in the published (verified)
Portage snapshot: the build reads that line first, makes its input key of it, and the worker accepts
only a download that matches it, so Gentoo's snapshot key vouches for the kernel source. Kernel builds
push nothing back (docs/security.md): the farm's mirror takes distfiles only from image builds.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory

from gentoo_farm.artifacts import DOWNLOAD_MAP
from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories.common import (
    cache_dir,
    checkout,
    publish,
    trigger_image,
    up_to_date,
)
from gentoo_farm.recipes import KERNEL_POLLER, recipe_repository
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.steps.inputs import ComputeInputKey, ResolveImageInputs
from gentoo_farm.steps.kernel import (
    SHARED_CCACHE_OPTIONS,
    AdvanceKernelCcache,
    BuildKernel,
    KernelFromPackage,
    OfferKernelCcache,
    PackKernelCcache,
    SeedKernelCcache,
    SignKernelCcacheUpload,
)
from gentoo_farm.steps.uptodate import unless_up_to_date
from gentoo_farm.store import workers_base_url

CHECKOUT = "kernel-config"
TARBALL = "vmlinuz.tar.zst"
SNAPSHOT = "inputs/portage.tar.xz"
CCACHE_TARBALL = "out/kernel-ccache.tar.zst"
VOUCHED = util.Property("kernel_source_dist")
"""The distfile's DIST line from the snapshot's Manifest (set by the kernel-source step)."""


def _mirrors(config: FarmConfig) -> list[str]:
    """The farm's distfile mirror first: upstream is only asked once per distfile."""
    return [workers_base_url(config.store), config.upstream.mirror]


def _vouched(config: FarmConfig, distfile: str) -> list[object]:
    """The published snapshot on the worker, and its Manifest's DIST line for ``distfile``."""
    return [
        ResolveImageInputs(config.store, {"portage": SNAPSHOT}, name="resolve-snapshot"),
        FarmWorkerStep("download-inputs", stage_args=["--map", DOWNLOAD_MAP], name="download-snapshot"),
        FarmWorkerStep(
            "kernel-source",
            stage_args=[
                "--snapshot", SNAPSHOT, "--package", config.kernel.source_package, "--distfile", distfile,
            ],
        ),
    ]  # fmt: skip


def _keyed_on_vouched(
    config: FarmConfig, distfile: str, key_value: str, files: Sequence[str] = ()
) -> list[object]:
    """``distfile``'s vouched DIST line, the input key made of it (as ``key_value``) and ``files``, and
    the check whether that key is published already."""
    return [
        *_vouched(config, distfile),
        # The DIST line names the distfile and its hashes: a new tarball under the same name rebuilds.
        ComputeInputKey(kind="kernel", files=list(files), values={key_value: VOUCHED}),
        up_to_date(config, "kernel"),
    ]


def _from_source(config: FarmConfig, building: Mapping[str, Any]) -> list[object]:
    kernel_config = f"../{CHECKOUT}/{config.kernel.config_file}"
    return [
        *checkout(recipe_repository(config, KERNEL_POLLER), CHECKOUT),
        *_keyed_on_vouched(config, config.kernel.source, "source_dist", files=[kernel_config]),
        *(_ccache_seeded(config) if config.kernel.shared_ccache else []),
        BuildKernel(
            mirrors=_mirrors(config),
            source_dist=VOUCHED,
            config=kernel_config,
            output=f"out/{TARBALL}",
            work_dir=cache_dir("kernel"),
            ccache_dir=cache_dir("ccache"),
            **building,
        ),
    ]


def _ccache_seeded(config: FarmConfig) -> list[object]:
    """An empty ccache filled from the one the farm shares (docs/workers.md, "The shared kernel ccache")."""
    return [
        OfferKernelCcache(config.store, config.upstream.arch, "kernel-ccache.json", **unless_up_to_date()),
        SeedKernelCcache(
            map="kernel-ccache.json",
            ccache_dir=cache_dir("ccache"),
            **SHARED_CCACHE_OPTIONS,
            **unless_up_to_date(),
        ),
    ]


def _ccache_shared_after(config: FarmConfig) -> list[object]:
    """After a build with ccache misses: its ccache packed, uploaded under its content key, shared."""
    sha256 = util.Property("kernel_ccache_sha256")
    size = util.Property("kernel_ccache_size")
    packed = unless_up_to_date(lambda step: bool(step.getProperty("kernel_ccache_packed")))
    return [
        PackKernelCcache(
            ccache_dir=cache_dir("ccache"),
            output=CCACHE_TARBALL,
            **SHARED_CCACHE_OPTIONS,
            **unless_up_to_date(),
        ),
        SignKernelCcacheUpload(
            config.store, config.upstream.arch, sha256, size, CCACHE_TARBALL, "kernel-ccache-upload.json",
            **packed,
        ),
        FarmWorkerStep(
            "upload", stage_args=["--map", "kernel-ccache-upload.json"], name="upload-kernel-ccache",
            **SHARED_CCACHE_OPTIONS, **packed,
        ),
        AdvanceKernelCcache(
            config.store, config.upstream.arch, sha256, size, util.Property("buildnumber"), **packed
        ),
    ]  # fmt: skip


def _from_package(config: FarmConfig, building: Mapping[str, Any]) -> list[object]:
    distdir = cache_dir("kernel/distfiles")
    return [
        steps.RemoveDirectory(name="clean", dir="build"),
        *_keyed_on_vouched(config, config.kernel.package, "package_dist"),
        KernelFromPackage(
            mirrors=_mirrors(config),
            package_dist=VOUCHED,
            distdir=distdir,
            output=f"out/{TARBALL}",
            **building,
        ),
    ]


def factory(config: FarmConfig) -> BuildFactory:
    building = unless_up_to_date()
    factory = BuildFactory()
    factory.addSteps(
        _from_package(config, building) if config.kernel.package else _from_source(config, building)
    )
    factory.addSteps(
        [
            *publish(
                config,
                "kernel",
                artifact=TARBALL,
                files={TARBALL: f"out/{TARBALL}"},
                metadata={
                    "kernel": util.Property("kernel_release"),
                    "revision": util.Property("got_revision", default=""),
                },
                **building,
            ),
            trigger_image(config),
        ]
    )
    if not config.kernel.package and config.kernel.shared_ccache:
        # After the kernel is published and the image build started: sharing only speeds up later builds.
        factory.addSteps(_ccache_shared_after(config))
    return factory
