"""Master-side steps around the artifact store: "up to date" checks, upload URLs, publishing, binhost merge.

Each step is thin: it renders its arguments, runs one blocking store call in a thread (never on the reactor)
and turns the outcome into properties and a status line. Signed URLs are credentials: they reach the worker
as a file (mode 0600) and never appear in logs or properties.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS, WARNINGS
from buildbot.steps.worker import CompositeStepMixin
from twisted.internet import defer, threads

from gentoo_farm.artifacts import PUSHBACK_CANDIDATES, PUSHBACK_UPLOADS, REBUILD_PROPERTY, UP_TO_DATE_PROPERTY
from gentoo_farm.image_name import ImageNameError
from gentoo_farm.signing import FarmKey
from gentoo_farm.store import ArtifactStore, StoreError, StoreSettings, open_store
from gentoo_farm.store.binhost import (
    PushbackCandidates,
    merge_distfiles,
    merge_pushback,
    pushback_uploads,
)
from gentoo_farm.store.sets import (
    ARTIFACT,
    ExpectedFile,
    PublishedSet,
    apply_retention,
    finalize_set,
    find_set,
    new_set_id,
    next_image_name,
    object_key,
    publish_signing_key,
)

SET_ID_PROPERTY = "publish_set_id"
IMAGE_NAME_PROPERTY = "image_name"
PUSHBACK_TOKEN_PROPERTY = "pushback_token"

StepCondition = Callable[[buildstep.BuildStep], "bool | defer.Deferred[bool]"]
"""A ``doStepIf``: whether the step runs, decided when the build reaches it."""


def published_properties(published: PublishedSet) -> dict[str, object]:
    """What later steps and downstream builds read about a set (no signed URLs: the UI shows properties)."""
    return {
        f"{published.kind}_set_id": published.set_id,
        f"{published.kind}_manifest": published.manifest_key,
        f"{published.kind}_files": {file.name: file.key for file in published.files},
        f"{published.kind}_sha512": {file.name: file.sha512 for file in published.files},
    }


def artifact_link(store: ArtifactStore, published: PublishedSet) -> tuple[str, str] | None:
    """The set's artifact and its URL for a link that outlives the build page's visit: only where the store
    has a public URL (a presigned one expires), and None for a set that names no artifact."""
    artifact = str(published.metadata.get(ARTIFACT) or "")
    if not artifact or store.public_base_url() is None:
        return None
    return artifact, store.public_object_url(published.file(artifact).key)


class StoreStep(buildstep.BuildStep):
    """Base of the steps here: one store, opened per run, and a status line that says what failed."""

    def __init__(self, store_settings: StoreSettings, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.store_settings = store_settings
        self.outcome: str | None = None
        self.current: str | None = None

    def reporter(self, log: Any) -> Callable[[str], None]:
        """What the store thread hands its lines to: each reaches ``log`` as it happens, and the newest is
        the step's status while it runs (reading back or uploading a large file takes minutes)."""

        def show(line: str) -> None:
            log.addStdout(f"{line}\n")
            self.current = line
            self.updateSummary()

        return lambda line: self.master.reactor.callFromThread(show, line)

    def getCurrentSummary(self) -> dict[str, str]:
        if self.current:
            return {"step": self.current}
        return super().getCurrentSummary()

    async def in_thread(self, function, *args: object) -> object:  # type: ignore[no-untyped-def]
        def call() -> object:
            return function(open_store(self.store_settings), *args)

        return await threads.deferToThread(call)

    async def fail(self, error: StoreError | ImageNameError) -> int:
        self.outcome = str(error)
        await self.addCompleteLog("error", str(error) + "\n")
        return FAILURE

    def set_properties(self, values: Mapping[str, object]) -> None:
        for name, value in values.items():
            self.setProperty(name, value, self.name, runtime=True)

    def getResultSummary(self) -> dict[str, str]:
        if self.outcome:
            return {"step": f"{self.name}: {self.outcome}"}
        return super().getResultSummary()


class SignedUrlsStep(CompositeStepMixin, StoreStep):
    """A store step that hands the worker signed URLs: in a JSON file only the worker's user can read."""

    async def hand_over(
        self, map_path: str, urls: object, properties: Mapping[str, object], outcome: str
    ) -> int:
        """Write ``urls`` as JSON to ``map_path`` on the worker (mode 0600); only then set ``properties``
        and say ``outcome``."""
        written = await self.downloadFileContentToWorker(map_path, json.dumps(urls), mode=0o600)
        if written is None:
            self.outcome = f"could not write {map_path} on the worker"
            return FAILURE
        self.set_properties(properties)
        self.outcome = outcome
        return SUCCESS


