"""Two masters building together on Buildbot's own multi-master engine, every part real on 127.0.0.1:
PostgreSQL (Debian's), a crossbar router (PyPI's, in its own venv), S3 on moto as the store, and two farm
directories with one farm.toml, each master started by `farm up`.

Master A has both roles (its REST API is how the test sees what it did); master B is a UI master, without
builders or workers, so a build forced on B can only run if the request reaches A through the database
and the message router.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.farmtest import Farm, farm_command, free_port, init_farm, set_option
from tests.services.crossbar import Crossbar, crossbar  # noqa: F401  (module fixture)
from tests.services.s3 import S3Server, s3_server  # noqa: F401  (session fixture)
from tests.test_postgresql import PostgreSQL, postgresql  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SUCCESS = 0
MASTERS_TIMEOUT = 180  # two masters starting side by side on a loaded machine
BUILD_TIMEOUT = 300
_FARMS = itertools.count(1)
KNOCK_TIMEOUT = 300  # far below the poll interval (an hour): only a knock makes a change this soon


def _master_toml(farm: Farm, roles: list[str]) -> Farm:
    """This master's own addresses and roles (master.toml beside the shared farm.toml)."""
    web_port = free_port()
    (farm.root / "master.toml").write_text(
        "[master]\n"
        f"roles = {json.dumps(roles)}\n"
        f'web_address = "127.0.0.1:{web_port}"\n'
        f'worker_address = "127.0.0.1:{free_port()}"\n'
    )
    return Farm(root=farm.root, admin_password=farm.admin_password, url=f"http://127.0.0.1:{web_port}/")


def _join(first: Farm, root: Path, *options: str) -> Farm:
    """Another master of ``first``'s farm, made by `farm init --join` with its own addresses."""
    web_port = free_port()
    farm_command(
        "init", "--join", str(first.root), *options,
        "--web-address", f"127.0.0.1:{web_port}", "--worker-address", f"127.0.0.1:{free_port()}",
        str(root),
    )  # fmt: skip
    return Farm(root=root, admin_password=first.admin_password, url=f"http://127.0.0.1:{web_port}/")


def shared_farm(
    root: Path,
    postgresql: PostgreSQL,  # noqa: F811
    crossbar: Crossbar,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
) -> tuple[Farm, str, str]:
    """A farm made by `farm init` in ``root`` whose farm.toml every master shares: multiMaster on a new
    database of the module's PostgreSQL, the crossbar router, a new bucket on moto as the store; with
    the database's and the bucket's names."""
    shared = init_farm(root)
    database = postgresql.create_database(f"two_masters_{next(_FARMS)}")  # one module-wide server
    bucket = s3_server.create_bucket()
    set_option(shared.root, "master", "multi_master", "true")
    set_option(shared.root, "master", "db_url", json.dumps(postgresql.url(database)))
    for key, value in {
        "type": "s3",
        "bucket": bucket,
        "endpoint_url": s3_server.endpoint_url,
        "region": "us-east-1",
        "public_url": f"{s3_server.endpoint_url}/{bucket}",
    }.items():
        set_option(shared.root, "store", key, json.dumps(value))
    with (shared.root / "farm.toml").open("a") as farm_toml:
        farm_toml.write(
            f'\n[master.mq]\ntype = "wamp"\nrouter_url = "{crossbar.router_url}"\n'
            f'realm = "{crossbar.realm}"\n'
        )
    # The recipe repositories by a path every master reaches (here: the same host), as another host would
    # need a URL.
    for section, name in (("kernel", "kernel-config.git"), ("overlay", "overlay.git")):
        set_option(shared.root, section, "repository", json.dumps(str(shared.root / name)))
    return shared, database, bucket


@contextlib.contextmanager
def running(*farms: Farm) -> Iterator[None]:
    """The masters of ``farms`` started by `farm up` in that order, stopped by `farm down` in reverse."""
    started: list[Farm] = []
    try:
        for farm in farms:
            farm_command("--farm", str(farm.root), "up")
            started.append(farm)
        yield
    finally:
        for farm in reversed(started):
            farm_command("--farm", str(farm.root), "down", check=False)


