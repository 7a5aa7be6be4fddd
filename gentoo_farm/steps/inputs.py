"""The first step of every builder: what is this build made from?"""

from collections.abc import Mapping, Sequence

from buildbot.process.results import SUCCESS

from gentoo_farm.steps.base import FarmWorkerStep


class ComputeInputKey(FarmWorkerStep):
    """Sets the ``input_key`` property from the files, trees and values a build depends on."""

    renderables = ("kind", "files", "values")

    def __init__(
        self, kind: str, files: Sequence[object] = (), values: Mapping[str, object] | None = None, **kwargs
    ) -> None:
        kwargs.setdefault("name", "input key")
        kwargs.setdefault("description", "computing input key")
        super().__init__("input-key", **kwargs)
        self.kind = kind
        self.files = files
        self.values = values or {}

    def getResultSummary(self) -> dict[str, str]:
        if self.results == SUCCESS:
            return {"step": f"input key {self.getProperty('input_key')}"}
        return super().getResultSummary()

    def stage_arguments(self) -> list[object]:
        arguments: list[object] = ["--kind", self.kind]
        for path in self.files:
            arguments += ["--file", path]
        for name, value in sorted(self.values.items()):
            arguments += ["--value", f"{name}={value}"]
        return arguments
