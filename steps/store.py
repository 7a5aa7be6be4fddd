"""The base of the master-side steps that use the artifact store, and what they hand on about a set.

Each step is thin: it renders its arguments, runs one blocking store call in a thread (never on the reactor)
and turns the outcome into properties and a status line. Signed URLs are credentials: they reach the worker
as a file (mode 0600) and never appear in logs or properties.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from buildbot.process.results import FAILURE, SUCCESS
from buildbot.steps.worker import CompositeStepMixin
from twisted.internet import threads

from gentoo_farm.image_name import ImageNameError
from gentoo_farm.steps.base import LiveStatus, Renderable, set_declared
from gentoo_farm.store import StoreError, StoreSettings, open_store
from gentoo_farm.store.sets import PublishedSet

T = TypeVar("T")


def published_properties(published: PublishedSet) -> dict[str, object]:
    """What later steps and downstream builds read about a set (no signed URLs: the UI shows properties)."""
    return {
        f"{published.kind}_set_id": published.set_id,
        f"{published.kind}_manifest": published.manifest_key,
        f"{published.kind}_files": {file.name: file.key for file in published.files},
        f"{published.kind}_sha512": {file.name: file.sha512 for file in published.files},
    }


def declared_parameters(**defaults: object) -> Mapping[str, object]:
    """A store step's ``parameters``: keyword name -> default (:data:`REQUIRED`: none), in positional
    order."""
    return MappingProxyType(defaults)


class StoreStep(LiveStatus):
    """Base of the steps here: one store, opened per run, and a status line that says what failed.

    A subclass declares what it takes after the store's settings: ``parameters`` (keyword name -> default,
    or :data:`REQUIRED`; positional values fill them in declared order), which of them Buildbot renders
    (``renderables``), its ``name`` (which may name a parameter: ``"publish-{kind}"``) and the defaults of
    Buildbot's step options it differs in (``options``), as class attributes; each parameter becomes an
    attribute of the step.
    """

    parameters: Mapping[str, object] = MappingProxyType({})
    options: Mapping[str, object] = MappingProxyType({})

    def __init__(self, store_settings: StoreSettings, *values: Renderable, **kwargs: Any) -> None:
        # kwargs: the declared parameters and Buildbot's own step options (untyped).
        set_declared(self, self.parameters, values, kwargs)
        kwargs.setdefault(
            "name", type(self).name.format(**{name: getattr(self, name) for name in self.parameters})
        )
        super().__init__(**{**self.options, **kwargs})
        self.store_settings = store_settings
        self.outcome: str | None = None

    def reporter(self, log: Any) -> Callable[[str], None]:
        """What the store thread hands its lines to: each reaches ``log`` as it happens, and the newest is
        the step's status while it runs (reading back or uploading a large file takes minutes)."""

        def show(line: str) -> None:
            log.addStdout(f"{line}\n")
            self.show_live_status(line)

        return lambda line: self.master.reactor.callFromThread(show, line)

    async def in_thread(self, function: Callable[..., T], *args: object) -> T:
        """``function(store, *args)`` in a thread, with the store opened there."""

        def call() -> T:
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
