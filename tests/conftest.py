import functools
import json
import shutil
import tempfile
import unittest
import warnings
from collections.abc import Iterator
from pathlib import Path

import buildbot.test  # noqa: F401  (imported first, on purpose: see below)
import pytest

from tests import cache
from tests.farmtest import Farm, farm_command, init_farm

DURATIONS = Path(__file__).with_name("durations.json")
"""Seconds per test id of a recorded run (``./run-tests --record-durations``): only orders the work."""
KERNEL_CCACHE_UNIT = dict.fromkeys(
    ("tests/test_kernel_build.py", "tests/test_pipeline.py", "tests/test_pipeline_s3.py"), "kernel-ccache"
)
"""Modules one xdist worker runs in turn, in collection order, while the shared kernel ccache
(tests/cache.py) is empty: they compile the default kernel with it, and test_kernel_build's cold compile,
first, leaves it warm for the others, instead of two cold compiles of the same kernel side by side on the
same cores. With the ccache filled (a machine's second run), each is a unit of its own."""
SHORT_BASETEMP = pytest.StashKey[Path]()
"""The temporary root this run made for itself (see pytest_configure), to remove when the run passes."""
QUICK_LIMIT_SECONDS = 5.0
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


@pytest.fixture(autouse=True)
def buildbot_test_case_directory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Buildbot's unittest-style test helpers make and remove ``basedir`` in the working directory: run each
    such test in its own, or two xdist workers race on the same directory."""
    if not isinstance(request.instance, unittest.TestCase):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help=f"write each test's seconds to {DURATIONS.name}, which orders the next runs' work longest first",
    )
    parser.addoption(
        "--quick",
        action="store_true",
        help=f"the inner loop: leave out the tests marked slow and those a recorded run ({DURATIONS.name}) "
        f"took more than {QUICK_LIMIT_SECONDS:g} s for",
    )


@functools.cache
def kernel_ccache_is_empty() -> bool:
    return not any(cache.directory(cache.KERNEL_CCACHE).iterdir())


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs in turn: a test's module, or the shared group its module belongs to."""
    module = nodeid.split("::", 1)[0]
    return KERNEL_CCACHE_UNIT.get(module, module) if kernel_ccache_is_empty() else module


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, absent when it is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadscope`` with :func:`work_unit` as the scope: whole modules (and shared groups) per worker.

    A module's tests share module-scoped fixtures (a running farm, a booted guest) that must not be built
    once per worker. (xdist's own ``--dist loadgroup`` marks cannot do this under pytest 9: xdist renames
    node ids through an attribute pytest no longer reads.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hand out the longest work first: units ordered by their recorded seconds (tests/durations.json).

    With ``--dist loadscope --no-loadscope-reorder`` the long units start at once and the short ones fill
    the gaps at the end; a test not recorded yet counts as a typical test of its tier. The serial order
    changes the same way; within a unit, tests keep their modules' order. With ``--quick``, the tests
    marked slow and those recorded at more than QUICK_LIMIT_SECONDS are left out.
    """
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}

    def seconds(item: pytest.Item) -> float:
        unrecorded = UNRECORDED_SLOW_SECONDS if item.get_closest_marker("slow") else UNRECORDED_SECONDS
        return recorded.get(item.nodeid, unrecorded)

    if config.getoption("--quick"):
        left_out = [
            item for item in items if item.get_closest_marker("slow") or seconds(item) > QUICK_LIMIT_SECONDS
        ]
        config.hook.pytest_deselected(items=left_out)
        kept = set(items) - set(left_out)
        items[:] = [item for item in items if item in kept]

    unit_seconds: dict[str, float] = {}
    for item in items:
        unit = work_unit(item.nodeid)
        unit_seconds[unit] = unit_seconds.get(unit, 0.0) + seconds(item)
    items.sort(key=lambda item: (-unit_seconds[work_unit(item.nodeid)], work_unit(item.nodeid)))


class DurationRecorder:
    """Each test's setup + call + teardown seconds, written at the end of the run (by xdist's controller)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        rounded = {nodeid: round(seconds, 1) for nodeid, seconds in sorted(self.seconds.items())}
        DURATIONS.write_text(json.dumps(rounded, indent=0) + "\n")


@pytest.hookimpl(tryfirst=True)  # before pytest's tmpdir plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    is_xdist_worker = hasattr(config, "workerinput")
    if config.getoption("--record-durations") and not is_xdist_worker:
        config.pluginmanager.register(DurationRecorder(), "duration-recorder")
    if config.option.basetemp is None and not is_xdist_worker:
        # GnuPG's agent puts its sockets in a farm's key directory, and a socket path holds at most 107
        # bytes: pytest's own root (/tmp/pytest-of-USER/pytest-N), xdist's popen-gwN and a test's
        # directory would pass that. A short root of this run's own; kept only when the run fails.
        config.option.basetemp = tempfile.mkdtemp(prefix="gf-")
        config.stash[SHORT_BASETEMP] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    basetemp = session.config.stash.get(SHORT_BASETEMP, None)
    if basetemp is not None and exitstatus == 0:
        shutil.rmtree(basetemp, ignore_errors=True)
