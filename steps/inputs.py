"""What is this build made from? Its input key, and for an image the published sets it uses."""

from collections.abc import Mapping
from types import MappingProxyType

from buildbot.process.results import SUCCESS

from gentoo_farm.artifacts import ARTIFACT_KINDS, DOWNLOAD_MAP
from gentoo_farm.steps.base import FarmWorkerStep, StageArgument, declared
from gentoo_farm.steps.publish import SignedUrlsStep
from gentoo_farm.store import ArtifactStore, StoreError, StoreSettings
from gentoo_farm.store.sets import ARTIFACT, PublishedSet, latest_set, list_sets


class ComputeInputKey(FarmWorkerStep):
    """Sets the ``input_key`` property from the files, trees and values a build depends on."""

    stage = "input-key"
    description = "computing input key"
    arguments = declared(
        kind=StageArgument("--kind"),
        files=StageArgument("--file", "each", default=()),
        values=StageArgument("--value", "pairs", default=MappingProxyType({})),
    )

    def getResultSummary(self) -> dict[str, str]:
        if self.results == SUCCESS:
            return {"step": f"input key {self.getProperty('input_key')}"}
        return super().getResultSummary()


class ResolveImageInputs(SignedUrlsStep):
    """Find the published stage3, snapshot, kernel and overlay an image is built from (or, for the
    kernel builder, the snapshot whose Manifest vouches for the kernel source).

    Sets ``image_sources`` ({kind: set id}), ``image_input_keys`` ({kind: input key}) and
    ``image_artifacts`` ({kind: store key of its artifact}: push-back reads the snapshot there), and writes
    the download map for ``farm-worker download-inputs`` to the worker (URLs may be signed: never a property).
    ``downloads`` maps each kind to the path its artifact gets on the worker.
    """

    renderables = ("kernel_revision",)

    def __init__(
        self,
        store_settings: StoreSettings,
        downloads: Mapping[str, str],
        kernel_revision: object = "",
        map_path: str = DOWNLOAD_MAP,
        **kwargs,
    ) -> None:
        kwargs.setdefault("name", "resolve-inputs")
        super().__init__(store_settings, **kwargs)
        self.downloads = downloads
        self.kernel_revision = kernel_revision
        self.map_path = map_path

    def _resolve(self, store: ArtifactStore) -> tuple[dict[str, PublishedSet], dict[str, dict[str, str]]]:
        sets: dict[str, PublishedSet] = {}
        download_map: dict[str, dict[str, str]] = {}
        for kind, worker_path in self.downloads.items():
            published = self._find(store, kind)
            artifact = published.file(str(published.metadata[ARTIFACT]))
            sets[kind] = published
            download_map[worker_path] = {
                "url": store.download_url(artifact.key, self.store_settings.url_expiry_seconds),
                "sha512": artifact.sha512,
            }
        return sets, download_map

    def _find(self, store: ArtifactStore, kind: str) -> PublishedSet:
        revision = str(self.kernel_revision or "")
        if kind == "kernel" and revision:
            for published in list_sets(store, kind):
                if str(published.metadata.get("revision", "")).startswith(revision):
                    return published
            raise StoreError(f"no kernel was published from config revision {revision}: build it first")
        published = latest_set(store, kind)
        if published is None:
            raise StoreError(
                f"no {kind} is published yet: run the {ARTIFACT_KINDS[kind].builder} builder first"
            )
        return published

    async def run(self) -> int:
        try:
            sets, download_map = await self.in_thread(self._resolve)
        except StoreError as error:
            return await self.fail(error)
        properties: dict[str, object] = {
            "image_sources": {kind: published.set_id for kind, published in sets.items()},
            "image_input_keys": {kind: published.input_key for kind, published in sets.items()},
            "image_artifacts": {
                kind: published.file(str(published.metadata[ARTIFACT])).key
                for kind, published in sets.items()
            },
        }
        kernel = sets.get("kernel")
        if kernel is not None:
            properties["kernel_release"] = kernel.metadata.get("kernel", "")
        return await self.hand_over(
            self.map_path,
            download_map,
            properties,
            ", ".join(f"{kind} {published.set_id}" for kind, published in sets.items()),
        )
