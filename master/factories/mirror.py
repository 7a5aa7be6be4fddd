"""The mirror builder: learn what upstream offers, and only when that is new fetch, verify and re-publish it.

A nightly run against an unchanged upstream reads a few kilobytes (the signed latest-stage3 pointer, the
stage3's DIGESTS, the snapshot's ``.md5sum``) and ends "up to date". Otherwise the full fetch is told what
the check saw and refuses anything else, so the published sets are exactly what was checked and verified:
if upstream moves on in between, the build fails saying so and the next one takes the new release.
"""

from collections.abc import Callable

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory

from gentoo_farm.config import FarmConfig
from gentoo_farm.master.factories.common import publish, trigger_image, up_to_date
from gentoo_farm.steps.inputs import ComputeInputKey
from gentoo_farm.steps.packages import FetchRelease
from gentoo_farm.steps.uptodate import unless_up_to_date

DOWNLOADS = "downloads"
KEYRING = "gentoo-keyring.asc"


def _with_signatures(*suffixes: str) -> Callable[[str], dict[str, str]]:
    """The set's files ({name: path on the worker}) for a downloaded tarball and its signature files."""

    def files(tarball: str | None) -> dict[str, str]:
        # Buildbot renders a step's arguments before its doStepIf: a build that is up to date never
        # fetched a tarball, and its skipped publish steps get no files.
        if tarball is None:
            return {}
        return {name: f"{DOWNLOADS}/{name}" for name in (tarball, *(tarball + suffix for suffix in suffixes))}

    return files


def _fetch(config: FarmConfig, **options: object) -> FetchRelease:
    """``farm-worker fetch`` of the configured upstream release, verified against the configured keys."""
    return FetchRelease(
        mirror=config.upstream.mirror,
        keyring=KEYRING,
        release_key=config.upstream.release_key,
        snapshot_key=config.upstream.snapshot_key,
        dest=DOWNLOADS,
        arch=config.upstream.arch,
        variant=config.upstream.variant,
        **options,
    )


def factory(config: FarmConfig) -> BuildFactory:
    stage3_name = util.Property("stage3_file")
    snapshot_name = util.Property("snapshot_file")
    building = unless_up_to_date()
    factory = BuildFactory()
    factory.addSteps(
        [
            steps.RemoveDirectory(name="clean", dir="build"),
            steps.FileDownload(name="keyring", mastersrc=str(config.upstream.keyring), workerdest=KEYRING),
            _fetch(config, check_only=True),
            ComputeInputKey(
                kind="mirror",
                values={"stage3": util.Property("stage3_sha512"), "snapshot": util.Property("snapshot_md5")},
            ),
            up_to_date(config, "portage"),
            _fetch(
                config,
                expect_stage3_sha512=util.Property("stage3_sha512"),
                expect_snapshot_md5=util.Property("snapshot_md5"),
                **building,
            ),
            *publish(
                config,
                "stage3",
                artifact=stage3_name,
                files=util.Transform(_with_signatures(".DIGESTS", ".asc"), stage3_name),
                metadata={"timestamp": util.Property("stage3_timestamp")},
                **building,
            ),
            *publish(
                config,
                "portage",
                artifact=snapshot_name,
                files=util.Transform(_with_signatures(".gpgsig"), snapshot_name),
                metadata={"date": util.Property("snapshot_date")},
                **building,
            ),
            trigger_image(config),
        ]
    )
    return factory
