"""Is the artifact of this input key published already? If so, the rest of the build is skipped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from buildbot.process import buildstep
from buildbot.process.results import SKIPPED, SUCCESS
from twisted.internet import defer

from gentoo_farm.artifacts import REBUILD_PROPERTY, UP_TO_DATE_PROPERTY
from gentoo_farm.steps.base import REQUIRED
from gentoo_farm.steps.store import StoreStep, declared_parameters, published_properties
from gentoo_farm.store import StoreError
from gentoo_farm.store.sets import PublishedSet, find_set

StepCondition = Callable[[buildstep.BuildStep], "bool | defer.Deferred[bool]"]
"""A ``doStepIf``: whether the step runs, decided when the build reaches it."""


def unless_up_to_date(condition: StepCondition | None = None) -> dict[str, Any]:
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

    name = "{kind}-up-to-date"
    parameters = declared_parameters(kind=REQUIRED, input_key=REQUIRED)
    renderables = ("input_key",)
    kind: str

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