def unless_up_to_date(condition: StepCondition | None = None) -> dict[str, object]:
    """The options of every step after :class:`CheckUpToDate`: when the store already holds this input
    key's set the step is skipped and hidden, so the build ends SUCCESS in seconds; otherwise it runs
    if ``condition`` (a ``doStepIf`` of its own) allows."""

    def needed(step: buildstep.BuildStep) -> bool | defer.Deferred[bool]:
        if step.getProperty(UP_TO_DATE_PROPERTY):
            return False
        return True if condition is None else condition(step)

    def hidden(results: int, step: buildstep.BuildStep) -> bool:
        return results == SKIPPED and bool(step.getProperty(UP_TO_DATE_PROPERTY))

    return {"doStepIf": needed, "hideStepIf": hidden}


class CheckUpToDate(StoreStep):
    """Tells the build whether the store already holds the artifact of this input key.

    If it does, the existing set is handed on as properties (``<kind>_set_id``, ``<kind>_files``...) and
    the property ``up_to_date`` turns the remaining steps (built with :func:`unless_up_to_date`) into
    skipped ones: the build ends SUCCESS, its status saying "up to date". A build whose ``rebuild``
    property is true builds anyway and publishes a new set.
    """

    renderables = ("input_key",)

    def __init__(self, store_settings: StoreSettings, kind: str, input_key: str, **kwargs: object) -> None:
        kwargs.setdefault("name", f"{kind}-up-to-date")
        super().__init__(store_settings, **kwargs)
        self.kind = kind
        self.input_key = input_key

    async def run(self) -> int:
        try:
            published = await self.in_thread(find_set, self.kind, str(self.input_key))
        except StoreError as error:
            return await self.fail(error)
        if published is not None and self.getProperty(REBUILD_PROPERTY):
            self.setProperty(UP_TO_DATE_PROPERTY, False, self.name, runtime=True)
            self.outcome = f"rebuild forced: {self.kind} {published.set_id} has this input key already"
            return SUCCESS
        self.setProperty(UP_TO_DATE_PROPERTY, published is not None, self.name, runtime=True)
        if published is None:
            self.outcome = f"no {self.kind} for input key {str(self.input_key)[:12]} yet: building"
            return SUCCESS
        assert isinstance(published, PublishedSet)
        self.set_properties(published_properties(published))
        self.outcome = f"up to date: {self.kind} {published.set_id} already published"
        return SUCCESS

    def getResultSummary(self) -> dict[str, str]:
        summary = super().getResultSummary()
        if self.results == SUCCESS and self.getProperty(UP_TO_DATE_PROPERTY):
            # The build's own status line: the steps after this one were skipped, on purpose.
            summary["build"] = f"up to date: {self.kind} {self.getProperty(f'{self.kind}_set_id')}"
        return summary


class NameImage(StoreStep):
    """Decide the image's name (``gentoo-YYYYMMDD[.N]-ARCH``, :func:`next_image_name`) right before its
    files are uploaded under it; the property ``image_name`` carries it to the publish steps."""

    renderables = ("arch",)

    def __init__(self, store_settings: StoreSettings, arch: str, **kwargs: object) -> None:
        kwargs.setdefault("name", "name-image")
        super().__init__(store_settings, **kwargs)
        self.arch = arch

    async def run(self) -> int:
        try:
            name = await self.in_thread(next_image_name, str(self.arch))
        except (StoreError, ImageNameError) as error:
            return await self.fail(error)
        self.set_properties({IMAGE_NAME_PROPERTY: str(name)})
        self.outcome = f"image name {name}"
        return SUCCESS


