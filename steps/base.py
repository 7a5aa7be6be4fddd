"""The one way a build step runs a worker-side stage: ``farm-worker STAGE ARGS...``.

A step declares its stage's command line: each keyword argument it takes, and the option it becomes
(:class:`StageArgument`). The declared arguments are renderable; the factories pass properties and
values, the step renders them into flags. tests/test_worker_commands.py parses every command the
factories would run with farm-worker's own parser, so the two sides cannot drift apart.
"""

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, cast

from buildbot import config
from buildbot.process import buildstep, logobserver
from buildbot.process.results import FAILURE, SUCCESS

from gentoo_farm.stageprotocol import ERROR_MARKER, RESULT_NONCE_ENV, result_prefix
from gentoo_farm.units import human_size

# A stopped build's stage gets SIGTERM and this long to clean up (the disk stage unmounts its
# filesystem and detaches its loop device) before Buildbot sends SIGKILL.
SIGTERM_GRACE_SECONDS = 60

Renderable: TypeAlias = object
"""A value or a Buildbot renderable (Property, Interpolate, Transform) the step renders at run time.

Buildbot has no type hints, so a renderable is any object to the checker; the alias says which
arguments a step renders before it reads them."""


class LiveStatus(buildstep.BuildStep):
    """A step whose status while it runs is the newest thing it is doing (an emerge, an upload or a read-back
    takes minutes), then Buildbot's own."""

    live_status: str | None = None

    def show_live_status(self, line: str) -> None:
        self.live_status = line
        self.updateSummary()

    def getCurrentSummary(self) -> dict[str, str]:
        if self.live_status:
            return {"step": self.live_status}
        return super().getCurrentSummary()


def new_result_nonce() -> str:
    """A secret for one command's result lines (tests replace it to know what the stage prints)."""
    return secrets.token_hex(16)


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


def as_list(value: object) -> list[object]:
    """A rendered property may hold one string or a list; a package set in farm.toml is a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [*value.split()]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def set_declared(
    step: buildstep.BuildStep,
    defaults: Mapping[str, object],
    values: Sequence[object],
    kwargs: dict[str, Any],
) -> None:
    """Set each argument a step declares (name -> default, or :data:`REQUIRED`) as its attribute: from
    the positional ``values`` in declared order, else from ``kwargs`` (taken out, so that Buildbot sees
    only its own options), else the default; a config error names a value missing, given twice or too many."""
    names = list(defaults)
    if len(values) > len(names):
        config.error(f"{type(step).__name__}: {len(values)} positional values for {names}")
    given = dict(zip(names, values, strict=False))
    for name, default in defaults.items():
        if name in given and name in kwargs:
            config.error(f"{type(step).__name__}: {name} given twice")
        value = given[name] if name in given else kwargs.pop(name, default)
        if value is REQUIRED:
            config.error(f"{type(step).__name__}: missing argument {name!r}")
        setattr(step, name, value)


def declared(**arguments: "StageArgument") -> Mapping[str, "StageArgument"]:
    """A step's ``arguments``: keyword name -> :class:`StageArgument`, in command-line order."""
    return MappingProxyType(arguments)


@dataclass(frozen=True)
class StageArgument:
    """How one keyword argument of a :class:`FarmWorkerStep` becomes part of its stage's command line.

    ``option`` is the flag, or empty for a positional argument. ``form``:

    - ``value``: ``OPTION VALUE``; an optional argument that is empty (None, "", 0) is left out;
    - ``switch``: ``OPTION`` when true; ``toggle``: ``OPTION`` when true, its ``--no-`` form when false;
    - ``each``: ``OPTION ITEM`` for every item of a list (or word of a string);
    - ``list``: ``OPTION ITEM...`` (possibly no item); ``rest``: ``-- ITEM...``, after which nothing
      is read as an option (a package atom may start with "-");
    - ``pairs``: ``OPTION NAME=VALUE`` for every item of a mapping, by name.
    """

    option: str = ""
    form: Literal["value", "switch", "toggle", "each", "list", "rest", "pairs"] = "value"
    default: Renderable = REQUIRED

    def command_line(self, value: object) -> list[object]:
        flag: list[object] = [self.option] if self.option else []
        if self.form == "value":
            if self.default is not REQUIRED and not value:
                return []
            return [*flag, value]
        if self.form == "switch":
            return flag if value else []
        if self.form == "toggle":
            return flag if value else [f"--no-{self.option.removeprefix('--')}"]
        if self.form == "each":
            return [part for item in as_list(value) for part in (*flag, item)]
        if self.form == "list":
            return [*flag, *as_list(value)]
        if self.form == "rest":
            return ["--", *as_list(value)]
        pairs = value if isinstance(value, Mapping) else {}
        return [part for name, item in sorted(pairs.items()) for part in (*flag, f"{name}={item}")]


