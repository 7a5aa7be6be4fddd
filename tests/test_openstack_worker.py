"""OpenStack latent workers end to end: a real Buildbot master (a subprocess), real Keystone and
Glance, the Compute stand-in whose "VMs" run the production user-data, real buildbot-worker processes.

The master runs three workers os-1..os-3 (``openstack_worker_pool("os", 3, ...)``) and the orphan
reaper, sharing one fleet; one master serves the whole module (the SIGKILL test reconfigures and
restarts it, so it comes last).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import portage.util
import pytest
from buildbot.config.errors import capture_config_errors
from buildbot.process.results import Results
from portage.binrepo.config import BinRepoConfigLoader

from gentoo_farm.config import parse_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.services import services
from gentoo_farm.master.workers import workers
from gentoo_farm.stageprotocol import RESULT_MARKER
from gentoo_farm.workers.latent.bootstrap import WorkerBootstrap
from gentoo_farm.workers.latent.fleet import OpenStackFleet
from gentoo_farm.workers.latent.openstack import (
    OpenStackLatentWorker,
    OpenStackPoolSettings,
    openstack_worker_pool,
)
from tests.services.compute import ComputeStandIn
from tests.services.glance import Glance, glance  # noqa: F401  (session fixture)
from tests.services.keystone import Keystone, free_port, keystone  # noqa: F401  (session fixture)

VENV_BIN = Path(sys.executable).parent
FARM_ID = "farm-test-7f3a"
CLOUD = "farmcloud"
AWS_ACCESS_KEY = "AKIAFARMLEAKCHECK0001"
AWS_SECRET_KEY = "farm-aws-secret-leak-check-9d2c1b"
BINHOST_URL = "http://127.0.0.1:1/binpkgs/default/linux/amd64/23.0"
MIRROR_URL = "http://127.0.0.1:1/distfiles"
MAX_START_ATTEMPTS = 2
INPUT_KEY_ARGS = ["--kind", "image", "--value", "worker=openstack"]
NETWORK_ID = "5f0e8a43-2b1c-4d8e-9a7f-0c6b3d2e1f4a"
BOOT_TIMEOUT = 6
CONNECT_TIMEOUT = 20

MASTER_CFG = """\
from pathlib import Path

from buildbot.plugins import schedulers, steps, util

from gentoo_farm.master.www import PasswordFileAuth
from gentoo_farm.passwords import PasswordFile
from gentoo_farm.steps.base import FarmWorkerStep
from gentoo_farm.workers.latent.fleet import OpenStackFleet
from gentoo_farm.workers.latent.openstack import OpenStackPoolSettings, openstack_worker_pool
from gentoo_farm.workers.latent.reaper import OpenStackOrphanReaper

c = BuildmasterConfig = {{}}
c["buildbotNetUsageData"] = None
c["collapseRequests"] = False
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["protocols"] = {{"pb": {{"port": "tcp:{pb_port}:interface=127.0.0.1"}}}}
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
# where a login redirects to
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
htpasswd = {htpasswd!r}
if htpasswd:
    c["www"]["auth"] = PasswordFileAuth(PasswordFile(Path(htpasswd)))
fleet = OpenStackFleet({farm_id!r})
common = dict(
    cloud={cloud!r},
    flavor="m1.small",
    master_address="127.0.0.1:{pb_port}",
    binhost_url={binhost!r},
    distfile_mirror_url={mirror!r},
    install_spec="gentoo-farm==0.1.0",
    security_groups=["default"],
    boot_timeout={boot_timeout},
    connect_timeout={connect_timeout},
    max_start_attempts={max_start_attempts},
    poll_interval=0.5,
)
latent = dict(fleet=fleet, check_instance_interval=1, build_wait_timeout=0)
pool = openstack_worker_pool(
    "os", {pool_size}, settings=OpenStackPoolSettings(image="farm-latest", **common), **latent
)
on_volume = openstack_worker_pool(
    "vol",
    1,
    settings=OpenStackPoolSettings(
        image="gentoo-20261101-amd64", volume_size=20, key_name="farm-key", network={network!r}, **common
    ),
    **latent,
)
c["workers"] = pool + on_volume
c["services"] = [
    OpenStackOrphanReaper(cloud={cloud!r}, fleet=fleet, interval=5),
    # a cloud the master cannot use: its reaper complains in the log, the master carries on
    OpenStackOrphanReaper(cloud="no-such-cloud", fleet=fleet, interval=5),
]

