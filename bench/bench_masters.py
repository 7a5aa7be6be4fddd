"""Builds per hour, one master against two, on the same number of workers (issue 12).

Several masters are for availability, not speed: the same workers should build as much behind two masters
as behind one. Every part is real on 127.0.0.1, started with the tests' own helpers
(tests/test_two_masters.py): PostgreSQL, a crossbar router, S3 on moto as the store, one shared farm.toml
per side, each master started by `farm up` and stopped by `farm down`.

- one master: roles ui and builds, ``--workers`` local workers;
- two masters: A made by `farm init`, B by `farm init --join`, both with roles ui and builds, each with
  half the local workers (``[workers.local] count`` is farm.toml's, the same on every master: each runs
  that many workers of the same names, local-1..., on its own worker port).

Each side builds ``--builds`` real overlay builds (checkout, input key, tarball, publish to S3: the
smallest builder, no qemu, no kernel), each forced at a revision of its own of the overlay repository
(``--builds`` commits made before the masters start), all requested at once, alternating between the
masters on the two-master side: the masters' own queue decides what runs where. The time is Buildbot's
own, from the first request's submission to the last build's end (whole seconds: use enough builds that a
second is noise); builds per hour is ``--builds`` over it. It prints each side's figure, how many builds
each master ran and the ratio two / one (expected about 1). The machine's load (``uptime``) is printed at
the start and the end.

From the repository root, as root (local workers run builds in user namespaces); about 2 minutes on 2
cores with the defaults:

    .venv/bin/python bench/bench_masters.py [--builds N] [--workers N]
"""

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildbot.process.results import SUCCESS

from gentoo_farm.config import load_config
from gentoo_farm.workers.latent.local import reap_leftover
from tests.farmtest import Farm, set_option
from tests.services.crossbar import Crossbar, running_crossbar
from tests.services.s3 import S3Server, running_s3_server
from tests.test_postgresql import PostgreSQL, running_postgresql
from tests.test_two_masters import (
    BUILD_TIMEOUT,
    _join,
    _master_name,
    _master_toml,
    _wait_for_active_masters,
    running,
    shared_farm,
)

BUILDER = "overlay"
POLL_SECONDS = 0.5
LOG_TAIL = 2000
STOP_TIMEOUT = 60
"""How long a master `farm down` asked to stop may take. Ctrl-C reaches the crossbar router too: a master
that loses its router mid-build starts shutting down and was seen still there minutes later."""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class Services:
    postgresql: PostgreSQL
    crossbar: Crossbar
    s3_server: S3Server


@dataclass
class Side:
    label: str
    builds: list[dict[str, Any]]
    seconds: float
    ran_on: Counter[str]

    @property
    def per_hour(self) -> float:
        return len(self.builds) * 3600 / self.seconds


def _requests(farm: Farm, builder_id: int) -> list[dict[str, Any]]:
    return farm.api(f"buildrequests?builderid={builder_id}")["buildrequests"]


def why_failed(farm: Farm, build: dict[str, Any]) -> str:
    """The build's state, its first failed step's and the end of that step's logs."""
    failed = next((step for step in farm.steps(build) if step["results"] not in (None, SUCCESS)), None)
    if failed is None:
        return f"#{build['number']}: {build['state_string']}"
    logs = farm.api(f"steps/{failed['stepid']}/logs")["logs"]
    text = "".join(
        chunk["content"] for log in logs for chunk in farm.api(f"logs/{log['logid']}/contents")["logchunks"]
    )
    where = f"{failed['name']}: {failed['state_string']}"
    return f"#{build['number']}: {build['state_string']}; {where}\n{text[-LOG_TAIL:]}"


def overlay_revisions(shared: Farm, count: int) -> list[str]:
    """``count`` commits on the farm's overlay repository, each a tree of its own, the last its head.

    Forced at one revision each, the builds neither collapse (Buildbot merges a waiting request into a
    newer one of the same sources) nor share an input key: two builds of one input published in the same
    second would name the same set, and the second upload is refused. Fetched into the bare repository,
    not pushed, so that its post-receive hook knocks no master; made before the masters start, so that
    the poller's first look finds the head already there and starts nothing."""
    repository = shared.root / "overlay.git"
    clone = shared.root / "overlay-bench"
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "clone", "--quiet", str(repository), str(clone)], check=True)
    revisions = []
    for number in range(1, count + 1):
        (clone / "root" / "etc" / "bench-build").write_text(f"{number}\n")
        subprocess.run([*git, "add", "--all"], cwd=clone, check=True)
        subprocess.run([*git, "commit", "--quiet", "-m", f"bench build {number}"], cwd=clone, check=True)
        head = subprocess.run(
            [*git, "rev-parse", "HEAD"], cwd=clone, check=True, capture_output=True, text=True
        )
        revisions.append(head.stdout.strip())
    branch = load_config(shared.root).overlay.branch
    subprocess.run(
        [*git, "-C", str(repository), "fetch", "--quiet", str(clone), f"{branch}:{branch}"], check=True
    )
    return revisions


