"""What is this build made from? Its input key, and for an image the published sets it uses."""

from collections.abc import Mapping
from types import MappingProxyType

from buildbot.process.results import SUCCESS

from gentoo_farm.artifacts import ARTIFACT_KINDS, DOWNLOAD_MAP, INPUT_KEY_PROPERTY, REBUILD_PROPERTY
from gentoo_farm.steps.base import REQUIRED, FarmWorkerStep, StageArgument, declared
from gentoo_farm.steps.store import SignedUrlsStep, declared_parameters
from gentoo_farm.store import ArtifactStore, StoreError
from gentoo_farm.store.sets import ARTIFACT, PublishedSet, find_set, latest_set, list_sets


class ComputeInputKey(FarmWorkerStep):
    """Sets the ``input_key`` property from the files, trees and values a build depends on."""

    stage = "input-key"
    description = "computing input key"
    arguments = declared(
        kind=StageArgument("--kind"),
        files=StageArgument("--file", "each", default=()),
        values=StageArgument("--value", "pairs", default=MappingProxyType({})),
        report_as=StageArgument("--report-as", default=INPUT_KEY_PROPERTY),
    )

    def success_summary(self) -> str:
        return f"{self.kind} input key {self.getProperty(self.report_as)}"


class ResolveImageInputs(SignedUrlsStep):
    """Find the published stage3, snapshot, kernel and overlay an image is built from (or, for the
    kernel builder, the snapshot whose Manifest vouches for the kernel source).

    Sets ``image_sources`` ({kind: set id}), ``image_input_keys`` ({kind: input key}) and
    ``image_artifacts`` ({kind: store key of its artifact}: push-back reads the snapshot there), and writes
    the download map for ``farm-worker download-inputs`` to the worker (URLs may be signed: never a property).
    ``downloads`` maps each kind to the path its artifact gets on the worker.
    """

    name = "resolve-inputs"
    parameters = declared_parameters(downloads=REQUIRED, kernel_revision="", map_path=DOWNLOAD_MAP)
    renderables = ("kernel_revision",)
    downloads: Mapping[str, str]
    map_path: str

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
        latest = latest_set(store, kind)
        if latest is None:
            raise StoreError(
                f"no {kind} is published yet: run the {ARTIFACT_KINDS[kind].builder} builder first"
            )
        return latest

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


STAGE4_REUSED_PROPERTY = "stage4_reused"
"""True when an image build unpacks a published stage4 instead of emerging: the emerging steps skip."""
STAGE4_PACKAGE_LISTS = ("packages_compiled", "packages_binary", "packages_upstream_binary")
"""What the stage4's own build emerged and how: the image manifest records it for every image made from it."""


class ResolveStage4(SignedUrlsStep):
    """Find the published stage4 of this build's stage4 key: the root emerged from the same stage3, snapshot,
    packages and settings. When there is one, its download goes into ``map_path`` for ``farm-worker
    download-inputs`` and the build unpacks it instead of emerging (``stage4_reused``); its package lists
    become this build's. A forced rebuild (``rebuild``) emerges anew. ``kind`` is the image variant's
    (``worker-stage4`` for the worker image, whose root holds more).
    """

    name = "find-stage4"
    parameters = declared_parameters(
        stage4_key=REQUIRED, worker_path=REQUIRED, map_path=REQUIRED, kind="stage4"
    )
    renderables = ("stage4_key",)
    worker_path: str
    map_path: str
    kind: str

    def _find(self, store: ArtifactStore) -> tuple[PublishedSet, dict[str, str]] | None:
        published = find_set(store, self.kind, str(self.stage4_key))
        if published is None:
            return None
        artifact = published.file(str(published.metadata[ARTIFACT]))
        url = store.download_url(artifact.key, self.store_settings.url_expiry_seconds)
        return published, {"url": url, "sha512": artifact.sha512}

    async def run(self) -> int:
        try:
            found = await self.in_thread(self._find)
        except StoreError as error:
            return await self.fail(error)
        if found is None or self.getProperty(REBUILD_PROPERTY):
            self.set_properties({STAGE4_REUSED_PROPERTY: False})
            why = "rebuild forced" if found is not None else "none published for this key yet"
            self.outcome = f"{why}: emerging"
            return SUCCESS
        published, download = found
        properties: dict[str, object] = {
            STAGE4_REUSED_PROPERTY: True,
            "stage4_set_id": published.set_id,
            **{name: published.metadata.get(name, []) for name in STAGE4_PACKAGE_LISTS},
        }
        return await self.hand_over(
            self.map_path,
            {self.worker_path: download},
            properties,
            f"reusing stage4 {published.set_id}: no emerge",
        )
