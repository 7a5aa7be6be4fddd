"""Pieces every builder shares: checkout, the publish and push-back sequences, the image trigger."""

from collections.abc import Mapping
from typing import Any

from buildbot.plugins import steps, util
from twisted.internet import defer, threads

from gentoo_farm.artifacts import IMAGE_INPUTS, INPUT_KEY_PROPERTY, PUSHBACK_CANDIDATES, PUSHBACK_UPLOADS
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.recipes import RecipeRepository
from gentoo_farm.signing import FarmKey
from gentoo_farm.steps.base import FarmWorkerStep, Renderable
from gentoo_farm.steps.publish import MakeUploadUrls, PublishSet
from gentoo_farm.steps.pushback import MergeBinhost, MergeDistfiles, PushBackUrls
from gentoo_farm.steps.uptodate import CheckUpToDate, unless_up_to_date
from gentoo_farm.store import open_store, workers_base_url
from gentoo_farm.store.binhost import binhost_url
from gentoo_farm.store.sets import ARTIFACT, latest_set

IMAGE_AFTER_INPUTS = "image-after-new-input"
"""The Triggerable scheduler the mirror, kernel and overlay builders start an image build with."""

INPUT_KEY = util.Property(INPUT_KEY_PROPERTY)
"""The build's input key, as ComputeInputKey set it."""


def checkout(repository: RecipeRepository, workdir: str) -> list[object]:
    """A clean build directory and the recipe repository at the revision that started the build."""
    return [
        steps.RemoveDirectory(name="clean", dir="build"),
        steps.Git(
            name=f"checkout-{repository.poller}",
            repourl=repository.url,
            branch=repository.branch,
            workdir=workdir,
            mode="full",
            method="clobber",
        ),
    ]


def cache_dir(name: str) -> util.Interpolate:
    """A directory the worker keeps between builds (ccache, kernel sources): its ``cache_dir`` property."""
    return util.Interpolate(f"%(prop:cache_dir)s/{name}")


def up_to_date(config: FarmConfig, kind: str) -> CheckUpToDate:
    """Whether the store holds this input key's ``kind`` already; the steps after it take
    ``**unless_up_to_date()`` and are skipped when it does."""
    return CheckUpToDate(config.store, kind, util.Property(INPUT_KEY_PROPERTY), name="up-to-date")


def publish(
    config: FarmConfig,
    kind: str,
    artifact: Renderable,
    files: Renderable,
    metadata: Mapping[str, Renderable] | None = None,
    sources: Renderable = None,
    input_key: Renderable = INPUT_KEY,
    **step_options: Any,
) -> list[object]:
    """Upload ``files`` ({name in the set: path on the worker}) through signed URLs, then verify and
    publish them as one set whose ``latest`` pointer moves only when every file is in place."""
    map_path = f"{kind}-uploads.json"
    build = util.Interpolate("%(prop:buildername)s/%(prop:buildnumber)s")
    return [
        MakeUploadUrls(
            config.store, kind, input_key, files, map_path, name=f"sign-{kind}-uploads",
            **step_options,
        ),
        FarmWorkerStep(
            "upload", stage_args=["--map", map_path, "--report-checksums"], name=f"upload-{kind}",
            **step_options,
        ),
        PublishSet(
            config.store,
            kind,
            input_key,
            util.Property("uploaded"),
            metadata={ARTIFACT: artifact, "build": build, **(metadata or {})},
            sources=sources,
            key=farm_key(config),
            keep_by_kind=config.kept_sets_by_kind,
            name=f"publish-{kind}",
            **step_options,
        ),
    ]  # fmt: skip


def push_back(
    config: FarmConfig,
    distdir: Renderable,
    repository: Renderable,
    snapshot_key: Renderable,
    pkgdir: str,
    **step_options: Any,
) -> list[object]:
    """Send the distfiles and binary packages this build fetched or made and the farm lacks to its
    distfile mirror and binhost, so the next build takes them from there. The Manifests of the published
    snapshot at ``snapshot_key`` (unpacked on the worker at ``repository``) vouch for the distfiles; only
    what matches them lands."""
    store = workers_base_url(config.store)
    listing: list[object] = [
        "--distdir", distdir, "--mirror", f"{store}/distfiles", "--repository", repository,
        "--pkgdir", pkgdir, "--binhost", binhost_url(store, config.upstream.profile),
        "--output", PUSHBACK_CANDIDATES,
    ]  # fmt: skip
    return [
        FarmWorkerStep("list-new", stage_args=listing, **step_options),
        PushBackUrls(config.store, snapshot_key, **step_options),
        FarmWorkerStep("upload", stage_args=["--map", PUSHBACK_UPLOADS], name="push-back", **step_options),
        # Distfiles first: the binhost merge clears the build's whole staging prefix when it is done.
        MergeDistfiles(config.store, **step_options),
        MergeBinhost(config.store, config.upstream.profile, farm_key(config), **step_options),
    ]


def farm_key(config: FarmConfig) -> FarmKey:
    return FarmKey(FarmDir(config.basedir).signing_key)


def trigger_image(config: FarmConfig) -> steps.Trigger:
    """Start an image build with the new input, once every input of an image has been published
    (never after an up-to-date check that found the input published already)."""

    def all_inputs_published(step: steps.BuildStep) -> defer.Deferred[bool]:
        def check() -> bool:
            store = open_store(config.store)
            return all(latest_set(store, kind) is not None for kind in IMAGE_INPUTS)

        return threads.deferToThread(check)

    return steps.Trigger(
        name="trigger-image",
        schedulerNames=[IMAGE_AFTER_INPUTS],
        waitForFinish=False,
        **unless_up_to_date(all_inputs_published),
        set_properties={"reason": util.Interpolate("new %(prop:buildername)s %(prop:publish_set_id)s")},
    )
