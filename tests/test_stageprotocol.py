"""A stage signs its result lines with the step's nonce, which none of the tools it runs can see."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gentoo_farm.stageprotocol import RESULT_MARKER, RESULT_NONCE_ENV
from gentoo_farm.workers import toolkit

FARM_WORKER = str(Path(sys.executable).parent / "farm-worker")


def test_result_lines_carry_the_nonce_the_stage_was_given() -> None:
    given = subprocess.run(
        [FARM_WORKER, "input-key", "--kind", "overlay", "--value", "a=b"],
        env={"PATH": "/usr/bin:/bin", RESULT_NONCE_ENV: "0123abcd"},
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [line for line in given.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert line.startswith(f"{RESULT_MARKER}0123abcd {{")
    assert "input_key" in json.loads(line.removeprefix(f"{RESULT_MARKER}0123abcd "))


def test_no_tool_a_stage_runs_inherits_the_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RESULT_NONCE_ENV, "0123abcd")
    monkeypatch.setattr(toolkit, "_result_nonce", "")
    toolkit.take_result_nonce()
    assert RESULT_NONCE_ENV not in subprocess.run(["env"], capture_output=True, text=True).stdout
    assert toolkit._result_nonce == "0123abcd"
