"""The one way a build step runs a worker-side stage: ``farm-worker STAGE ARGS...``."""

import json
import secrets
from collections.abc import Sequence

from buildbot.process import buildstep, logobserver
from buildbot.process.results import FAILURE, SUCCESS

from gentoo_farm.stageprotocol import ERROR_MARKER, RESULT_NONCE_ENV, result_prefix

# A stopped build's stage gets SIGTERM and this long to clean up (the disk stage unmounts its
# filesystem and detaches its loop device) before Buildbot sends SIGKILL.
SIGTERM_GRACE_SECONDS = 60


def new_result_nonce() -> str:
    """A secret for one command's result lines (tests replace it to know what the stage prints)."""
    return secrets.token_hex(16)


class FarmWorkerStep(buildstep.ShellMixin, buildstep.BuildStep):
    """Run one toolkit stage on the worker.

    Lines the stage prints with :func:`gentoo_farm.workers.toolkit.report` become build
    properties; on failure the stage's own error message becomes the step's status text,
    so the UI says *why* without opening the log.
    """

    renderables = ("stage_args",)

    def __init__(self, stage: str, stage_args: Sequence[object] = (), **kwargs: object) -> None:
        kwargs.setdefault("sigtermTime", SIGTERM_GRACE_SECONDS)
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        kwargs.setdefault("name", stage)
        kwargs.setdefault("description", kwargs["name"])
        kwargs.setdefault("descriptionDone", kwargs["name"])
        # Later stages work on what earlier ones made; running them after a failure only adds noise.
        kwargs.setdefault("haltOnFailure", True)
        super().__init__(**kwargs)
        self.stage = stage
        self.stage_args = stage_args
        self.error_message: str | None = None
        self.result_nonce = ""
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._consume_lines))

    def _consume_lines(self):
        while True:
            stream, line = yield
            prefix = result_prefix(self.result_nonce)
            # Without this command's nonce a result line is only output (a package build can print one).
            if stream == "o" and self.result_nonce and line.startswith(prefix):
                for name, value in json.loads(line[len(prefix) :]).items():
                    self.setProperty(name, value, f"farm-worker {self.stage}", runtime=True)
            elif stream == "e" and ERROR_MARKER in line:
                self.error_message = line.split(ERROR_MARKER, 1)[1].strip()

    def stage_arguments(self) -> Sequence[object]:
        """The stage's command-line arguments; subclasses build them from their (rendered) attributes."""
        return self.stage_args

    async def run(self) -> int:
        command = [
            "farm-worker",
            self.stage,
            *(str(arg) for arg in self.stage_arguments() if arg is not None),
        ]
        self.result_nonce = new_result_nonce()
        cmd = await self.makeRemoteShellCommand(
            command=command, env={**self.env, RESULT_NONCE_ENV: self.result_nonce}
        )
        await self.runCommand(cmd)
        return FAILURE if cmd.didFail() else SUCCESS

    def getResultSummary(self) -> dict[str, str]:
        if self.results != SUCCESS and self.error_message:
            return {"step": f"{self.name}: {self.error_message}"}
        return super().getResultSummary()