class FarmWorkerStep(buildstep.ShellMixin, buildstep.BuildStep):
    """Run one toolkit stage on the worker.

    A subclass names its ``stage`` and declares its ``arguments`` (keyword name -> :class:`StageArgument`,
    in command-line order, ``rest`` last whatever its place; positional values fill them in declared
    order), with ``name`` (default: the stage), ``description`` and ``descriptionDone`` (default: the
    name) as class attributes as Buildbot's own steps have them. Used directly it runs
    ``FarmWorkerStep(STAGE, stage_args=[...])``.

    Lines the stage prints with :func:`gentoo_farm.workers.toolkit.report` become build
    properties; on failure the stage's own error message becomes the step's status text,
    so the UI says *why* without opening the log.
    """

    stage: str = ""
    arguments: Mapping[str, StageArgument] = MappingProxyType({})
    renderables: tuple[str, ...] = ("stage_args",)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "arguments" in cls.__dict__:
            # Buildbot renders the renderables each class of the step lists (accumulateClassList).
            cls.renderables = tuple(cls.arguments)

    def __init__(self, *values: Renderable, stage_args: Renderable = (), **kwargs: Any) -> None:
        # kwargs: the declared arguments (renderables) and Buildbot's own step options (untyped).
        positional = list(values)
        stage = type(self).stage
        if not stage:  # used directly: FarmWorkerStep(STAGE, STAGE_ARGS)
            if not positional:
                config.error("FarmWorkerStep needs the stage it runs")
            stage = str(positional.pop(0))
            if positional:
                stage_args = positional.pop(0)
        defaults = {name: argument.default for name, argument in self.arguments.items()}
        set_declared(self, defaults, positional, kwargs)
        kwargs.setdefault("sigtermTime", SIGTERM_GRACE_SECONDS)
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        if "name" not in kwargs and type(self).name == buildstep.BuildStep.name:
            kwargs["name"] = stage
        name = kwargs.get("name", type(self).name)
        if type(self).description is None:
            kwargs.setdefault("description", name)
        if type(self).descriptionDone is None:
            kwargs.setdefault("descriptionDone", name)
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

    def stage_arguments(self) -> list[object]:
        """The stage's command-line arguments, from the (rendered) declared arguments and ``stage_args``."""
        ordered = sorted(self.arguments.items(), key=lambda item: item[1].form == "rest")
        declared = [part for name, argument in ordered for part in argument.command_line(getattr(self, name))]
        return [*declared, *cast(Sequence[object], self.stage_args)]  # rendered: a list by now

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

    def success_summary(self) -> str | None:
        """The status text of a successful run, from the values its stage reported; None: Buildbot's."""
        return None

    def reported_sizes(self, *properties: str) -> list[str] | None:
        """The byte counts the stage reported as ``properties``, human-readable; None if one is missing."""
        values = [self.getProperty(name) for name in properties]
        return None if None in values else [human_size(value) for value in values]

    def getResultSummary(self) -> dict[str, str]:
        if self.results != SUCCESS and self.error_message:
            return {"step": f"{self.name}: {self.error_message}"}
        summary = self.success_summary() if self.results == SUCCESS else None
        return {"step": summary} if summary is not None else super().getResultSummary()
