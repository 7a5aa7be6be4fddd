"""Builds run on the worker image: a real Buildbot master's OpenStack worker boots it as a server of the
Compute stand-in (qemu mode), the production bootstrap installs the master's wheels from its store and
connects buildbot-worker back to the master, and the builds' steps run inside the guest.

The master's workers are the production composition (gentoo_farm.master.workers.workers) of a farm.toml
with one ``[[workers.openstack]]`` pool whose image is "farm-worker-latest": a Glance image of this farm's
worker variant, which the stand-in boots as tests/workerimage.py's qcow2. The guest reaches the master's
worker port, its store (a real store server) and the overlay's repository (``git daemon``) only through
the stand-in's guest_forwards. Two builders are restricted to the pool: the farm's own overlay builder
(clone, tarball, upload, published by the master) and a small one whose commands show where they ran.
"""

import contextlib
import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openstack
import pytest
from buildbot.process.results import Results

from gentoo_farm.artifacts import OVERLAY
from gentoo_farm.commands.init import create_recipe_repository
from gentoo_farm.commands.key import create_farm_key
from gentoo_farm.config import load_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.image_name import WORKER_VARIANT
from gentoo_farm.master.factories.overlay import TARBALL
from gentoo_farm.store import open_store
from gentoo_farm.store.sets import latest_set
from gentoo_farm.wheelhouse import prepare_worker_wheels
from tests import cache
from tests.imagetest import DEFAULT_OVERLAY
from tests.services.compute import ComputeStandIn
from tests.services.glance import Glance, glance  # noqa: F401  (session fixture)
from tests.services.keystone import Keystone, free_port, keystone  # noqa: F401  (session fixture)
from tests.services.store import LocalStoreSettings, local_settings  # noqa: F401  (fixture)
from tests.test_openstack_worker import INPUT_KEY_ARGS, Master, assert_input_key_computed_by_the_toolkit
from tests.test_worker_image_boot import STORE_ADDRESS, _running_qemus, image  # noqa: F401  (fixture)
from tests.test_world_worker_packages import VERSION_COMMANDS
from tests.workerimage import WorkerImage

CLOUD = "worker-image-build-cloud"
FARM_ID = "farm-image-build"
BUILDER = "on-the-worker-image"
POOL = "os"
# Where the guest finds the master's worker port and the overlay's git repository: inside qemu's network,
# forwarded to 127.0.0.1.
MASTER_HOST = "169.254.169.251"
GIT_HOST = "169.254.169.252"
# Long enough for the second build to find the server the first one started.
BUILD_WAIT_TIMEOUT = 30
# Create, boot under TCG, install the wheels, connect, build, delete.
BUILD_TIMEOUT = 1200

MASTER_CFG = """\
from pathlib import Path

from buildbot.plugins import schedulers, steps, util

from gentoo_farm.config import load_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.factories import overlay
from gentoo_farm.master.workers import openstack_fleet, pb_port, worker_names_for, workers
from gentoo_farm.steps.base import FarmWorkerStep

root = Path({root!r})
config = load_config(root)
c = BuildmasterConfig = {{}}
c["buildbotNetUsageData"] = None
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["protocols"] = {{"pb": {{"port": pb_port(config)}}}}
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["workers"] = workers(config, FarmDir(root), openstack_fleet(config))

factory = util.BuildFactory()
factory.addStep(FarmWorkerStep("input-key", {input_key_args!r}))
for name, command in [
    ("kernel", ["uname", "-r"]),
    ("hostname", ["hostname"]),
    ("qemu-img", ["qemu-img", "--version"]),
    ("farm-worker", ["farm-worker", "--help"]),
]:
    factory.addStep(steps.ShellCommand(name=name, command=command))
c["builders"] = [
    util.BuilderConfig(name={builder!r}, workernames=worker_names_for(config, {builder!r}), factory=factory),
    util.BuilderConfig(
        name={overlay!r}, workernames=worker_names_for(config, {overlay!r}), factory=overlay.factory(config)
    ),
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[{builder!r}, {overlay!r}])]
"""


class ImageMaster(Master):
    """:class:`Master` on :data:`MASTER_CFG`: the workers of the farm.toml in ``root`` (one: os-1)."""

    def __init__(self, basedir: Path, env: dict[str, str], root: Path) -> None:
        # Master.start waits for pool_size workers and vol-1: here, os-1 alone.
        super().__init__(basedir, env, pool_size=0)
        self.root = root

    def master_cfg(self) -> str:
        return MASTER_CFG.format(
            root=str(self.root),
            www_port=self.www_port,
            input_key_args=INPUT_KEY_ARGS,
            builder=BUILDER,
            overlay=OVERLAY,
        )


