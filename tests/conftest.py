import warnings
from collections.abc import Iterator
from pathlib import Path

import buildbot.test  # noqa: F401  (imported first, on purpose: see below)
import pytest

from tests.farmtest import Farm, farm_command, init_farm

# Importing buildbot.test turns every warning into an error, for the whole process. Twisted's and
# alembic's deprecations are not this project's to fix: once that import has happened (here, before
# any test module), ignore deprecations.
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def running_farm(tmp_path: Path) -> Iterator[Farm]:
    """A farm made by `farm init`, started by `farm up`, stopped (with its workers) at the end."""
    farm = init_farm(tmp_path / "farm")
    farm_command("--farm", str(farm.root), "up")
    try:
        yield farm
    finally:
        farm_command("--farm", str(farm.root), "down", check=False)
