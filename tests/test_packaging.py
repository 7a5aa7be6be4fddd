"""The wheel carries every package and data file, and a non-editable install runs `farm` and `farm-worker`.

The editable install of the checkout resolves master/, steps/ and workers/ through setuptools'
package-dir mapping at import time; only a built wheel shows that the mapping also packages them.
"""

import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gentoo_farm.cli import COMMANDS
from gentoo_farm.workers.toolkit.cli import STAGES
from tests.test_layout import ROOT, source_modules

# What a wheel build may not see: the checkout's own environment, caches and earlier build output.
NOT_SOURCE = {".git", ".venv", "build", "dist", "demo", "test-artifacts", ".pytest_cache", ".ruff_cache"}

SUBPACKAGES = (
    "gentoo_farm",
    "gentoo_farm.commands",
    "gentoo_farm.store",
    "gentoo_farm.master",
    "gentoo_farm.master.factories",
    "gentoo_farm.steps",
    "gentoo_farm.workers",
    "gentoo_farm.workers.toolkit",
)
DEFAULTS = ROOT / "gentoo_farm" / "defaults"


def _ignore_non_source(directory: str, names: list[str]) -> set[str]:
    at_root = Path(directory) == ROOT
    return {
        name
        for name in names
        if name == "__pycache__" or name.endswith(".egg-info") or (at_root and name in NOT_SOURCE)
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and egg-info into the tree it builds, and a build/
    # left by an earlier run can carry modules the checkout no longer has.
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    shutil.copytree(ROOT, source, ignore=_ignore_non_source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(scratch / "dist"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (scratch / "dist").glob("gentoo_farm-*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_defaults(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = source_modules()

    for package in SUBPACKAGES:
        assert package in modules, f"{package} is not in the checkout"
    module_files = {
        module.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        for module, path in modules.items()
    }
    assert module_files - names == set()

    defaults = {path.relative_to(ROOT).as_posix() for path in DEFAULTS.rglob("*") if path.is_file()}
    assert {
        "gentoo_farm/defaults/kernel-config/config",
        "gentoo_farm/defaults/overlay/overlay.toml",
    } <= defaults
    assert defaults - names == set()
    distribution, version = wheel.name.split("-")[:2]
    assert {name.split("/")[0] for name in names} == {"gentoo_farm", f"{distribution}-{version}.dist-info"}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (not editable); dependencies come from this test's venv."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (site_packages,) = (venv / "lib").glob("python3.*/site-packages")
    # A plain path line: the .pth files in there (this checkout's editable finder) are not processed,
    # so gentoo_farm is the wheel's copy and only the dependencies come from this venv.
    (site_packages / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    return venv


def _run(installed: Path, *command: str, cwd: Path) -> str:
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(installed / "bin" / command[0]), *command[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_installed_wheel_imports_its_own_copy(installed: Path, tmp_path: Path) -> None:
    printed = _run(
        installed,
        "python",
        "-c",
        f"import importlib\nfor name in {SUBPACKAGES!r}: print(importlib.import_module(name).__file__)",
        cwd=tmp_path,
    )
    files = [Path(line) for line in printed.splitlines()]
    assert len(files) == len(SUBPACKAGES)
    assert all(file.is_relative_to(installed) for file in files), files


def _lists(help_text: str, subcommand: str) -> bool:
    """Whether argparse's help shows ``subcommand`` as an entry of its own (an indented line)."""
    return re.search(rf"^ +{re.escape(subcommand)}( |$)", help_text, re.MULTILINE) is not None


def test_farm_and_farm_worker_run_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    farm_help = _run(installed, "farm", "--help", cwd=tmp_path)
    worker_help = _run(installed, "farm-worker", "--help", cwd=tmp_path)

    assert farm_help.startswith("usage: farm ")
    assert [command for command in COMMANDS if not _lists(farm_help, command)] == []
    assert worker_help.startswith("usage: farm-worker ")
    assert [stage for stage in STAGES if not _lists(worker_help, stage)] == []
