"""The kernel builder: the watched kernel config at the pushed revision, compiled into a vmlinuz tarball."""

from buildbot.plugins import util
from buildbot.process.factory import BuildFactory

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import KERNEL_POLLER
from gentoo_farm.master.change_sources import recipe_repository
from gentoo_farm.master.factories.common import (
    cache_dir,
    checkout,
    publish,
    push_back,
    store_url,
    trigger_image,
    up_to_date,
)
from gentoo_farm.steps.inputs import ComputeInputKey
from gentoo_farm.steps.kernel import BuildKernel

CHECKOUT = "kernel-config"
TARBALL = "vmlinuz.tar.zst"


def factory(config: FarmConfig) -> BuildFactory:
    repository = recipe_repository(config, KERNEL_POLLER)
    kernel_config = f"../{CHECKOUT}/{config.kernel.config_file}"
    source = config.kernel.source
    factory = BuildFactory()
    factory.addSteps(
        [
            *checkout(repository, CHECKOUT),
            ComputeInputKey("kernel", files=[kernel_config], values={"source": source}),
            up_to_date(config, "kernel"),
            BuildKernel(
                # The farm's distfile mirror first: upstream is only asked once per source version.
                source_urls=[
                    f"{store_url(config)}/distfiles/{source}",
                    f"{config.upstream.mirror}/distfiles/{source}",
                ],
                config=kernel_config,
                output=f"out/{TARBALL}",
                work_dir=cache_dir("kernel"),
                ccache_dir=cache_dir("ccache"),
            ),
            *push_back(config, distdir=cache_dir("kernel/distfiles")),
            *publish(
                config,
                "kernel",
                artifact=TARBALL,
                files={TARBALL: f"out/{TARBALL}"},
                metadata={
                    "kernel": util.Property("kernel_release"),
                    "revision": util.Property("got_revision"),
                },
            ),
            trigger_image(config),
        ]
    )
    return factory
