"""Push-back: what a build fetched or compiled that the farm lacks goes to staging, then into the mirror
(distfiles) and the binhost (packages, signed with the farm key)."""

from __future__ import annotations

import functools
import uuid

from buildbot.process.results import FAILURE, SUCCESS, WARNINGS

from gentoo_farm.artifacts import PUSHBACK_CANDIDATES, PUSHBACK_UPLOADS
from gentoo_farm.signing import FarmKey
from gentoo_farm.steps.base import REQUIRED
from gentoo_farm.steps.store import SignedUrlsStep, StoreStep, declared_parameters
from gentoo_farm.store import StoreError
from gentoo_farm.store.binhost import (
    PushbackCandidates,
    merge_distfiles,
    merge_pushback,
    pushback_uploads,
)

PUSHBACK_TOKEN_PROPERTY = "pushback_token"


class PushBackUrls(SignedUrlsStep):
    """Read ``farm-worker list-new``'s result from the worker; sign staging URLs for those files the farm
    lacks: a distfile the mirror has gets none, whatever the worker lists, and one gets a URL only when the
    published snapshot at ``snapshot_key`` (the one the build used) vouches for it."""

    name = "push-back-urls"
    parameters = declared_parameters(
        snapshot_key=None, candidates_path=PUSHBACK_CANDIDATES, map_path=PUSHBACK_UPLOADS
    )
    renderables = ("candidates_path", "map_path", "snapshot_key")

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

    name = "merge-distfiles"

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

    name = "merge-binhost"
    parameters = declared_parameters(profile=REQUIRED, key=REQUIRED)
    renderables = ("profile",)
    key: FarmKey

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
