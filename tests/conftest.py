import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import buildbot.test  # noqa: F401  (imported first, on purpose: see below)
import pytest

from tests.farmtest import Farm, farm_command, init_farm

DURATIONS = Path(__file__).with_name("durations.json")
"""Seconds per test id of a recorded run (``./run-tests --record-durations``): only orders the work."""
UNRECORDED_SECONDS = 2.0
UNRECORDED_SLOW_SECONDS = 60.0

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help=f"write each test's seconds to {DURATIONS.name}, which orders the next runs' work longest first",
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its own hook appends them to node ids)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep each module's tests on one xdist worker, and hand out the longest work first.

    A module's tests share module-scoped fixtures (a running farm, a booted guest) that must not be built
    once per worker: every test without an explicit ``xdist_group`` gets its module's. Groups are ordered
    by their recorded seconds (tests/durations.json), longest first, so that with ``--dist loadgroup
    --no-loadscope-reorder`` the long groups start at once and the short ones fill the gaps at the end; a
    test not recorded yet counts as a typical test of its tier. The serial order changes the same way.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}

    def group(item: pytest.Item) -> str:
        return str(item.get_closest_marker("xdist_group").args[0])

    def seconds(item: pytest.Item) -> float:
        unrecorded = UNRECORDED_SLOW_SECONDS if item.get_closest_marker("slow") else UNRECORDED_SECONDS
        return recorded.get(item.nodeid, unrecorded)

    group_seconds: dict[str, float] = {}
    for item in items:
        group_seconds[group(item)] = group_seconds.get(group(item), 0.0) + seconds(item)
    # sorted() is stable: within a group, tests keep the order their module declares.
    items.sort(key=lambda item: (-group_seconds[group(item)], group(item)))


class DurationRecorder:
    """Each test's setup + call + teardown seconds, written at the end of the run (by xdist's controller)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Under --dist loadgroup a node id carries its group after an "@": record the test's own id.
        nodeid = report.nodeid.rsplit("@", 1)[0] if "@" in report.nodeid.rsplit("]", 1)[-1] else report.nodeid
        self.seconds[nodeid] = self.seconds.get(nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        rounded = {nodeid: round(seconds, 1) for nodeid, seconds in sorted(self.seconds.items())}
        DURATIONS.write_text(json.dumps(rounded, indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    is_xdist_worker = hasattr(config, "workerinput")
    if config.getoption("--record-durations") and not is_xdist_worker:
        config.pluginmanager.register(DurationRecorder(), "duration-recorder")