class MakeUploadUrls(SignedUrlsStep):
    """Sign one PUT URL per file of a new set and write the map to the worker for ``farm-worker upload``.

    ``files`` maps artifact file names to paths on the worker. The new set id becomes the property
    ``publish_set_id`` for :class:`PublishSet`.
    """

    renderables = ("files", "input_key", "map_path")

    def __init__(
        self,
        store_settings: StoreSettings,
        kind: str,
        input_key: str,
        files: Mapping[str, str],
        map_path: str = "upload-map.json",
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("name", f"{kind}-upload-urls")
        super().__init__(store_settings, **kwargs)
        self.kind = kind
        self.input_key = input_key
        self.files = files
        self.map_path = map_path

    async def run(self) -> int:
        set_id = new_set_id(str(self.input_key))
        expiry = self.store_settings.url_expiry_seconds

        def sign(store: ArtifactStore) -> dict[str, str]:
            return {
                str(path): store.upload_url(object_key(self.kind, set_id, name), expiry)
                for name, path in dict(self.files).items()
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
    """

    renderables = ("input_key", "files", "metadata", "sources", "set_id")

    def __init__(
        self,
        store_settings: StoreSettings,
        kind: str,
        input_key: str,
        files: Mapping[str, Mapping[str, object]],
        metadata: Mapping[str, object] | None = None,
        sources: Mapping[str, str] | None = None,
        set_id: str | None = None,
        key: FarmKey | None = None,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("name", f"publish-{kind}")
        super().__init__(store_settings, **kwargs)
        self.kind = kind
        self.input_key = input_key
        self.files = files
        self.metadata = metadata or {}
        self.sources = sources or {}
        self.set_id = set_id
        self.key = key
        self.published_name: str | None = None

    def expected_files(self) -> dict[str, ExpectedFile]:
        try:
            return {
                str(name): ExpectedFile(int(info["size"]), str(info["sha512"]), info.get("md5"))  # type: ignore[arg-type]
                for name, info in dict(self.files).items()
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
                    dict(self.metadata),
                    dict(self.sources),
                    say,
                    sign=self.key.clearsign if self.key is not None else None,
                )
                link = artifact_link(store, published)
                # The set is published now; retention failing must not say otherwise.
                try:
                    return published, apply_retention(store, self.store_settings.keep).doomed_keys, "", link
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


class PushBackUrls(SignedUrlsStep):
    """Read ``farm-worker list-new``'s result from the worker; sign staging URLs for those files the farm
    lacks: a distfile the mirror has gets none, whatever the worker lists, and one gets a URL only when the
    published snapshot at ``snapshot_key`` (the one the build used) vouches for it."""

    renderables = ("candidates_path", "map_path", "snapshot_key")

    def __init__(
        self,
        store_settings: StoreSettings,
        snapshot_key: object = None,
        candidates_path: str = PUSHBACK_CANDIDATES,
        map_path: str = PUSHBACK_UPLOADS,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("name", "push-back-urls")
        super().__init__(store_settings, **kwargs)
        self.snapshot_key = snapshot_key
        self.candidates_path = candidates_path
        self.map_path = map_path

    async def run(self) -> int:
        content = await self.getFileContentFromWorker(str(self.candidates_path))
        if content is None:
            self.outcome = f"{self.candidates_path} not found on the worker (did list-new run?)"
            return FAILURE
        token = f"{self.build.buildid}-{uuid.uuid4().hex[:12]}"
        try:
            candidates = PushbackCandidates.from_json(content, str(self.candidates_path))
            uploads = await self.in_thread(
                pushback_uploads,
                token,
                candidates,
                self.store_settings.url_expiry_seconds,
                str(self.snapshot_key) if self.snapshot_key else None,
            )
        except StoreError as error:
            return await self.fail(error)
        distfiles = sum(candidate.file in uploads for candidate in candidates.distfiles.values())
        skipped = len(candidates.distfiles) - distfiles
        return await self.hand_over(
            str(self.map_path),
            uploads,
            {PUSHBACK_TOKEN_PROPERTY: token},
            f"{len(candidates.binpkgs)} packages, {distfiles} distfiles to push"
            + (f" ({skipped} the mirror has or the snapshot does not vouch for)" if skipped else ""),
        )


class MergeDistfiles(StoreStep):
    """Move the build's staged distfiles into the mirror: those matching their DIST line, under new names."""

    def __init__(self, store_settings: StoreSettings, **kwargs: object) -> None:
        kwargs.setdefault("name", "merge-distfiles")
        super().__init__(store_settings, **kwargs)

    async def run(self) -> int:
        token = self.getProperty(PUSHBACK_TOKEN_PROPERTY)
        if not token:
            self.outcome = "nothing was pushed back (no push-back token)"
            return SUCCESS
        try:
            result = await self.in_thread(merge_distfiles, str(token))
        except StoreError as error:
            return await self.fail(error)
        lines = [f"added {name}" for name in result.added]
        lines += [f"already in the mirror (kept as it is): {name}" for name in result.already_there]
        lines += [f"signed for but never uploaded: {name}" for name in result.missing]
        lines += [f"refused: {reason}" for reason in result.rejected]
        await self.addCompleteLog("distfiles", "\n".join(lines) + "\n")
        self.outcome = f"mirror: {len(result.added)} added, {len(result.already_there)} already there" + (
            f", {len(result.rejected)} refused" if result.rejected else ""
        )
        return WARNINGS if result.missing or result.rejected else SUCCESS


class MergeBinhost(StoreStep):
    """Sign the build's staged packages with the farm key into the binhost and merge their index entries
    (under the lock)."""

    renderables = ("profile",)

    def __init__(self, store_settings: StoreSettings, profile: str, key: FarmKey, **kwargs: object) -> None:
        kwargs.setdefault("name", "merge-binhost")
        super().__init__(store_settings, **kwargs)
        self.profile = profile
        self.key = key

    async def run(self) -> int:
        token = self.getProperty(PUSHBACK_TOKEN_PROPERTY)
        if not token:
            self.outcome = "nothing was pushed back (no push-back token)"
            return SUCCESS
        log = await self.addLog("binhost")
        try:
            merge = functools.partial(merge_pushback, progress=self.reporter(log))
            result = await self.in_thread(merge, str(self.profile), str(token), self.key)
        except StoreError as error:
            await log.finish()
            return await self.fail(error)
        lines = [f"added {path}" for path in result.added]
        lines += [
            f"already in the binhost (another build pushed it first): {path}" for path in result.already_there
        ]
        lines += [f"staged index names a file that never arrived: {path}" for path in result.missing]
        await log.addStdout("\n".join(lines) + "\n")
        await log.finish()
        self.outcome = f"binhost: {len(result.added)} added, {len(result.already_there)} already there"
        return WARNINGS if result.missing else SUCCESS
