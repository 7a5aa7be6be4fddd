"""The worker image boots as a server of the Compute stand-in (qemu mode) and runs its user-data.

The image is tests/workerimage.py's (the world's stage3, the worker packages, Debian's kernel, the
default overlay; cached per machine). A server is created through openstacksdk against the stand-in
behind the real test Keystone; what its user-data printed comes back through the API's console-output,
as a cloud shows it. One server boots (a boot of this image costs minutes under TCG) and its user-data
does two things, each checked by its own test: the production bootstrap (WorkerBootstrap) installs the
master's wheel and wheelhouse (prepared as `farm up` does, Python 3.11's: the image's python3) from the
master's store, a real store server on 127.0.0.1 that the guest reaches at STORE_ADDRESS through qemu's
user network; then commands show that the image is a worker image (a venv, qemu-img, git). The last test
deletes the server.
"""

import base64
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openstack
import pytest

from gentoo_farm import qemuboot
from gentoo_farm.config import parse_config
from gentoo_farm.master.workers import served_wheels
from gentoo_farm.wheelhouse import master_version, prepare_worker_wheels
from gentoo_farm.workers.latent.bootstrap import DEFAULT_WORKER_HOME, WorkerBootstrap
from tests import cache
from tests.services.compute import ComputeStandIn
from tests.services.keystone import Keystone, keystone  # noqa: F401  (session fixture)
from tests.services.store import running_store_server
from tests.test_world_worker_packages import VERSION_COMMANDS
from tests.workerimage import WorkerImage, worker_image

CLOUD = "worker-image-cloud"
IMAGE_ID = "farm-worker-latest"
MARKER = "worker image user-data done"
WORKER_IMAGE_CHECKS = f"""set -e
python3 -m venv /var/tmp/venv
/var/tmp/venv/bin/python -m pip --version
qemu-img --version
git --version
echo '{MARKER}'
"""
BOOT_TIMEOUT = 900
# Where the guest finds the master's store (its port is the store server's): inside qemu's network.
STORE_ADDRESS = "169.254.169.250"
# What the bootstrap connects buildbot-worker to; nothing answers there (a later test runs a master).
MASTER_ADDRESS = "169.254.169.251:9989"


@pytest.fixture(scope="module")
def image() -> WorkerImage:
    started = time.monotonic()
    built = worker_image()
    taken = time.monotonic() - started
    size = built.path.stat().st_size / 2**20
    print(
        f"worker image: {built.build_seconds:.0f} s to build (into the cache), {taken:.1f} s to get now, "
        f"{size:.0f} MiB"
    )
    return built


@pytest.fixture(scope="module")
def cloud(
    keystone: Keystone,  # noqa: F811
    image: WorkerImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ComputeStandIn, openstack.connection.Connection]]:
    scratch = tmp_path_factory.mktemp("worker-image-cloud")
    compute = ComputeStandIn(keystone, scratch / "compute", images={IMAGE_ID: image.path})
    compute.start()
    _, public_key = qemuboot.new_key(scratch)
    compute.keypairs["farm-key"] = {"name": "farm-key", "public_key": public_key, "fingerprint": "x"}
    keystone.register_service("compute", "nova", compute.url)
    clouds = keystone.write_clouds_yaml(scratch / "clouds.yaml", cloud=CLOUD, username="demo")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        try:
            yield compute, openstack.connect(cloud=CLOUD)
        finally:
            compute.stop()


def _console(connection: openstack.connection.Connection, server_id: str) -> str:
    return str(connection.compute.get_server_console_output(server_id)["output"])


def _running_qemus(disk: Path) -> list[str]:
    """The processes whose command line names ``disk``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(disk).encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
    return found


def _boot(
    compute: ComputeStandIn, connection: openstack.connection.Connection, name: str, user_data: str
) -> tuple[str, str]:
    """Create a server of the worker image with ``user_data`` and wait until the user-data has run:
    the server's id and the console output."""
    started = time.monotonic()
    server = connection.compute.create_server(
        name=name,
        image_id=IMAGE_ID,
        flavor_id="1",
        key_name="farm-key",
        user_data=base64.b64encode(user_data.encode()).decode("ascii"),
    )
    server = connection.compute.wait_for_server(server, status="ACTIVE", wait=60)
    disk = compute.workdir / "vms" / server.id / "disk.qcow2"
    assert _running_qemus(disk), "no qemu runs the ACTIVE server's disk"
    deadline = started + BOOT_TIMEOUT
    console = ""
    while "user-data exited with status" not in console and time.monotonic() < deadline:
        time.sleep(5)
        console = _console(connection, server.id)
        assert connection.compute.get_server(server.id).status == "ACTIVE", console[-3000:]
    print(f"worker image: from create to the user-data done: {time.monotonic() - started:.0f} s ({name})")
    return server.id, console