def _farm_toml(master: ImageMaster, store: LocalStoreSettings, store_port: int, git_port: int) -> str:
    return (
        f'[farm]\nid = "{FARM_ID}"\n'
        f'[overlay]\nrepository = "git://{GIT_HOST}:{git_port}/overlay.git"\n'
        f'[master]\nworker_address = "127.0.0.1:{master.pb_port}"\n'
        f'[workers]\nwheelhouse = "{cache.directory("worker-wheelhouse")}"\npython_versions = ["3.11"]\n'
        "[workers.local]\ncount = 0\n"
        f'[store]\npath = "{store.path}"\npublic_url = "http://{STORE_ADDRESS}:{store_port}"\n'
        f'[[workers.openstack]]\nname = "{POOL}"\ncloud = "{CLOUD}"\nflavor = "m1.small"\n'
        'image = "farm-worker-latest"\nnetwork = ""\nkey_name = "farm-key"\n'
        f'builders = ["{BUILDER}", "{OVERLAY}"]\nmaster_address = "{MASTER_HOST}:{master.pb_port}"\n'
        f"build_wait_timeout = {BUILD_WAIT_TIMEOUT}\n"
    )


@contextlib.contextmanager
def worker_image_cloud(
    keystone: Keystone,  # noqa: F811
    glance: Glance,  # noqa: F811
    image: WorkerImage,  # noqa: F811
    scratch: Path,
) -> Iterator[tuple[ComputeStandIn, openstack.connection.Connection]]:
    """The stand-in with this farm's worker image in Glance, booted as the worker image's qcow2; while it
    runs, OS_CLIENT_CONFIG_FILE names its clouds.yaml (a master started then finds :data:`CLOUD`)."""
    with pytest.MonkeyPatch.context() as environment:
        clouds = keystone.write_clouds_yaml(scratch / "clouds.yaml", cloud=CLOUD, username="demo")
        environment.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        connection = openstack.connect(cloud=CLOUD)
        # What Glance holds is a placeholder: the stand-in boots the qcow2 it maps the image's id to.
        placeholder = scratch / "placeholder.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(placeholder), "1M"], check=True)
        with placeholder.open("rb") as data:
            glance_image = connection.image.create_image(
                name="gentoo-farm-worker-20261207-amd64",
                disk_format="qcow2",
                container_format="bare",
                data=data,
                farm_id=FARM_ID,
                farm_image_variant=WORKER_VARIANT,
            )
        connection.image.wait_for_status(glance_image, status="active", wait=60, interval=0.5)
        compute = ComputeStandIn(
            keystone, scratch / "compute", glance_url=glance.url, images={glance_image.id: image.path}
        )
        compute.start()
        compute.keypairs["farm-key"] = {
            "name": "farm-key",
            "public_key": "ssh-ed25519 AAAA farm",
            "fingerprint": "x",
        }
        keystone.register_service("compute", "nova", compute.url)
        try:
            yield compute, connection
        finally:
            compute.stop()
            # Glance serves the whole session: the next farm must not find this one's worker image.
            connection.image.delete_image(glance_image.id, ignore_missing=True)


@pytest.fixture
def cloud(
    keystone: Keystone,  # noqa: F811
    glance: Glance,  # noqa: F811
    image: WorkerImage,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[ComputeStandIn, openstack.connection.Connection]]:
    with worker_image_cloud(keystone, glance, image, tmp_path) as running:
        yield running


@contextlib.contextmanager
def served_overlay(scratch: Path) -> Iterator[tuple[int, str]]:
    """The default overlay as `farm init` makes its repository, served by ``git daemon`` (git://, which
    the guest's git speaks without curl): the port and the commit."""
    served = scratch / "git"
    served.mkdir()
    create_recipe_repository(served / "overlay.git", "main", DEFAULT_OVERLAY, "Default image overlay")
    commit = subprocess.run(
        ["git", "-C", str(served / "overlay.git"), "rev-parse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", "--reuseaddr", f"--base-path={served}", "--listen=127.0.0.1",
         f"--port={port}", str(served)],
        stdout=subprocess.DEVNULL,
        stderr=(scratch / "git-daemon.log").open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert daemon.poll() is None and time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.1)
        yield port, commit
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


@pytest.fixture
def overlay_repository(tmp_path: Path) -> Iterator[tuple[int, str]]:
    with served_overlay(tmp_path) as served:
        yield served


@contextlib.contextmanager
def running_master(
    scratch: Path, compute: ComputeStandIn, store: LocalStoreSettings, git_port: int
) -> Iterator[ImageMaster]:
    """A started :class:`ImageMaster` in ``scratch/farm`` whose one pool boots the stand-in's worker image,
    the guest reaching it, the store and the overlay's repository through the stand-in's forwards."""
    store_port = int(store.public_url.rsplit(":", 1)[1])
    master = ImageMaster(scratch / "farm" / "master", {**os.environ}, scratch / "farm")
    master.basedir.mkdir(parents=True)
    (master.root / "farm.toml").write_text(_farm_toml(master, store, store_port, git_port))
    config = load_config(master.root)
    prepare_worker_wheels(config)
    # The master signs what it publishes with the farm's key, as `farm init` creates it.
    farm = FarmDir(master.root)
    farm.secrets.mkdir(mode=0o700)
    create_farm_key(config, farm).stop_agent()
    compute.guest_forwards[f"{STORE_ADDRESS}:{store_port}"] = store_port
    compute.guest_forwards[f"{MASTER_HOST}:{master.pb_port}"] = master.pb_port
    compute.guest_forwards[f"{GIT_HOST}:{git_port}"] = git_port
    master.create()
    master.start()
    try:
        yield master
    finally:
        master.stop()