quick = util.BuildFactory()
quick.addStep(FarmWorkerStep("input-key", {input_key_args!r}))
quick.addStep(steps.ShellCommand(command=["sleep", "1"]))
long = util.BuildFactory()
long.addStep(steps.ShellCommand(command=["sleep", "600"]))
workers = [worker.name for worker in pool]
c["builders"] = [
    util.BuilderConfig(name="quick", workernames=workers, factory=quick),
    util.BuilderConfig(name="long", workernames=workers, factory=long),
    util.BuilderConfig(name="on-volume", workernames=["vol-1"], factory=quick),
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["quick", "long", "on-volume"])]
"""


class Master:
    """``buildbot start --nodaemon`` in a subprocess, driven over its REST API.

    ``pool_size`` OpenStack workers os-1..os-N serve the "quick" and "long" builders, with
    ``boot_timeout`` and ``max_start_attempts``; with an ``htpasswd`` (a :class:`PasswordFile`) the
    web UI takes logins checked against it.
    """

    def __init__(
        self,
        basedir: Path,
        env: dict[str, str],
        *,
        pool_size: int = 3,
        boot_timeout: float = BOOT_TIMEOUT,
        max_start_attempts: int = MAX_START_ATTEMPTS,
        htpasswd: Path | None = None,
    ) -> None:
        self.basedir = basedir
        self.env = env
        self.pool_size = pool_size
        self.boot_timeout = boot_timeout
        self.max_start_attempts = max_start_attempts
        self.htpasswd = htpasswd
        self.pb_port = free_port()
        self.www_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def create(self) -> None:
        subprocess.run(
            [str(VENV_BIN / "buildbot"), "create-master", "--quiet", "-r", str(self.basedir)],
            check=True,
            env=self.env,
            timeout=120,
        )
        (self.basedir / "master.cfg").write_text(self.master_cfg())

    def master_cfg(self) -> str:
        return MASTER_CFG.format(
            pb_port=self.pb_port,
            www_port=self.www_port,
            cloud=CLOUD,
            farm_id=FARM_ID,
            binhost=BINHOST_URL,
            mirror=MIRROR_URL,
            boot_timeout=self.boot_timeout,
            connect_timeout=CONNECT_TIMEOUT,
            max_start_attempts=self.max_start_attempts,
            network=NETWORK_ID,
            input_key_args=INPUT_KEY_ARGS,
            pool_size=self.pool_size,
            htpasswd=str(self.htpasswd or ""),
        )

    def start(self, timeout: float = 90) -> None:
        with (self.basedir / "stdout.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(self.basedir)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"master exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                # the pool and vol-1
                if len(self.get("workers")["workers"]) == self.pool_size + 1:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"master not up after {timeout} s:\n{self.log_tail()}")

    def reconfig(self, timeout: float = 60) -> None:
        """Reload master.cfg as ``buildbot reconfig`` does (SIGHUP), and wait until it is applied."""
        assert self.process is not None
        done = "configuration update complete"
        before = self.log_tail(100_000).count(done)
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log_tail(100_000).count(done) == before:
            if time.monotonic() > deadline:
                raise AssertionError(f"no reconfig after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def log_tail(self, lines: int = 60) -> str:
        log = self.basedir / "twistd.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.www_port}/api/v2/{path}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)

    def raw(self, path: str) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.www_port}/api/v2/{path}", timeout=30
        ) as response:
            return response.read().decode(errors="replace")

    def force(self, builder: str) -> int:
        """Force a build on ``builder``; returns its build request id."""
        body = {"jsonrpc": "2.0", "method": "force", "id": 1, "params": {"builderNames": [builder]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.www_port}/api/v2/forceschedulers/force",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            result = json.load(response)["result"]
        return int(next(iter(result[1].values())))

    def wait_request(self, brid: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = self.get(f"buildrequests/{brid}")["buildrequests"][0]
            if request["complete"]:
                return request
            time.sleep(0.5)
        raise AssertionError(f"build request {brid} not complete after {timeout} s:\n{self.log_tail()}")

    def builds(self, brid: int) -> list[dict[str, Any]]:
        return self.get(f"builds?buildrequestid={brid}&order=buildid")["builds"]

    def preparation_log(self, buildid: int) -> str:
        """What the UI shows for the worker preparation step of a build (all its logs)."""
        steps = self.get(f"builds/{buildid}/steps")["steps"]
        step = next(s for s in steps if s["name"] == "worker_preparation")
        logs = self.get(f"steps/{step['stepid']}/logs")["logs"]
        return "\n".join(self.raw(f"logs/{log['logid']}/raw") for log in logs)

    def properties(self, buildid: int) -> dict[str, Any]:
        return self.get(f"builds/{buildid}/properties")["properties"][0]


@dataclass
class Farm:
    compute: ComputeStandIn
    master: Master
    keystone: Keystone
    cloud: openstack.connection.Connection
    image_ids: dict[str, str]

    def wait_no_servers(self, timeout: float = 60) -> None:
        self.compute.wait_for(lambda: not self.compute.servers, timeout, "every server to be deleted")

    def secrets(self) -> list[str]:
        return [AWS_ACCESS_KEY, AWS_SECRET_KEY, *self.keystone.passwords.values()]


def _upload_image(cloud: openstack.connection.Connection, workdir: Path, name: str, farm_id: str) -> str:
    disk = workdir / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    with disk.open("rb") as data:
        image = cloud.image.create_image(
            name=name, disk_format="qcow2", container_format="bare", data=data, farm_id=farm_id
        )
    cloud.image.wait_for_status(image, status="active", wait=60, interval=0.5)
    return image.id


def _prepare_vm(vm_dir: Path) -> None:
    # the "image" carries the worker already (as images this farm builds for itself do)
    (vm_dir / "home" / "venv").symlink_to(sys.prefix)


@contextlib.contextmanager
def running_farm(
    keystone: Keystone,  # noqa: F811
    glance: Glance,  # noqa: F811
    workdir: Path,
    **master_options: Any,
) -> Iterator[Farm]:
    """The Compute stand-in, this farm's images in Glance and a started :class:`Master`
    (``master_options`` go to it); everything stopped afterwards."""
    compute = ComputeStandIn(keystone, workdir / "compute", glance_url=glance.url, prepare_vm=_prepare_vm)
    compute.start()
    compute.keypairs["farm-key"] = {
        "name": "farm-key",
        "public_key": "ssh-ed25519 AAAA farm",
        "fingerprint": "x",
    }
    keystone.register_service("compute", "nova", compute.url)
    clouds = keystone.write_clouds_yaml(workdir / "clouds.yaml", cloud=CLOUD, username="demo")
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(clouds)
    cloud = openstack.connect(cloud=CLOUD)
    image_ids = {
        "other-farm": _upload_image(cloud, workdir, "gentoo-other-farm", "someone-else"),
        "older": _upload_image(cloud, workdir, "gentoo-20261101-amd64", FARM_ID),
    }
    time.sleep(1.1)  # Glance's created_at has one-second resolution
    image_ids["newest"] = _upload_image(cloud, workdir, "gentoo-20261125-amd64", FARM_ID)
    env = {
        **os.environ,
        "OS_CLIENT_CONFIG_FILE": str(clouds),
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
    }
    master = Master(workdir / "master", env, **master_options)
    master.create()
    master.start()
    try:
        yield Farm(compute, master, keystone, cloud, image_ids)
    finally:
        master.stop()
        compute.stop()
        # Glance and Keystone serve the whole session: the next farm must not find this one's images.
        for image_id in image_ids.values():
            cloud.image.delete_image(image_id, ignore_missing=True)


def assert_input_key_computed_by_the_toolkit(properties: dict) -> None:
    """The build's input key came from the worker's ``farm-worker input-key``: the key this machine's toolkit
    computes from INPUT_KEY_ARGS too."""
    assert properties["input_key"][1] == "farm-worker input-key"
    here = subprocess.run(
        [str(VENV_BIN / "farm-worker"), "input-key", *INPUT_KEY_ARGS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(here.stdout.splitlines()[-1].removeprefix(RESULT_MARKER)) == {
        "input_key": properties["input_key"][0]
    }


@pytest.fixture(scope="module")
def farm(keystone: Keystone, glance: Glance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:  # noqa: F811
    with running_farm(keystone, glance, tmp_path_factory.mktemp("openstack-farm")) as started:
        yield started


@pytest.fixture
def stand_in(farm: Farm) -> Iterator[ComputeStandIn]:
    farm.wait_no_servers()
    farm.compute.reset()
    yield farm.compute
    farm.compute.boot_faults.clear()
    farm.compute.create_errors.clear()


def test_build_runs_on_a_fresh_server_that_is_deleted_after(farm: Farm, stand_in: ComputeStandIn) -> None:
    brid = farm.master.force("quick")
    request = farm.master.wait_request(brid, timeout=120)
    builds = farm.master.builds(brid)
    assert Results[request["results"]] == "success", [b["state_string"] for b in builds]
    build = builds[-1]
    assert build["state_string"] == "build successful"
    farm.wait_no_servers()

    (server,) = stand_in.deleted.values()
    # the newest image this farm published, not the older one nor another farm's
    assert server.image_id == farm.image_ids["newest"]
    worker_name = farm.master.get(f"workers/{build['workerid']}")["workers"][0]["name"]
    assert server.metadata["gentoo_farm_id"] == FARM_ID
    assert server.metadata["gentoo_farm_worker"] == worker_name
    # the reapers of several masters tell whose server it is by the name Buildbot lists the master under
    (master,) = farm.master.get("masters")["masters"]
    assert server.metadata["gentoo_farm_master"] == master["name"]
    assert server.request["security_groups"] == [{"name": "default"}]
    # the toolkit ran on the VM and reported back through FarmWorkerStep
    properties = farm.master.properties(build["buildid"])
    assert_input_key_computed_by_the_toolkit(properties)
    assert server.vm_dir is not None
    assert (server.vm_dir / "home" / "worker" / "quick" / "build").is_dir()
    # the VM's Portage points at the farm binhost and distfile mirror
    portage = server.vm_dir / "root" / "etc" / "portage"
    binrepo = (portage / "binrepos.conf" / "gentoo-farm.conf").read_text()
    assert f"sync-uri = {BINHOST_URL}" in binrepo
    assert f'GENTOO_MIRRORS="{MIRROR_URL} ${{GENTOO_MIRRORS}}"' in (portage / "make.conf").read_text()

    # no S3 or cloud credential reached the cloud API (user-data included) or the build properties
    recorded = "\n".join(
        r.body.decode(errors="replace") + json.dumps(r.headers) for r in stand_in.requests
    ) + (server.user_data or "")
    tokens = {r.headers.get("X-Auth-Token") for r in stand_in.requests} - {None}
    bodies = "\n".join(r.body.decode(errors="replace") for r in stand_in.requests) + (server.user_data or "")
    for secret in farm.secrets():
        assert secret not in recorded
    for token in tokens:
        assert token not in bodies
    assert not any(secret in json.dumps(properties) for secret in [*farm.secrets(), *tokens])

    reaper = f"openstack-orphan-reaper-no-such-cloud-{FARM_ID}"
    assert (
        f"{reaper}: sweep failed: cloud 'no-such-cloud': listing servers: not usable from clouds.yaml:"
        in farm.master.log_tail(2000)
    )

    # the one-time password in that user-data died with the server
    assert server.user_data is not None
    password = _user_data_password(server.user_data)
    answer = _pb_login(farm.master.pb_port, worker_name, password)
    assert "UnauthorizedLogin" in answer, answer


PB_LOGIN = """\
import sys