@dataclass(frozen=True)
class BootedWorker:
    server_id: str
    console: str
    venv: str


@pytest.fixture(scope="module")
def booted(
    cloud: tuple[ComputeStandIn, openstack.connection.Connection],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BootedWorker]:
    """One server whose user-data runs the production bootstrap, then the worker image's checks."""
    compute, connection = cloud
    scratch = tmp_path_factory.mktemp("worker-image-store")
    with running_store_server(scratch / "store", scratch / "store-server.log") as store_url:
        store_port = int(store_url.rsplit(":", 1)[1])
        compute.guest_forwards[f"{STORE_ADDRESS}:{store_port}"] = store_port
        farm_toml = (
            f'[farm]\nid = "x"\n[workers]\nwheelhouse = "{cache.directory("worker-wheelhouse")}"\n'
            'python_versions = ["3.11"]\n'
            f'[store]\npath = "{scratch / "store"}"\npublic_url = "http://{STORE_ADDRESS}:{store_port}"\n'
            '[[workers.openstack]]\nname = "os"\ncloud = "c"\nflavor = "f"\nimage = "farm-worker-latest"\n'
            'network = "n"\n'
        )
        config = parse_config(farm_toml, scratch)
        prepare_worker_wheels(config)
        wheels, urls = served_wheels(config).for_instance()
        bootstrap = WorkerBootstrap(
            MASTER_ADDRESS,
            f"http://{STORE_ADDRESS}:{store_port}/binpkgs",
            f"http://{STORE_ADDRESS}:{store_port}",
            wheels=wheels,
        )
        script = bootstrap.render("farm-worker-1", "one-time-password", urls)
        assert "--no-index --no-deps --require-hashes" in script
        venv = f"{DEFAULT_WORKER_HOME}/venv"
        # The production script as it is, then what the worker's steps would run from its venv, then what
        # makes it a worker image.
        user_data = (
            f"#!/bin/sh\ncat > /root/bootstrap <<'EOF_BOOTSTRAP'\n{script}EOF_BOOTSTRAP\n"
            'sh /root/bootstrap; echo "bootstrap exited with status $?"\n'
            f"{venv}/bin/farm-worker --help | head -n 1\n"
            f"{WORKER_IMAGE_CHECKS}"
        )
        server_id, console = _boot(compute, connection, "farm-worker-1", user_data)
        print("\n".join(line for line in console.splitlines() if "cloud-metadata: user-data" in line))
        yield BootedWorker(server_id, console, venv)


@pytest.mark.slow
def test_the_worker_image_boots_as_a_server_and_runs_its_user_data(
    booted: BootedWorker, image: WorkerImage
) -> None:
    console = booted.console
    assert f"Linux version {image.kernel_release}" in console
    assert "cloud-metadata: hostname set to farm-worker-1" in console
    assert "cloud-metadata: SSH key installed for ec2-user" in console
    assert f"cloud-metadata: user-data: {MARKER}" in console, console[-3000:]
    assert "cloud-metadata: user-data: pip 23.0.1 from /var/tmp/venv/" in console
    for command in ("qemu-img --version", "git --version"):
        assert f"cloud-metadata: user-data: {VERSION_COMMANDS[command]}" in console, command
    assert "cloud-metadata: user-data exited with status 0" in console


@pytest.mark.slow
def test_the_production_bootstrap_installs_the_masters_wheels_from_its_store(booted: BootedWorker) -> None:
    console = booted.console
    said = "cloud-metadata: user-data: gentoo-farm: "
    installing = f"installing the master's gentoo-farm {master_version()} for Python 3.11 into {booted.venv}"
    assert said + installing in console, console[-3000:]
    assert "refusing the worker's wheels" not in console
    # Past the install (the script stops at the first failure): the worker created and started.
    assert f"{said}starting buildbot-worker farm-worker-1 for master {MASTER_ADDRESS}" in console
    # The script ends well with no master listening yet: whether the worker connects is the master's to see.
    assert "cloud-metadata: user-data: bootstrap exited with status 0" in console, console[-3000:]
    assert "cloud-metadata: user-data: usage: farm-worker" in console, console[-3000:]


@pytest.mark.slow
def test_a_deleted_server_leaves_no_qemu_and_no_disk(
    cloud: tuple[ComputeStandIn, openstack.connection.Connection], booted: BootedWorker
) -> None:
    compute, connection = cloud
    disk = compute.workdir / "vms" / booted.server_id / "disk.qcow2"
    server = connection.compute.get_server(booted.server_id)
    connection.compute.delete_server(server)
    connection.compute.wait_for_delete(server, wait=60)
    assert _running_qemus(disk) == []
    assert not disk.exists()
    assert compute.servers == {}
