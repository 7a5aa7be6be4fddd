"""The kernel builder: the watched kernel config at the pushed revision, compiled into a vmlinuz tarball,
or a binary kernel package (``[kernel] package``) made into one."""

from collections.abc import Mapping

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory

from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories.common import (
    cache_dir,
    checkout,
    publish,
    trigger_image,
    up_to_date,
)
from gentoo_farm.recipes import KERNEL_POLLER, recipe_repository
from gentoo_farm.steps.inputs import ComputeInputKey
from gentoo_farm.steps.kernel import BuildKernel, KernelFromPackage
from gentoo_farm.steps.publish import unless_up_to_date
from gentoo_farm.store import workers_base_url

CHECKOUT = "kernel-config"
TARBALL = "vmlinuz.tar.zst"


def _distfile_urls(config: FarmConfig, name: str) -> list[str]:
    """The farm's distfile mirror first, then upstream. Kernel builds push nothing back: no Manifest of
    theirs vouches for what they fetched (docs/security.md); the mirror has what image builds pushed."""
    return [
        f"{workers_base_url(config.store)}/distfiles/{name}",
        f"{config.upstream.mirror}/distfiles/{name}",
    ]


def _from_source(config: FarmConfig, building: Mapping[str, object]) -> list[object]:
    kernel_config = f"../{CHECKOUT}/{config.kernel.config_file}"
    return [
        *checkout(recipe_repository(config, KERNEL_POLLER), CHECKOUT),
        ComputeInputKey("kernel", files=[kernel_config], values={"source": config.kernel.source}),
        up_to_date(config, "kernel"),
        BuildKernel(
            source_urls=_distfile_urls(config, config.kernel.source),
            config=kernel_config,
            output=f"out/{TARBALL}",
            work_dir=cache_dir("kernel"),
            ccache_dir=cache_dir("ccache"),
            **building,
        ),
    ]


def _from_package(config: FarmConfig, building: Mapping[str, object]) -> list[object]:
    distdir = cache_dir("kernel/distfiles")
    return [
        steps.RemoveDirectory(name="clean", dir="build"),
        ComputeInputKey("kernel", values={"package": config.kernel.package}),
        up_to_date(config, "kernel"),
        KernelFromPackage(
            package_urls=_distfile_urls(config, config.kernel.package),
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
    return factory
