"""The mirror builder: fetch the latest stage3 and Portage snapshot, verify them, re-publish them."""

from collections.abc import Callable

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory

from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories.common import publish, trigger_image, up_to_date
from gentoo_farm.steps.inputs import ComputeInputKey
from gentoo_farm.steps.packages import FetchRelease

DOWNLOADS = "downloads"


def _with_signatures(*suffixes: str) -> Callable[[str], dict[str, str]]:
    """The set's files ({name: path on the worker}) for a downloaded tarball and its signature files."""

    def files(tarball: str) -> dict[str, str]:
        return {name: f"{DOWNLOADS}/{name}" for name in (tarball, *(tarball + suffix for suffix in suffixes))}

    return files


def factory(config: FarmConfig) -> BuildFactory:
    stage3_name = util.Property("stage3_file")
    snapshot_name = util.Property("snapshot_file")
    factory = BuildFactory()
    factory.addSteps(
        [
            steps.RemoveDirectory(name="clean", dir="build"),
            steps.FileDownload(
                name="release-key",
                mastersrc=str(config.upstream.release_key),
                workerdest="release-key.asc",
            ),
            FetchRelease(
                mirror=config.upstream.mirror,
                release_key="release-key.asc",
                dest=DOWNLOADS,
                variant=config.upstream.stage3.removeprefix("stage3-"),
            ),
            ComputeInputKey(
                "mirror",
                values={
                    "stage3": util.Property("stage3_sha512"),
                    "snapshot": util.Property("snapshot_sha512"),
                },
            ),
            up_to_date(config, "portage"),
            *publish(
                config,
                "stage3",
                artifact=stage3_name,
                files=util.Transform(_with_signatures(".DIGESTS", ".asc"), stage3_name),
                metadata={"timestamp": util.Property("stage3_timestamp")},
            ),
            *publish(
                config,
                "portage",
                artifact=snapshot_name,
                files=util.Transform(_with_signatures(".gpgsig"), snapshot_name),
                metadata={"date": util.Property("snapshot_date")},
            ),
            trigger_image(config),
        ]
    )
    return factory
