"""Every worker command the builders would run parses with farm-worker's own parser.

A stage's flags are named twice: where a step or factory writes the command line (steps/,
master/factories/) and where the stage declares them (workers/toolkit/). This test builds every
factory from a real farm.toml, renders each ``farm-worker`` step with a value for every property and
parses its command line, so a flag renamed on one side only fails here in seconds, not in the
pipeline tests.
"""

import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from buildbot.process.properties import Properties
from twisted.internet import defer

from gentoo_farm.config import load_config
from gentoo_farm.master.builders import FACTORIES
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.workers.toolkit.cli import STAGES, build_parser
from gentoo_farm.workers.toolkit.stages import disk
from tests.farmtest import init_farm, set_option


class Placeholder(str):
    """``/NAME``: reads as a path or a word, and as a mapping (``[KEY]`` is ``/NAME/KEY``; unpacked, it
    holds nothing)."""

    def __getitem__(self, key: Any) -> Any:
        return Placeholder(f"{self}/{key}") if isinstance(key, str) else super().__getitem__(key)

    def keys(self) -> tuple[str, ...]:
        return ()


class EveryProperty(Properties):
    """A build's properties as a :class:`Placeholder` each."""

    def hasProperty(self, name: str) -> bool:
        return True

    has_key = hasProperty

    def getProperty(self, name: str, default: object = None) -> object:
        return Placeholder(f"/{name}")

    def __getitem__(self, name: str) -> object:
        return self.getProperty(name)


def rendered(value: object, properties: Properties) -> object:
    results: list[object] = []
    deferred = defer.maybeDeferred(properties.render, value)
    deferred.addCallback(results.append)
    (result,) = results  # the factories' renderables render without waiting on anything
    return result


def worker_steps(farm_root: Path) -> Iterator[tuple[str, FarmWorkerStep]]:
    config = load_config(farm_root)
    properties = EveryProperty()
    for builder, make_factory in FACTORIES.items():
        for step_factory in make_factory(config).steps:
            step = step_factory.buildStep()
            if not isinstance(step, FarmWorkerStep):
                continue
            names = {name for cls in type(step).__mro__ for name in getattr(cls, "renderables", ())}
            for name in names:
                setattr(step, name, rendered(getattr(step, name), properties))
            yield builder, step


def parse_error(stage: str, arguments: list[str]) -> str | None:
    """What farm-worker's parser says of ``farm-worker STAGE ARGUMENTS``, or None if it takes it."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            build_parser().parse_args([stage, *arguments])
        except SystemExit:
            return errors.getvalue().strip() or "refused"
    return None


def command_problems(farm_root: Path) -> tuple[list[str], set[str]]:
    problems, stages = [], set()
    for builder, step in worker_steps(farm_root):
        arguments = [str(argument) for argument in step.stage_arguments() if argument is not None]
        stages.add(step.stage)
        error = parse_error(step.stage, arguments)
        if error is not None:
            problems.append(
                f"{builder}/{step.name}: farm-worker {step.stage} {' '.join(arguments)}\n  {error}"
            )
    return problems, stages


@pytest.fixture(scope="module")
def farm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_farm(tmp_path_factory.mktemp("commands") / "farm").root


def test_every_worker_command_of_every_builder_parses(farm_root: Path) -> None:
    problems, stages = command_problems(farm_root)
    assert problems == []
    # Every stage an image needs from source is run by some builder.
    assert {"fetch-release", "unpack-root", "emerge", "kernel", "overlay", "assemble", "disk"} <= stages
    assert stages <= set(STAGES)


def test_the_binary_kernel_package_builder_commands_parse(farm_root: Path) -> None:
    set_option(farm_root, "kernel", "package", '"linux-image-6.1.0-amd64_6.1.1_amd64.deb"')
    problems, stages = command_problems(farm_root)
    assert problems == []
    assert "kernel-package" in stages and "kernel" not in stages


class RenamingOutput:
    """A stage's parser as if the stage had renamed its ``--output`` flag to ``--image``."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_argument(self, *names: str, **options: Any) -> argparse.Action:
        return self.parser.add_argument(
            *("--image" if name == "--output" else name for name in names), **options
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def test_a_flag_renamed_on_one_side_only_is_caught(farm_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = disk.add_arguments
    monkeypatch.setattr(disk, "add_arguments", lambda parser: original(RenamingOutput(parser)))
    problems, _ = command_problems(farm_root)
    # Both image variants make a disk with the same step.
    assert [problem.split(":")[0] for problem in problems] == ["image/build-disk", "worker-image/build-disk"]
    for problem in problems:
        assert "farm-worker disk " in problem
        assert "the following arguments are required: --image" in problem
