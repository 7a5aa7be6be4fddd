"""`farm` imports what the chosen command needs and nothing else: a command that reads the store starts
in a tenth of a second, not after `farm check`'s openstacksdk and Buildbot imports."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.farmtest import init_farm

HEAVY = ("openstack", "buildbot", "twisted", "sqlalchemy", "boto3")
# Runs `farm` in a fresh interpreter and prints which of HEAVY it imported.
PROBE = """
import sys
from gentoo_farm.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))))
"""


def imported_by(*argv: str) -> set[str]:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return set(probe.stdout.splitlines()[-1].split())


@pytest.fixture(scope="module")
def farm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_farm(tmp_path_factory.mktemp("cli") / "farm").root


@pytest.mark.parametrize(
    "command", [["images"], ["status"], ["build", "--help"], ["--help"], ["check", "--config-only"]]
)
def test_a_command_imports_only_what_it_needs(farm_root: Path, command: list[str]) -> None:
    assert imported_by("--farm", str(farm_root), *command) == set()


def test_the_command_that_talks_to_clouds_still_gets_its_libraries(farm_root: Path) -> None:
    assert {"openstack", "buildbot"} <= imported_by("--farm", str(farm_root), "check")


def test_help_lists_every_command_with_its_summary() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "gentoo_farm.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "images" in listing and "List the images the farm has published" in listing
    assert "Validate farm.toml, then check what it names" in listing


def test_a_command_with_subcommands_of_its_own_parses_them(farm_root: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "gentoo_farm.cli", "--farm", str(farm_root), "hook", "print", "kernel-config"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("#!")