from twisted.internet import reactor
from twisted.spread import pb
from twisted.cred import credentials

port, user, password = sys.argv[1:]
factory = pb.PBClientFactory()
reactor.connectTCP("127.0.0.1", int(port), factory)
login = factory.login(
    credentials.UsernamePassword(user.encode(), password.encode()), client=pb.Referenceable()
)
login.addCallbacks(lambda _: print("accepted"), lambda failure: print(failure.type, failure.value))
login.addBoth(lambda _: reactor.stop())
reactor.callLater(30, reactor.stop)
reactor.run()
"""


def _pb_login(port: int, user: str, password: str) -> str:
    """Log in to the master's worker port as ``user``; what the master answered."""
    result = subprocess.run(
        [sys.executable, "-c", PB_LOGIN, str(port), user, password],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def _user_data_password(user_data: str) -> str:
    match = re.search(r'"\$basedir" \S+ \S+ (\S+)', user_data)
    assert match is not None, user_data
    return match.group(1)


def test_boot_from_volume_with_key_and_network(farm: Farm, stand_in: ComputeStandIn) -> None:
    brid = farm.master.force("on-volume")
    request = farm.master.wait_request(brid, timeout=120)

    assert Results[request["results"]] == "success"
    farm.wait_no_servers()
    (server,) = stand_in.deleted.values()
    assert "imageRef" not in server.request
    assert server.request["block_device_mapping_v2"] == [
        {
            "boot_index": 0,
            "uuid": farm.image_ids["older"],  # named in the config
            "source_type": "image",
            "destination_type": "volume",
            "volume_size": 20,
            "delete_on_termination": True,
        }
    ]
    assert server.request["key_name"] == "farm-key"
    assert server.request["networks"] == [{"uuid": NETWORK_ID}]


@pytest.mark.slow
def test_ten_builds_never_run_more_than_three_servers(farm: Farm, stand_in: ComputeStandIn) -> None:
    brids = [farm.master.force("quick") for _ in range(10)]
    results = [farm.master.wait_request(brid, timeout=600)["results"] for brid in brids]

    assert [Results[r] for r in results] == ["success"] * 10
    farm.wait_no_servers()
    # three idle workers took three requests at once (it runs before the fault tests quarantine any)
    assert stand_in.peak_servers == 3
    assert len(stand_in.deleted) == 10
    # one-time passwords: every instance got its own
    passwords = {_user_data_password(server.user_data or "") for server in stand_in.deleted.values()}
    assert len(passwords) == 10


def _request_with_fault(farm: Farm, stand_in: ComputeStandIn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    brid = farm.master.force("quick")
    request = farm.master.wait_request(brid, timeout=240)
    return request, farm.master.builds(brid)


SERVER = rf"server {FARM_ID}-os-\d-[0-9a-f]{{12}}"
# fault -> (how to cause it, what the worker preparation log says: a regular expression)
FAULTS = {
    "error": ("boot", rf"{SERVER} \(\S+\) went to ERROR: No valid host was found"),
    "never-active": ("boot", rf"server \S+ not ACTIVE after {BOOT_TIMEOUT} s \(status BUILD\)"),
    "crash": (
        "boot",
        rf"latent worker crashed before connecting: {SERVER} \(\S+\) went to ERROR: No valid host",
    ),
    "no-boot": (
        "boot",
        rf"{SERVER} \(\S+\) is ACTIVE but its worker did not connect within {CONNECT_TIMEOUT} s; "
        r"console: Booting from Hard Disk\.\.\. \| No bootable device\.",
    ),
    "quota-413": (
        (413, "Quota exceeded for instances: Requested 1, but already used 9 of 9 instances"),
        r"cloud 'farmcloud': creating a server: quota exceeded \(HTTP 413\): Quota exceeded for instances",
    ),
    "quota-403": (
        (403, "Quota exceeded for cores: Requested 4, but already used 40 of 40 cores"),
        r"cloud 'farmcloud': creating a server: quota exceeded \(HTTP 403\): Quota exceeded for cores",
    ),
    "api-500": (
        (500, "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/"),
        r"cloud 'farmcloud': creating a server: API error \(HTTP 500\): Unexpected API Error",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_retried_on_a_new_instance_and_nothing_is_left(
    farm: Farm, stand_in: ComputeStandIn, fault: str
) -> None:
    how, reason = FAULTS[fault]
    if how == "boot":
        stand_in.boot_faults.append(fault)
    else:
        stand_in.create_errors.append(how)
    request, builds = _request_with_fault(farm, stand_in)

    assert Results[request["results"]] == "success", [b["state_string"] for b in builds]
    first, *_, last = builds
    assert Results[first["results"]] == "retry"
    assert first["state_string"] == "worker not available"
    assert re.search(reason, farm.master.preparation_log(first["buildid"]))
    assert Results[last["results"]] == "success"
    farm.wait_no_servers()
    if how == "boot":
        faulty = [s for s in stand_in.deleted.values() if s.boot_fault == fault]
        assert len(faulty) == 1


@pytest.mark.slow
def test_persistent_quota_backs_off_instead_of_looping(farm: Farm, stand_in: ComputeStandIn) -> None:
    stand_in.max_instances = 0
    brid = farm.master.force("quick")
    # The window opens at the first refused create, however long a loaded master takes to try one.
    stand_in.wait_for(lambda: bool(stand_in.server_creates()), 120, "a first server create")
    time.sleep(25)  # proving an absence: a worker without back-off would retry many times meanwhile
    creates = stand_in.server_creates()
    # Buildbot's quarantine: each worker waits 10 s, then 20 s, ... after a failed start
    assert 1 <= len(creates) <= 9, len(creates)
    stand_in.max_instances = 100

    request = farm.master.wait_request(brid, timeout=180)
    builds = farm.master.builds(brid)
    assert Results[request["results"]] == "success"
    assert "quota exceeded (HTTP 403): Quota exceeded for instances" in farm.master.preparation_log(
        builds[0]["buildid"]
    )
    farm.wait_no_servers()


@pytest.mark.slow
def test_a_request_gives_up_after_bounded_attempts_with_the_reason(
    farm: Farm, stand_in: ComputeStandIn
) -> None:
    stand_in.boot_faults.extend(["error"] * (MAX_START_ATTEMPTS + 1))
    request, builds = _request_with_fault(farm, stand_in)

    assert Results[request["results"]] == "exception"
    assert [Results[b["results"]] for b in builds] == ["retry"] * MAX_START_ATTEMPTS + ["exception"]
    # Buildbot moved the request on to other workers after each failure: the bound is the fleet's
    assert len({b["workerid"] for b in builds}) > 1
    final_log = farm.master.preparation_log(builds[-1]["buildid"])
    assert f"gave up after {MAX_START_ATTEMPTS} failed instance starts" in final_log
    assert "went to ERROR: No valid host was found" in final_log
    farm.wait_no_servers()
    assert len(stand_in.deleted) == MAX_START_ATTEMPTS


def test_a_configuration_error_fails_the_build_at_once(farm: Farm, stand_in: ComputeStandIn) -> None:
    stand_in.create_errors.append((400, "Invalid key_name provided."))
    request, builds = _request_with_fault(farm, stand_in)

    assert Results[request["results"]] == "exception"
    assert len(builds) == 1
    assert "rejected (HTTP 400): Invalid key_name provided." in farm.master.preparation_log(
        builds[0]["buildid"]
    )
    assert not stand_in.servers and not stand_in.deleted


def test_bad_worker_configuration_is_reported_naming_the_key() -> None:
    good = {
        "cloud": CLOUD,
        "flavor": "m1.small",
        "image": "farm-latest",
        "master_address": "10.0.0.1:9989",
        "binhost_url": BINHOST_URL,
        "distfile_mirror_url": MIRROR_URL,
        "install_spec": "gentoo-farm==0.1.0",
    }
    bad = {
        "master_address": ("nohost", "'os-1': master_address 'nohost': expected HOST:PORT"),
        "boot_timeout": (0, "'os-1': boot_timeout must be a positive number of seconds, got 0"),
        "volume_size": (
            2.5,
            "'os-1': volume_size must be whole GiB (0: boot from the image), got 2.5",
        ),
        "binhost_url": ("ftp:/x", "'os-1': binhost_url 'ftp:/x': expected an http(s):// or file:// URL"),
    }
    fleet = OpenStackFleet(FARM_ID)
    for key, (value, message) in bad.items():
        with capture_config_errors() as errors:
            OpenStackLatentWorker("os-1", fleet=fleet, settings=OpenStackPoolSettings(**{**good, key: value}))
        assert any(message in error for error in errors.errors), (key, errors.errors)
    settings = OpenStackPoolSettings(**good)
    with capture_config_errors() as errors:
        OpenStackLatentWorker("os-1", fleet=OpenStackFleet("my farm"), settings=settings)
    assert any("'os-1': farm_id 'my farm' must be 1-64 letters" in error for error in errors.errors)
    with capture_config_errors() as errors:
        OpenStackLatentWorker("os 1", fleet=fleet, settings=settings)
    assert errors.errors == [
        "OpenStack worker 'os 1': worker name 'os 1': letters, digits, '.', '_' and '-' only"
    ]
    with capture_config_errors() as errors:
        assert len(openstack_worker_pool("os", 3, fleet=fleet, settings=settings)) == 3
    assert not errors.errors


@pytest.mark.parametrize("layout", ["fresh", "files", "directories"])
def test_bootstrap_points_portage_at_the_farm_as_portage_reads_it(tmp_path: Path, layout: str) -> None:
    """The Portage half of the user-data, read back with Portage's own parsers, twice (idempotent)."""
    configroot, home = tmp_path / "root", tmp_path / "home"
    portage_dir = configroot / "etc" / "portage"
    portage_dir.mkdir(parents=True)
    if layout == "files":
        (portage_dir / "make.conf").write_text('COMMON_FLAGS="-O2 -pipe"\n')
        (portage_dir / "binrepos.conf").write_text(
            "[gentoobinhost]\nsync-uri = https://distfiles.gentoo.org/x\n"
        )
    if layout == "directories":  # as Gentoo's stage3 ships binrepos.conf
        (portage_dir / "make.conf").mkdir()
        (portage_dir / "make.conf" / "00-base.conf").write_text('COMMON_FLAGS="-O2 -pipe"\n')
        (portage_dir / "binrepos.conf").mkdir()
        (portage_dir / "binrepos.conf" / "gentoobinhost.conf").write_text(
            "[gentoobinhost]\nsync-uri = https://distfiles.gentoo.org/x\n"
        )
    # the image already carries the worker: record what the script asks of it
    (home / "venv" / "bin").mkdir(parents=True)
    for tool in ("buildbot-worker", "farm-worker"):
        stub = home / "venv" / "bin" / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\n')
        stub.chmod(0o755)
    script = tmp_path / "user-data"
    script.write_text(
        WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL, "gentoo-farm==0.1.0").render(
            "os-1", "s3cr3t"
        )
    )
    env = {"PATH": "/usr/bin:/bin", "PORTAGE_CONFIGROOT": f"{configroot}/", "FARM_WORKER_HOME": str(home)}
    for _ in range(2):
        subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True, timeout=60)

    make_conf = portage_dir / "make.conf"
    settings = portage.util.getconfig(
        str(make_conf),
        expand={"GENTOO_MIRRORS": "https://distfiles.gentoo.org"},
        allow_sourcing=True,
        recursive=True,
    )
    assert settings["GENTOO_MIRRORS"].split() == [MIRROR_URL, "https://distfiles.gentoo.org"]
    make_conf_files = sorted(make_conf.iterdir()) if make_conf.is_dir() else [make_conf]
    assert sum(path.read_text().count("GENTOO_MIRRORS=") for path in make_conf_files) == 1
    paths = [str(portage_dir / "binrepos.conf")]
    repos = BinRepoConfigLoader(
        paths, {"EPREFIX": "", "EROOT": "/", "PORTAGE_CONFIGROOT": str(configroot), "ROOT": "/"}
    )
    assert repos["gentoo-farm"].sync_uri == BINHOST_URL
    assert repos["gentoo-farm"].priority == 10
    if layout != "fresh":
        assert "gentoobinhost" in repos
    home_worker = home / "worker"
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"buildbot-worker create-worker --umask=0o022 --keepalive=60 {home_worker} 10.0.0.1:9989 os-1 s3cr3t",
        f"buildbot-worker start --quiet {home_worker}",
    ] * 2


RECORDER = """\
import os
import sys


def _record(tool):
    with open(os.path.join(os.environ["FARM_WORKER_HOME"], "calls"), "a") as calls:
        calls.write(" ".join([tool, *sys.argv[1:]]) + "\\n")


def buildbot_worker():
    _record("buildbot-worker")


def farm_worker():
    _record("farm-worker")
"""


def _recorder_wheel(directory: Path) -> Path:
    """A wheel whose buildbot-worker and farm-worker only record how they were called."""
    files = {
        "farm_recorder.py": RECORDER,
        "farm_recorder-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: farm-recorder\nVersion: 1.0\n",
        "farm_recorder-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "farm_recorder-1.0.dist-info/entry_points.txt": (
            "[console_scripts]\nbuildbot-worker = farm_recorder:buildbot_worker\n"
            "farm-worker = farm_recorder:farm_worker\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("farm_recorder-1.0.dist-info/RECORD,,")
    wheel = directory / "farm_recorder-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("farm_recorder-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.mark.slow
def test_bootstrap_installs_the_worker_when_the_image_lacks_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    wheel = _recorder_wheel(tmp_path)
    script = tmp_path / "user-data"
    script.write_text(
        WorkerBootstrap("10.0.0.1:9989", BINHOST_URL, MIRROR_URL, str(wheel)).render("os-1", "pw")
    )
    env = {"PATH": "/usr/bin:/bin", "PORTAGE_CONFIGROOT": f"{tmp_path}/root/", "FARM_WORKER_HOME": str(home)}
    run = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stdout + run.stderr
    assert f"gentoo-farm: installing the worker into {home}/venv" in run.stdout
    assert (home / "venv" / "bin" / "farm-worker").is_file()
    assert (home / "calls").read_text().splitlines() == [
        f"buildbot-worker create-worker --umask=0o022 --keepalive=60 {home}/worker 10.0.0.1:9989 os-1 pw",
        f"buildbot-worker start --quiet {home}/worker",
    ]


def _wait_for_sweeps(stand_in: ComputeStandIn, count: int) -> None:
    """Until the reaper of the stand-in's cloud has listed the servers ``count`` more times."""

    def listings() -> int:
        return sum(
            1 for r in stand_in.requests if r.method == "GET" and r.path.startswith("/v2.1/servers/detail")
        )

    expected = listings() + count
    stand_in.wait_for(lambda: listings() >= expected, 60, f"{count} sweeps of the orphan reaper")


@pytest.mark.slow
def test_master_killed_mid_build_orphan_is_reaped_untagged_server_untouched(
    farm: Farm, stand_in: ComputeStandIn
) -> None:
    brid = farm.master.force("long")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
        b["state_string"] == "building" or "sleep" in b["state_string"] for b in farm.master.builds(brid)
    ):
        time.sleep(0.5)
    (orphan,) = stand_in.servers.values()
    # while its worker lives, the reaper leaves the server alone, also after a reconfig has handed
    # every worker and reaper a new fleet (the reaper gets it first and sweeps at once)
    _wait_for_sweeps(stand_in, 2)
    farm.master.reconfig()
    _wait_for_sweeps(stand_in, 2)
    assert orphan.id in stand_in.servers and not stand_in.deleted
    assert not farm.master.get(f"buildrequests/{brid}")["buildrequests"][0]["complete"]
    flavor = farm.cloud.compute.find_flavor("m1.small")
    untagged = farm.cloud.compute.create_server(
        name="someone-elses-server",
        flavor_id=flavor.id,
        image_id=farm.image_ids["other-farm"],
        networks="auto",
    )

    farm.master.kill()
    time.sleep(1)
    assert orphan.id in stand_in.servers, "the server outlives a killed master"
    farm.master.start()

    stand_in.wait_for(lambda: orphan.id in stand_in.deleted, 60, "the orphan to be reaped")
    assert untagged.id in stand_in.servers
    assert "deleting orphan server" in farm.master.log_tail(400)
    stand_in.delete_server(stand_in.servers[untagged.id].project_id, untagged.id)
    farm.master.stop()
    farm.wait_no_servers()


def test_each_pool_boots_in_its_region_and_each_region_has_its_reaper(tmp_path: Path) -> None:
    pool = (
        '\n[[workers.openstack]]\nname = "{name}"\nflavor = "m1.small"\nimage = "farm-latest"\n'
        'network = "n"\n'
    )
    text = (
        f'[farm]\nid = "{FARM_ID}"\n[workers.local]\ncount = 0\n'
        + pool.format(name="home")
        + pool.format(name="away")
        + 'region = "RegionTwo"\n'
        + pool.format(name="more")
        + 'region = "RegionTwo"\n'
    )
    # the clouds come from OS_CLOUD, as for the openstack CLI
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OS_CLOUD", CLOUD)
        config = parse_config(text, tmp_path)
    fleet = OpenStackFleet(FARM_ID)

    regions = {
        worker.name: (settings.cloud, settings.region)
        for worker in workers(config, FarmDir(tmp_path), fleet)
        for settings in [worker.getConfigDict()["kwargs"]["settings"]]
    }
    assert regions == {
        "home-1": (CLOUD, ""),
        "away-1": (CLOUD, "RegionTwo"),
        "more-1": (CLOUD, "RegionTwo"),
    }
    # a connection lists the servers of its own region only: one reaper per region of a cloud
    reapers = [service for service in services(config, FarmDir(tmp_path), fleet) if "reaper" in service.name]
    assert {reaper.name: reaper.getConfigDict()["args"][3] for reaper in reapers} == {
        f"openstack-orphan-reaper-{CLOUD}-{FARM_ID}": "",
        f"openstack-orphan-reaper-{CLOUD}-RegionTwo-{FARM_ID}": "RegionTwo",
    }