def wait_for_requests(master: ImageMaster, requests: list[int], timeout: float) -> float | None:
    """Wait until the build ``requests`` are complete; when (``time.time()``) the pool's worker was first
    seen connected, to the poll's second, or None if it never was."""
    (worker,) = master.get("workers")["workers"]
    connected_at = None
    deadline = time.monotonic() + timeout
    while not all(_look(master, f"buildrequests/{request}", "complete") for request in requests):
        assert time.monotonic() < deadline, f"no build after {timeout} s:\n{master.log_tail()}"
        if connected_at is None and _look(master, f"workers/{worker['workerid']}", "connected_to"):
            connected_at = time.time()
        time.sleep(1)
    return connected_at


def _look(master: Master, path: str, field: str) -> object:
    """``field`` of the one thing at ``path`` in the REST API; None while a busy master (two cores
    running qemu under TCG) drops the answer."""
    try:
        return master.get(path)[path.split("/")[0]][0][field]
    except (OSError, http.client.HTTPException):
        return None


def _step_log(master: Master, build: dict[str, object], name: str) -> str:
    steps = master.get(f"builds/{build['buildid']}/steps")["steps"]
    step = next(s for s in steps if s["name"] == name)
    (log,) = [log for log in master.get(f"steps/{step['stepid']}/logs")["logs"] if log["slug"] == "stdio"]
    return master.raw(f"logs/{log['logid']}/raw")


@pytest.mark.slow
def test_a_build_runs_on_the_worker_image_booted_by_the_masters_openstack_worker(
    cloud: tuple[ComputeStandIn, openstack.connection.Connection],
    local_settings: LocalStoreSettings,  # noqa: F811
    overlay_repository: tuple[int, str],
    image: WorkerImage,  # noqa: F811
    tmp_path: Path,
) -> None:
    compute, _ = cloud
    git_port, commit = overlay_repository
    started = time.monotonic()
    with running_master(tmp_path, compute, local_settings, git_port) as master:
        brid = master.force(BUILDER)
        overlay_brid = master.force(OVERLAY)
        (worker,) = master.get("workers")["workers"]
        connected_at = wait_for_requests(master, [brid, overlay_brid], BUILD_TIMEOUT)
        request = master.get(f"buildrequests/{brid}")["buildrequests"][0]
        (build,) = master.builds(brid)
        overlay_request = master.get(f"buildrequests/{overlay_brid}")["buildrequests"][0]
        (overlay_build,) = master.builds(overlay_brid)
        overlay_properties = master.properties(overlay_build["buildid"])
        logs = {
            name: _step_log(master, build, name) for name in ("kernel", "hostname", "qemu-img", "farm-worker")
        }
        properties = master.properties(build["buildid"])
        compute.wait_for(lambda: not compute.servers, 120, "the server to be deleted after the build")
    print(f"worker image build: {time.monotonic() - started:.0f} s in all")

    (server,) = compute.deleted.values()
    assert server.vm_dir is not None
    console = (server.vm_dir / "console.log").read_text(errors="replace")
    assert Results[request["results"]] == "success", (
        build["state_string"],
        master.log_tail(),
        console[-3000:],
    )
    assert build["workerid"] == worker["workerid"] and worker["name"] == f"{POOL}-1"
    assert connected_at is not None, "the worker never showed as connected"
    size = image.path.stat().st_size / 2**20
    boot = connected_at - server.created
    print(f"worker image: server create -> worker connected {boot:.0f} s; the image {size:.0f} MiB")
    assert server.metadata["gentoo_farm_worker"] == f"{POOL}-1"
    # The steps ran in the guest: its kernel (Debian's, not this machine's), the name Nova gave it.
    assert image.kernel_release in logs["kernel"], logs["kernel"]
    assert image.kernel_release != os.uname().release
    assert server.name in logs["hostname"], logs["hostname"]
    assert VERSION_COMMANDS["qemu-img --version"] in logs["qemu-img"]
    assert "usage: farm-worker" in logs["farm-worker"]
    # The toolkit ran there and reported back: the key this machine's toolkit computes too.
    assert_input_key_computed_by_the_toolkit(properties)
    # Deleted after the build: qemu is gone and its disk too.
    assert _running_qemus(server.vm_dir / "disk.qcow2") == []
    assert not (server.vm_dir / "disk.qcow2").exists()

    # The farm's overlay builder ran on the same server (build_wait_timeout kept it for the second build):
    # the guest cloned the overlay, built its tarball and uploaded it to the store, where the master
    # published it.
    assert Results[overlay_request["results"]] == "success", (
        overlay_build["state_string"],
        master.log_tail(),
    )
    assert overlay_build["workerid"] == worker["workerid"]
    assert overlay_properties["got_revision"][0] == commit
    published = latest_set(open_store(load_config(master.root).store), OVERLAY)
    assert published is not None
    assert published.metadata["revision"] == commit
    assert [file.name for file in published.files] == [TARBALL]
