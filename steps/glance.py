"""Master-side step: publish the build's image (already in the store) to every configured Glance target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buildbot.process import properties
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS, WARNINGS, worst_status
from twisted.internet import threads

from gentoo_farm.catalog import image_by_set_id
from gentoo_farm.glance import (
    GlanceTargetSettings,
    ImageUpload,
    TargetOutcome,
    publish_to_target,
    record_outcomes,
    target_place,
    upload_from_record,
)
from gentoo_farm.steps.base import LiveStatus, Renderable
from gentoo_farm.store import ArtifactStore, StoreError, StoreSettings, open_store
from gentoo_farm.store.clouds import UNREACHABLE
from gentoo_farm.transfer import REPORT_SECONDS


class PublishToGlance(LiveStatus):
    """Upload the image set ``set_id`` of ``images_kind`` (default: the ``<images_kind>_set_id`` property the
    store's publish steps set, ``images_set_id``) to each target, one after the other, in a thread.

    A cloud that cannot be reached makes the step WARNINGS, not FAILURE: the image is safely in the
    store and the next build (or a rebuild) publishes it there. Any other Glance failure (an import
    that failed, a corrupted upload, bad settings) is a FAILURE. The status text says per target what
    happened; the ``glance`` log has the details as they happen (with an upload's progress every
    ``progress_interval`` seconds, also the step's status while it runs); the property ``glance_images``
    maps each cloud that took the image (``cloud/region`` for a target with a region) to its image id.
    What each cloud did also goes to the store beside the set (``glance.json``, for ``farm images`` and
    the Images page), and images rotation deleted are marked there.
    """

    name = "glance"
    renderables = ("set_id",)

    def __init__(
        self,
        store_settings: StoreSettings,
        targets: Sequence[GlanceTargetSettings],
        farm_id: str,
        set_id: Renderable = None,
        images_kind: str = "images",
        progress_interval: float = REPORT_SECONDS,
        signing_fingerprint: str = "",
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("warnOnWarnings", True)
        kwargs.setdefault("description", "publishing to Glance")
        kwargs.setdefault("descriptionDone", "glance")
        super().__init__(**kwargs)
        self.store_settings = store_settings
        self.targets = list(targets)
        self.farm_id = farm_id
        self.set_id = set_id if set_id is not None else properties.Property(f"{images_kind}_set_id")
        self.images_kind = images_kind
        self.progress_interval = progress_interval
        self.signing_fingerprint = signing_fingerprint
        self.outcomes: list[str] = []

    async def run(self) -> int:
        if not self.targets:
            self.outcomes.append("no Glance targets configured")
            return SKIPPED
        log = await self.addLog("glance")
        expiry = self.store_settings.url_expiry_seconds

        def find_upload() -> tuple[ArtifactStore, str, ImageUpload | None]:
            store = open_store(self.store_settings)
            record = image_by_set_id(store, str(self.set_id), expiry, self.images_kind)
            if record is None:
                return store, "", None
            upload = upload_from_record(store, record, self.farm_id, expiry, self.signing_fingerprint)
            return store, record.set_id, upload

        try:
            store, set_id, upload = await threads.deferToThread(find_upload)
        except StoreError as error:
            self.outcomes.append(f"cannot read the store: {error}")
            await log.addStderr(f"{error}\n")
            return FAILURE
        if upload is None:
            self.outcomes.append(f"no published image {self.set_id!r} in {store.location}")
            await log.addStderr(self.outcomes[-1] + "\n")
            return FAILURE
        results = SUCCESS
        outcomes: list[TargetOutcome] = []
        for target in self.targets:
            place = target_place(target)
            await log.addStdout(f"--- {place}: publishing {upload.name}\n")

            def progress(message: str, cloud: str = place) -> None:
                self.master.reactor.callFromThread(self._show_progress, log, cloud, message)

            outcome: TargetOutcome = await threads.deferToThread(
                publish_to_target, upload, target, progress=progress, progress_interval=self.progress_interval
            )
            outcomes.append(outcome)
            why = outcome.record.detail
            if outcome.record.status == UNREACHABLE:
                results = worst_status(results, WARNINGS)
                self.outcomes.append(f"{why} (not published there; the image is in the store)")
                await log.addStderr(f"{why}\n(the image stays in the store; a rebuild publishes it)\n")
            elif outcome.result is None:
                results = worst_status(results, FAILURE)
                self.outcomes.append(why)
                await log.addStderr(f"{why}\n")
            else:
                if outcome.result.rotation_error:
                    results = worst_status(results, WARNINGS)
                self.outcomes.append(outcome.result.summary())
        published = {outcome.place: outcome.record.image_id for outcome in outcomes if outcome.result}
        self.setProperty("glance_images", published, self.name, runtime=True)
        try:
            await threads.deferToThread(record_outcomes, store, set_id, self.images_kind, outcomes)
        except StoreError as error:
            # The clouds have the image either way; only the listing of where it went is behind.
            results = worst_status(results, WARNINGS)
            self.outcomes.append(f"cannot record the Glance images in the store: {error}")
            await log.addStderr(f"{self.outcomes[-1]}\n")
        return results

    def _show_progress(self, log: Any, cloud: str, message: str) -> None:
        log.addStdout(f"{message}\n")
        self.show_live_status(f"{cloud}: {message}")

    def getResultSummary(self) -> dict[str, str]:
        if self.outcomes:
            return {"step": f"glance: {'; '.join(self.outcomes)}"}
        return super().getResultSummary()
