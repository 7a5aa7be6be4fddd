"""Master A of two dies (SIGKILL) while a build of its own is under way, every part real on 127.0.0.1 as in
tests/test_two_masters.py: PostgreSQL, crossbar, S3 on moto, both masters started by `farm up`, both with
the builds role and one OpenStack worker on the Compute stand-in (its "VMs" are local processes).

What an operator sees through master B's REST API is asserted: Buildbot's rules for a dead master (marked
inactive once it has been silent for EXPIRE_MINUTES, its unfinished builds ended as RETRY, their requests
left claimed by it), B building on, and B's orphan reaper deleting A's server but neither B's own nor an
untagged one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
from buildbot.data.masters import EXPIRE_MINUTES
from buildbot.process.results import RETRY, SUCCESS

from gentoo_farm.config import load_config
from gentoo_farm.workers.latent.openstack import FARM_ID_KEY, INSTANCE_KEY, MASTER_KEY, master_tag
from tests.farmtest import Farm, farm_command, set_option
from tests.services.compute import ComputeStandIn, StandInServer
from tests.services.crossbar import Crossbar, crossbar  # noqa: F401  (module fixture)
from tests.services.glance import Glance, glance  # noqa: F401  (session fixture)
from tests.services.keystone import Keystone, keystone  # noqa: F401  (session fixture)
from tests.services.s3 import S3Server, s3_server  # noqa: F401  (session fixture)
from tests.test_openstack_worker import CLOUD, _prepare_vm, _upload_image
from tests.test_postgresql import PostgreSQL, postgresql  # noqa: F401  (module fixture)
from tests.test_two_masters import (
    BUILD_TIMEOUT,
    _active_masters,
    _join,
    _master_name,
    _master_toml,
    _wait_for_active_masters,
    running,
    shared_farm,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# One OpenStack worker per master (os-1 on each), for every builder. Its server outlives a build by
# build_wait_timeout: B's server is live, its token held, when B's reaper sweeps after A's death. The
# stand-in's "image" carries the worker already (_prepare_vm), so `install` names what it has.
POOL = f"""
[[workers.openstack]]
name = "os"
cloud = "{CLOUD}"
flavor = "m1.small"
image = "farm-latest"
network = ""
install = "gentoo-farm==0.1.0"
build_wait_timeout = 600
"""
BOOT_TIMEOUT = 120
# Buildbot's heartbeat (every 60 s) is when a master marks the silent ones inactive.
EXPIRY_TIMEOUT = 150
# The reaper sweeps when Buildbot announces a master stopped (besides its start and every 300 s).
REAP_TIMEOUT = 120


@dataclass
class Failover:
    a: Farm
    b: Farm
    compute: ComputeStandIn
    cloud: openstack.connection.Connection
    farm_id: str
    image_id: str
    postgresql: PostgreSQL
    database: str


@pytest.fixture
def failover(
    tmp_path: Path,
    keystone: Keystone,  # noqa: F811
    glance: Glance,  # noqa: F811
    postgresql: PostgreSQL,  # noqa: F811
    crossbar: Crossbar,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
) -> Iterator[Failover]:
    """Masters A and B (both ui and builds) of one farm, not started, whose only workers are the OpenStack
    pool :data:`POOL` on the Compute stand-in, with an image of the farm in Glance."""
    shared, database, _ = shared_farm(tmp_path / "a", postgresql, crossbar, s3_server)
    set_option(shared.root, "workers.local", "count", "0")
    with (shared.root / "farm.toml").open("a") as farm_toml:
        farm_toml.write(POOL)
    farm_id = load_config(shared.root).farm.id
    compute = ComputeStandIn(keystone, tmp_path / "compute", glance_url=glance.url, prepare_vm=_prepare_vm)
    compute.start()
    keystone.register_service("compute", "nova", compute.url)
    clouds = keystone.write_clouds_yaml(tmp_path / "clouds.yaml", cloud=CLOUD, username="demo")
    with pytest.MonkeyPatch.context() as environment, contextlib.ExitStack() as cleanup:
        cleanup.callback(compute.stop)
        # the masters `farm up` starts find the cloud there too
        environment.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        cloud = openstack.connect(cloud=CLOUD)
        image_id = _upload_image(cloud, tmp_path, "gentoo-20261207-amd64", farm_id)
        # Glance serves the whole session: the next farm must not find this one's image.
        cleanup.callback(cloud.image.delete_image, image_id, ignore_missing=True)
        a = _master_toml(shared, ["ui", "builds"])
        b = _join(shared, tmp_path / "b", "--role", "ui", "--role", "builds")
        yield Failover(a, b, compute, cloud, farm_id, image_id, postgresql, database)


def _kill(farm: Farm) -> None:
    """SIGKILL the master `farm up` daemonized, and wait until it is gone."""
    pid = int((farm.root / "master" / "twistd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"master {pid} still there 30 s after SIGKILL"
        time.sleep(0.2)


def _silent_past_expiry(failover: Failover, name: str) -> None:
    """Make Buildbot's expiry time pass for master ``name`` as it would in EXPIRE_MINUTES of silence.

    A dead master's row only ages: its last heartbeat stays where it was while the clock runs on. The
    test owns this database, and moving that heartbeat back is exactly the state ten real minutes
    would leave, without the test waiting for them."""
    too_old = int(time.time()) - 60 * (EXPIRE_MINUTES + 1)
    with failover.postgresql.connect(failover.database) as connection:
        updated = connection.execute(
            "UPDATE masters SET last_active = %s WHERE name = %s", (too_old, name)
        ).rowcount
    assert updated == 1, name


def _servers_of(compute: ComputeStandIn, master: str) -> list[StandInServer]:
    return [s for s in compute.servers.values() if s.metadata.get(MASTER_KEY) == master_tag(master)]


def _wait_until(look: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not look():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(1)


def test_master_killed_mid_build_is_expired_by_the_other_which_builds_on_and_reaps_its_server(
    failover: Failover,
) -> None:
    a, b, compute = failover.a, failover.b, failover.compute
    name_a, name_b = _master_name(a), _master_name(b)
    with running(a):
        # A's server goes ACTIVE but its worker never connects (the user-data does not run): A's build
        # is under way, preparing its worker, when A dies.
        compute.boot_faults.append("no-boot")
        a.login()
        status, answer = a.force("force-overlay", builderNames=["overlay"], reason="forced on master A")
        assert status == 200, answer
        (brid,) = answer["result"][1].values()
        interrupted = a.wait_for_build_to_start("overlay", 1)
        compute.wait_for(
            lambda: any(s.status == "ACTIVE" for s in _servers_of(compute, name_a)),
            BOOT_TIMEOUT,
            "A's server",
        )
        (a_server,) = compute.servers.values()
        # B starts after A claimed the request, so that the build is A's
        with running(b):
            master_ids = _wait_for_active_masters(b, {name_a, name_b})
            flavor = failover.cloud.compute.find_flavor("m1.small", ignore_missing=False)
            untagged = failover.cloud.compute.create_server(
                name="farm-server-without-a-master",
                flavor_id=flavor.id,
                image_id=failover.image_id,
                networks="auto",
                metadata={FARM_ID_KEY: failover.farm_id, INSTANCE_KEY: "no-master"},
            )

            _kill(a)

            # B keeps scheduling while A is silent: a build forced on B runs on B's worker.
            b.login()
            status, answer = b.force("force-overlay", builderNames=["overlay"], reason="forced on master B")
            assert status == 200, answer
            on_b = b.wait_for_build("overlay", number=2, timeout=BUILD_TIMEOUT)
            assert on_b["results"] == SUCCESS, on_b["state_string"]
            assert on_b["masterid"] == master_ids[name_b]
            assert b.properties(on_b)["workername"] == "os-1"
            (b_server,) = _servers_of(compute, name_b)
            # Silent for less than Buildbot's expiry, A is still listed active, its build still running.
            assert _active_masters(b) == master_ids
            assert not b.api(f"builds/{interrupted['buildid']}")["builds"][0]["complete"]
            assert a_server.id in compute.servers

            _silent_past_expiry(failover, name_a)
            _wait_until(
                lambda: _active_masters(b) == {name_b: master_ids[name_b]},
                EXPIRY_TIMEOUT,
                "B did not list A inactive",
            )

            (dead,) = [m for m in b.api("masters")["masters"] if m["name"] == name_a]
            assert not dead["active"]
            build = b.api(f"builds/{interrupted['buildid']}")["builds"][0]
            assert (build["complete"], build["results"], build["masterid"]) == (
                True,
                RETRY,
                master_ids[name_a],
            )
            (preparation,) = [
                step
                for step in b.api(f"builds/{interrupted['buildid']}/steps")["steps"]
                if step["name"] == "worker_preparation"
            ]
            assert (preparation["complete"], preparation["results"]) == (True, RETRY)
            # Its request is not given back to B: Buildbot 4.3's housekeeping for a dead master, run here by
            # B, releases the claims of the master running it (db.buildrequests.unclaimBuildRequests), not
            # A's. It stays incomplete, claimed by the inactive A, until a master of A's name starts again.
            request = b.api(f"buildrequests/{brid}")["buildrequests"][0]
            assert (request["complete"], request["claimed"], request["claimed_by_masterid"]) == (
                False,
                True,
                master_ids[name_a],
            )
            # what `farm status` on B tells the operator about it
            status = farm_command("--farm", str(b.root), "status").stdout
            assert f"stranded overlay (request {brid}): claimed by the inactive master {name_a};" in status
            compute.wait_for(lambda: a_server.id in compute.deleted, REAP_TIMEOUT, "B to reap A's server")
            assert b_server.id in compute.servers
            assert untagged.id in compute.servers
            reaped = [
                line for line in (b.root / "master" / "twistd.log").read_text().splitlines()
                if "deleting orphan server" in line
            ]  # fmt: skip
            assert len(reaped) == 1 and a_server.id in reaped[0], reaped
            assert (
                f"master {name_a!r} stopped: sweeping for its servers"
                in (b.root / "master" / "twistd.log").read_text()
            )
            compute.delete_server(compute.servers[untagged.id].project_id, untagged.id)