@pytest.fixture
def two_masters(
    tmp_path: Path,
    postgresql: PostgreSQL,  # noqa: F811
    crossbar: Crossbar,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
) -> Iterator[tuple[Farm, Farm, str]]:
    """Masters A (ui and builds) and B (ui) of one farm, both started by `farm up`, stopped at the end."""
    shared, _, bucket = shared_farm(tmp_path / "a", postgresql, crossbar, s3_server)
    a = _master_toml(shared, ["ui", "builds"])
    b = _join(shared, tmp_path / "b", "--role", "ui")
    with running(a, b):
        yield a, b, bucket


def _active_masters(farm: Farm) -> dict[str, int]:
    return {
        master["name"]: master["masterid"] for master in farm.api("masters")["masters"] if master["active"]
    }


def _master_name(farm: Farm) -> str:
    """The name Buildbot lists a master under: HOST:BASEDIR (both masters run on this host)."""
    return f"{os.uname()[1]}:{farm.root / 'master'}"


def _wait_for_active_masters(farm: Farm, names: set[str]) -> dict[str, int]:
    deadline = time.monotonic() + MASTERS_TIMEOUT
    while True:
        active = _active_masters(farm)
        if set(active) == names:
            return active
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{farm.url} lists {active} as active, not {names}, after {MASTERS_TIMEOUT} s"
            )
        time.sleep(1)


def test_a_build_forced_on_the_ui_master_runs_on_the_builds_masters_worker(
    two_masters: tuple[Farm, Farm, str],
    s3_server: S3Server,  # noqa: F811
) -> None:
    a, b, bucket = two_masters
    names = {_master_name(a), _master_name(b)}
    master_ids = _wait_for_active_masters(a, names)
    assert _wait_for_active_masters(b, names) == master_ids

    # B has the UI but no builders' workers: only A can run what B's REST API is asked to force.
    b.login()
    status, answer = b.force("force-overlay", builderNames=["overlay"], reason="forced on master B")
    assert status == 200, answer

    on_b = b.wait_for_build("overlay", timeout=BUILD_TIMEOUT)
    on_a = a.wait_for_build("overlay", timeout=BUILD_TIMEOUT)
    assert on_b["results"] == SUCCESS, on_b["state_string"]
    assert (on_a["buildid"], on_a["results"], on_a["complete"]) == (on_b["buildid"], SUCCESS, True)
    assert on_a["masterid"] == master_ids[_master_name(a)]
    properties = b.properties(on_b)
    assert properties["workername"] == "local-1"
    assert properties["reason"] == "forced on master B"
    # and it published to the shared store: the overlay's latest set is this build's
    latest = boto3.client("s3", endpoint_url=s3_server.endpoint_url).get_object(
        Bucket=bucket, Key="overlay/latest.json"
    )
    assert json.loads(latest["Body"].read())["input_key"] == properties["input_key"]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its content, but GnuPG's agent sockets."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith("S.")
    }


def test_farm_init_join_copies_the_farms_shared_parts_and_makes_its_own_master(
    tmp_path: Path,
    postgresql: PostgreSQL,  # noqa: F811
) -> None:
    first = init_farm(tmp_path / "a")
    set_option(first.root, "master", "multi_master", "true")
    set_option(first.root, "master", "db_url", json.dumps(postgresql.url(postgresql.create_database("join"))))
    set_option(first.root, "store", "type", '"s3"')
    set_option(first.root, "store", "bucket", '"farm"')
    with (first.root / "farm.toml").open("a") as farm_toml:
        farm_toml.write('\n[master.mq]\ntype = "wamp"\nrouter_url = "ws://127.0.0.1:1/ws"\n')
    (first.root / "keys" / "gentoo-release.asc").write_text("Gentoo's keys\n")
    (first.root / "master.toml").write_text('[master]\nroles = ["builds"]\n')
    second = tmp_path / "b"

    output = farm_command(
        "init", "--join", str(first.root), "--role", "ui", "--web-address", "127.0.0.1:8020", str(second)
    ).stdout

    assert (second / "farm.toml").read_bytes() == (first.root / "farm.toml").read_bytes()
    assert (second / "farm-signing-key.asc").read_bytes() == (
        first.root / "farm-signing-key.asc"
    ).read_bytes()
    for shared in ("secrets", "keys"):
        assert _tree(second / shared) == _tree(first.root / shared), shared
    assert (second / "secrets").stat().st_mode & 0o777 == 0o700
    # its own master directory, named in its buildbot.tac, on the shared database
    assert f"basedir = '{second / 'master'}'" in (second / "master" / "buildbot.tac").read_text()
    assert (second / "master" / "master.cfg").read_text() == (
        first.root / "master" / "master.cfg"
    ).read_text()
    assert postgresql.url("join").split("@")[-1] in (second / "master" / "schema-stamp").read_text()
    assert not (second / "master" / "state.sqlite").exists()
    # this host's master.toml: the options given; the rest farm.toml's, as comments to edit
    host = (second / "master.toml").read_text()
    assert 'roles = ["ui"]\nweb_address = "127.0.0.1:8020"\n' in host
    assert '# worker_address = "' in host and '# public_url = ""' in host
    # nothing of the first host's own: its master.toml, recipe repositories, workers and caches
    assert sorted(path.name for path in second.iterdir()) == [
        "farm-signing-key.asc", "farm.toml", "keys", "master", "master.toml", "secrets",
    ]  # fmt: skip
    assert f"copied from {first.root}: farm.toml, farm-signing-key.asc, secrets/, keys/" in output
    assert f"edit {second / 'master.toml'}: worker_address, public_url" in output
    assert f"kernel-config: {second / 'kernel-config.git'} is not there on this host" in output
    assert f"farm --farm {second} up" in output


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _kernel_requests(farm: Farm) -> list[dict[str, Any]]:
    """Every kernel build request of the farm: the database is shared, so one master's REST API has all."""
    return farm.api(f"buildrequests?builderid={farm.builder_id('kernel')}")["buildrequests"]


