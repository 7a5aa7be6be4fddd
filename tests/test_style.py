"""The tree stays ruff-clean (lint and format) and type-checked (mypy), with the rules pinned in
pyproject.toml."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RUFF = str(Path(sys.executable).parent / "ruff")

# How setuptools installs the tree ([tool.setuptools.package-dir]): the user's master/, steps/ and
# workers/ become gentoo_farm.master, gentoo_farm.steps and gentoo_farm.workers.
MAPPED = ("master", "steps", "workers")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command: list[str]) -> None:
    result = subprocess.run([RUFF, *command, "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _installed_layout(where: Path) -> Path:
    """A tree of symlinks laid out as the package is installed, so that mypy resolves gentoo_farm.master
    and friends (the editable install's import hook is invisible to it)."""
    package = where / "gentoo_farm"
    package.mkdir()
    for entry in (ROOT / "gentoo_farm").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in MAPPED:
        (package / name).symlink_to(ROOT / name)
    return package


def test_mypy(tmp_path: Path) -> None:
    """The production code (gentoo_farm, master, steps, workers; not tests/) type-checks."""
    _installed_layout(tmp_path)
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "cache"),
            "-p", "gentoo_farm",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # Name the files where they are in the checkout: gentoo_farm/steps/base.py is steps/base.py.
    mapped = "|".join(MAPPED)
    output = re.sub(rf"^gentoo_farm/({mapped})/", r"\1/", result.stdout + result.stderr, flags=re.MULTILINE)
    assert result.returncode == 0, output
