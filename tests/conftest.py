from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.farmtest import Farm, farm_command, init_farm


@pytest.fixture
def running_farm(tmp_path: Path) -> Iterator[Farm]:
    """A farm made by `farm init`, started by `farm up`, stopped (with its workers) at the end."""
    farm = init_farm(tmp_path / "farm")
    farm_command("--farm", str(farm.root), "up")
    try:
        yield farm
    finally:
        farm_command("--farm", str(farm.root), "down", check=False)
