"""The overlay builder: the watched overlay tree at the pushed revision as a vmoverride tarball."""

from buildbot.plugins import util
from buildbot.process.factory import BuildFactory

from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories.common import checkout, publish, trigger_image, up_to_date
from gentoo_farm.recipes import OVERLAY_POLLER, recipe_repository
from gentoo_farm.steps.inputs import ComputeInputKey
from gentoo_farm.steps.overlay import BuildOverlay
from gentoo_farm.steps.uptodate import unless_up_to_date

CHECKOUT = "overlay"
TARBALL = "vmoverride.tar.gz"


def factory(config: FarmConfig) -> BuildFactory:
    repository = recipe_repository(config, OVERLAY_POLLER)
    building = unless_up_to_date()
    factory = BuildFactory()
    factory.addSteps(
        [
            *checkout(repository, CHECKOUT),
            # The tree, not the checkout: git's own files change with every clone.
            ComputeInputKey(kind="overlay", files=[f"../{CHECKOUT}/root", f"../{CHECKOUT}/overlay.toml"]),
            up_to_date(config, "overlay"),
            BuildOverlay(overlay=f"../{CHECKOUT}", output=f"out/{TARBALL}", **building),
            *publish(
                config,
                "overlay",
                artifact=TARBALL,
                files={TARBALL: f"out/{TARBALL}"},
                metadata={"revision": util.Property("got_revision")},
                **building,
            ),
            trigger_image(config),
        ]
    )
    return factory