def build_all(masters: list[Farm], revisions: list[str]) -> list[dict[str, Any]]:
    """One overlay build forced at each of ``revisions``, all at once, through ``masters`` in turn; the
    builds that ran them (the database is shared: the first master's REST API sees every master's)."""
    watcher = masters[0]
    builder_id = watcher.builder_id(BUILDER)
    for farm in masters:
        farm.login()
    for number, revision in enumerate(revisions):
        status, answer = masters[number % len(masters)].force(
            f"force-{BUILDER}", builderNames=[BUILDER], reason=f"bench {number + 1}", revision=revision
        )
        assert status == 200, answer
    timeout = BUILD_TIMEOUT * len(revisions)

    def all_complete() -> list[dict[str, Any]] | None:
        requests = _requests(watcher, builder_id)
        return requests if all(request["complete"] for request in requests) else None

    requests = watcher.poll(all_complete, timeout, POLL_SECONDS, f"{len(revisions)} {BUILDER} builds")
    assert len(requests) == len(revisions), f"{len(requests)} {BUILDER} requests, not {len(revisions)}"
    failed = [request["buildrequestid"] for request in requests if request["results"] != SUCCESS]
    if failed:
        raise AssertionError(
            f"{BUILDER} builds that failed:\n"
            + "\n".join(
                why_failed(watcher, build)
                for build in watcher.builds(BUILDER)
                if build["buildrequestid"] in failed
            )
        )
    builds = [build for build in watcher.builds(BUILDER) if build["complete"] and build["results"] == SUCCESS]
    built = sorted(watcher.properties(build)["got_revision"] for build in builds)
    assert built == sorted(revisions), f"built {built}, not {revisions}"
    return builds


def measure(label: str, masters: list[Farm], revisions: list[str]) -> Side:
    watcher = masters[0]
    names = {_master_name(farm) for farm in masters}
    ids = _wait_for_active_masters(watcher, names)
    builds = build_all(masters, revisions)
    submitted = min(request["submitted_at"] for request in _requests(watcher, watcher.builder_id(BUILDER)))
    seconds = max(build["complete_at"] for build in builds) - submitted
    # HOST:BASEDIR, the farm directory's master/: the farm directory's name says which master
    by_id = {masterid: Path(name.split(":", 1)[1]).parent.name for name, masterid in ids.items()}
    return Side(label, builds, seconds, Counter(by_id[build["masterid"]] for build in builds))


def _is_master_of(pid: int, farm: Farm) -> bool:
    """Whether ``pid`` is alive and runs in ``farm``'s master directory (not another process by now)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(farm.root / "master")
    except OSError:
        return False


@contextlib.contextmanager
def up(*farms: Farm) -> Iterator[None]:
    """The masters of ``farms`` running (`farm up`, `farm down`), and after that none of their processes
    left, even when `farm down` gave up waiting: the master is killed after :data:`STOP_TIMEOUT`, then its
    local workers, before the services and the directories they use go."""
    try:
        with running(*farms):
            yield
    finally:
        for farm in farms:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int((farm.root / "master" / "twistd.pid").read_text())
                deadline = time.monotonic() + STOP_TIMEOUT
                while _is_master_of(pid, farm) and time.monotonic() < deadline:
                    time.sleep(1)
                if _is_master_of(pid, farm):
                    os.kill(pid, signal.SIGKILL)
            for instance in (farm.root / "workers").glob("*"):
                reap_leftover(instance)


def one_master(scratch: Path, services: Services, count: int, workers: int) -> Side:
    shared, _, _ = shared_farm(scratch / "one", services.postgresql, services.crossbar, services.s3_server)
    set_option(shared.root, "workers.local", "count", str(workers))
    revisions = overlay_revisions(shared, count)
    master = _master_toml(shared, ["ui", "builds"])
    with up(master):
        return measure("one master", [master], revisions)


def two_masters(scratch: Path, services: Services, count: int, workers: int) -> Side:
    shared, _, _ = shared_farm(scratch / "a", services.postgresql, services.crossbar, services.s3_server)
    # farm.toml is every master's: each runs this many local workers, half the total.
    set_option(shared.root, "workers.local", "count", str(workers // 2))
    revisions = overlay_revisions(shared, count)
    a = _master_toml(shared, ["ui", "builds"])
    b = _join(shared, scratch / "b", "--role", "ui", "--role", "builds")
    with up(a, b):
        return measure("two masters", [a, b], revisions)


def report(side: Side, workers: int) -> None:
    durations = [build["complete_at"] - build["started_at"] for build in side.builds]
    print(f"{side.label}: {len(side.builds)} builds on {workers} workers in {side.seconds:.0f} s")
    print(f"  {side.per_hour:7.1f} builds/hour; each build {min(durations):.0f}-{max(durations):.0f} s")
    ran_on = ", ".join(f"master {name} {number}" for name, number in sorted(side.ran_on.items()))
    print(f"  builds each master ran: {ran_on}")


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the bench as Ctrl-C does: every context below stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builds", type=int, default=30, help="forced overlay builds on each side")
    parser.add_argument(
        "--workers", type=int, default=2, help="local workers in all (even: two masters get half each)"
    )
    args = parser.parse_args()
    if args.workers < 2 or args.workers % 2:
        parser.error("--workers must be even and at least 2: the two masters split them")
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    # moto's server logs every request it answers
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    print(f"load at start: {uptime()}")
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-masters-")))
        # Searchable by the builds' ids (mkdtemp's is 0700), as a farm's directory on a host is: a local
        # build reaches only its own farm's directory through one that is not, and master B's builds
        # clone the recipe repositories in master A's.
        scratch.chmod(0o711)
        services = Services(
            stack.enter_context(running_postgresql()),
            stack.enter_context(running_crossbar()),
            stack.enter_context(running_s3_server()),
        )
        one = one_master(scratch, services, args.builds, args.workers)
        report(one, args.workers)
        two = two_masters(scratch, services, args.builds, args.workers)
        report(two, args.workers)
    print(f"two masters / one master, builds per hour: {two.per_hour / one.per_hour:.2f} (expected about 1)")
    print(f"load at end: {uptime()}")


if __name__ == "__main__":
    main()
