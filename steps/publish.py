"""Publishing a set: signed upload URLs for the worker, then verify, sign, flip ``latest``, retention."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from twisted.internet import threads

from gentoo_farm.signing import FarmKey
from gentoo_farm.steps.base import REQUIRED
from gentoo_farm.steps.store import SignedUrlsStep, StoreStep, declared_parameters, published_properties
from gentoo_farm.store import ArtifactStore, StoreError, open_store
from gentoo_farm.store.sets import (
    ARTIFACT,
    ExpectedFile,
    PublishedSet,
    apply_retention,
    finalize_set,
    new_set_id,
    object_key,
    publish_signing_key,
)

SET_ID_PROPERTY = "publish_set_id"


def artifact_link(store: ArtifactStore, published: PublishedSet) -> tuple[str, str] | None:
    """The set's artifact and its URL for a link that outlives the build page's visit: only where the store
    has a public URL (a presigned one expires), and None for a set that names no artifact."""
    artifact = str(published.metadata.get(ARTIFACT) or "")
    if not artifact or store.public_base_url() is None:
        return None
    return artifact, store.public_object_url(published.file(artifact).key)


class MakeUploadUrls(SignedUrlsStep):
    """Sign one PUT URL per file of a new set and write the map to the worker for ``farm-worker upload``.

    ``files`` maps artifact file names to paths on the worker. The new set id becomes the property
    ``publish_set_id`` for :class:`PublishSet`.
    """

    name = "{kind}-upload-urls"
    parameters = declared_parameters(
        kind=REQUIRED, input_key=REQUIRED, files=REQUIRED, map_path="upload-map.json"
    )
    renderables = ("files", "input_key", "map_path")
    kind: str

    async def run(self) -> int:
        set_id = new_set_id(str(self.input_key))
        expiry = self.store_settings.url_expiry_seconds

        def sign(store: ArtifactStore) -> dict[str, str]:
            return {
                str(path): store.upload_url(object_key(self.kind, set_id, name), expiry)
                for name, path in dict(cast(Mapping[str, object], self.files)).items()  # rendered
            }

        try:
            uploads = await self.in_thread(sign)
        except StoreError as error:
            return await self.fail(error)
        return await self.hand_over(
            str(self.map_path),
            uploads,
            {SET_ID_PROPERTY: set_id},
            f"{len(uploads)} upload URLs for {self.kind} {set_id} (valid {expiry} s)",
        )


class PublishSet(StoreStep):
    """Verify what the worker uploaded, write checksums and manifest, flip ``latest``, apply retention.

    ``files`` maps each file name to ``{"size": ..., "sha512": ...}`` as its producer reported it
    (e.g. ``farm-worker upload --report-checksums`` or the disk stage). ``metadata`` goes into the manifest
    (build id, kernel version, image name); ``sources`` names the sets this one was built from. With the
    farm ``key`` the set's DIGESTS are signed, and the key's public half is kept at its stable name.
    Retention keeps ``[store] keep`` sets per kind, ``keep_by_kind``'s number for a kind it names.
    """

    name = "publish-{kind}"
    parameters = declared_parameters(
        kind=REQUIRED,
        input_key=REQUIRED,
        files=REQUIRED,
        metadata=None,
        sources=None,
        set_id=None,
        key=None,
        keep_by_kind=MappingProxyType({}),
    )
    renderables = ("input_key", "files", "metadata", "sources", "set_id")
    kind: str
    key: FarmKey | None
    keep_by_kind: Mapping[str, int]
    published_name: str | None = None

    def expected_files(self) -> dict[str, ExpectedFile]:
        try:
            return {
                str(name): ExpectedFile(int(info["size"]), str(info["sha512"]), info.get("md5"))
                for name, info in dict(cast(Mapping[str, Mapping[str, Any]], self.files)).items()  # rendered
            }
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"files to publish must map names to {{size, sha512}}: {error}") from error

    async def run(self) -> int:
        set_id = str(self.set_id or self.getProperty(SET_ID_PROPERTY) or "")
        if not set_id:
            self.outcome = f"no set id: run MakeUploadUrls first or give set_id (property {SET_ID_PROPERTY})"
            return FAILURE
        log = await self.addLog("publish")
        say = self.reporter(log)
        try:
            expected = self.expected_files()

            def publish(
                store: ArtifactStore,
            ) -> tuple[PublishedSet, tuple[str, ...], str, tuple[str, str] | None]:
                if self.key is not None:
                    publish_signing_key(store, self.key.public_key())
                published = finalize_set(
                    store,
                    self.kind,
                    set_id,
                    str(self.input_key),
                    expected,
                    dict(cast(Mapping[str, object], self.metadata or {})),  # rendered
                    dict(cast(Mapping[str, str], self.sources or {})),
                    say,
                    sign=self.key.clearsign if self.key is not None else None,
                )
                link = artifact_link(store, published)
                # The set is published now; retention failing must not say otherwise.
                try:
                    plan = apply_retention(store, self.store_settings.keep, keep_by_kind=self.keep_by_kind)
                    return published, plan.doomed_keys, "", link
                except StoreError as error:
                    return published, (), str(error), link

            published, deleted, retention_error, link = await threads.deferToThread(
                lambda: publish(open_store(self.store_settings))
            )
        except StoreError as error:
            await log.finish()
            return await self.fail(error)
        lines = [f"retention: deleted {key}" for key in deleted]
        if retention_error:
            lines.append(
                f"retention failed (the set is published; the next publish tries again): {retention_error}"
            )
        await log.addStdout("".join(line + "\n" for line in lines))
        await log.finish()
        self.set_properties(published_properties(published))
        if link:
            await self.addURL(*link)
        name = published.metadata.get("name")
        self.published_name = str(name) if name else None
        what = f"{name} ({self.kind} set {set_id})" if name else f"{self.kind} {set_id}"
        self.outcome = f"published {what}" + (
            f", retention removed {len(deleted)} objects" if deleted else ""
        )
        if retention_error:
            self.outcome += ", retention failed (see the log)"
            return WARNINGS
        return SUCCESS

    def getResultSummary(self) -> dict[str, str]:
        summary = super().getResultSummary()
        if self.published_name:
            # The build's status line (home page, builder page) names the image it made, not only a set id.
            summary["build"] = f"published {self.published_name}"
        return summary