def _wait_for_kernel_requests(farm: Farm, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + KNOCK_TIMEOUT
    while len(requests := _kernel_requests(farm)) < count:
        assert time.monotonic() < deadline, f"{len(requests)} kernel build requests, not {count}"
        time.sleep(0.5)
    time.sleep(5)  # a second poll's duplicate would come now
    return _kernel_requests(farm)


def test_a_push_knocking_either_master_starts_exactly_one_kernel_build(
    two_masters: tuple[Farm, Farm, str], tmp_path: Path
) -> None:
    a, b, _ = two_masters
    names = {_master_name(a), _master_name(b)}
    _wait_for_active_masters(a, names)
    # One master polls kernel-config (Buildbot runs each poller on one master); its first poll only
    # records the head, so a push before it would be no change.
    deadline = time.monotonic() + MASTERS_TIMEOUT
    while not any(
        "gitpoller: processing changes" in (farm.root / "master" / "twistd.log").read_text()
        for farm in (a, b)
    ):
        assert time.monotonic() < deadline, "the kernel-config poller never polled"
        time.sleep(0.5)
    (source,) = [s for s in a.api("changesources")["changesources"] if s["name"] == "kernel-config"]
    polling = source["master"]["name"]
    assert polling in names

    repository = a.root / "kernel-config.git"
    hook = repository / "hooks" / "post-receive"
    clone = tmp_path / "kernel-config"
    _git("clone", "--quiet", str(repository), str(clone), cwd=tmp_path)
    _git("config", "user.email", "dev@example.org", cwd=clone)
    _git("config", "user.name", "A Developer", cwd=clone)
    # B's `farm up` came last and installed the hook of the repository (A's path, B's too): it knocks B,
    # then, in a second push, A.
    for number, knocked in enumerate((b, a), start=1):
        hook.write_text(hook.read_text().replace(a.url, knocked.url).replace(b.url, knocked.url))
        with (clone / "config").open("a") as config:
            config.write(f'CONFIG_LOCALVERSION="-push{number}"\n')
        _git("commit", "--quiet", "-am", f"push {number}", cwd=clone)
        pushed = subprocess.run(["git", "push"], cwd=clone, capture_output=True, text=True, check=True)
        assert "the master took the notification: its kernel-config poller" in pushed.stderr
        assert f"follow it at {knocked.url}#/builders" in pushed.stderr, pushed.stderr
        revision = _git("rev-parse", "HEAD", cwd=clone)

        requests = _wait_for_kernel_requests(a, number)
        assert len(requests) == number, (polling, requests)
        assert [change["revision"] for change in a.api("changes")["changes"]].count(revision) == 1
        assert len(b.api(f"buildrequests?builderid={b.builder_id('kernel')}")["buildrequests"]) == number
