"""The worker image boots as a server of the Compute stand-in (qemu mode) and runs its user-data.

The image is tests/workerimage.py's (the world's stage3, the worker packages, Debian's kernel, the
default overlay; cached per machine). A server is created through openstacksdk against the stand-in
behind the real test Keystone; its user-data shows that the image is a worker image (a venv, qemu-img,
git), and what it printed comes back through the API's console-output, as a cloud shows it.
"""

import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import openstack
import pytest

from gentoo_farm import qemuboot
from tests.services.compute import ComputeStandIn
from tests.services.keystone import Keystone, keystone  # noqa: F401  (session fixture)
from tests.test_world_worker_packages import VERSION_COMMANDS
from tests.workerimage import WorkerImage, worker_image

CLOUD = "worker-image-cloud"
IMAGE_ID = "farm-worker-latest"
MARKER = "worker image user-data done"
USER_DATA = f"""#!/bin/sh
set -e
python3 -m venv /var/tmp/venv
/var/tmp/venv/bin/python -m pip --version
qemu-img --version
git --version
echo '{MARKER}'
"""
BOOT_TIMEOUT = 900


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


@pytest.fixture
def cloud(
    keystone: Keystone,  # noqa: F811
    image: WorkerImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[ComputeStandIn, openstack.connection.Connection]]:
    compute = ComputeStandIn(keystone, tmp_path / "compute", images={IMAGE_ID: image.path})
    compute.start()
    _, public_key = qemuboot.new_key(tmp_path)
    compute.keypairs["farm-key"] = {"name": "farm-key", "public_key": public_key, "fingerprint": "x"}
    keystone.register_service("compute", "nova", compute.url)
    clouds = keystone.write_clouds_yaml(tmp_path / "clouds.yaml", cloud=CLOUD, username="demo")
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


@pytest.mark.slow
def test_the_worker_image_boots_as_a_server_and_runs_its_user_data(
    cloud: tuple[ComputeStandIn, openstack.connection.Connection], image: WorkerImage
) -> None:
    compute, connection = cloud
    started = time.monotonic()
    server = connection.compute.create_server(
        name="farm-worker-1",
        image_id=IMAGE_ID,
        flavor_id="1",
        key_name="farm-key",
        user_data=base64.b64encode(USER_DATA.encode()).decode("ascii"),
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
    done = time.monotonic() - started
    print(f"worker image: from create to the user-data done: {done:.0f} s")

    assert f"Linux version {image.kernel_release}" in console
    assert "cloud-metadata: hostname set to farm-worker-1" in console
    assert "cloud-metadata: SSH key installed for ec2-user" in console
    assert f"cloud-metadata: user-data: {MARKER}" in console, console[-3000:]
    assert "cloud-metadata: user-data: pip 23.0.1 from /var/tmp/venv/" in console
    for command in ("qemu-img --version", "git --version"):
        assert f"cloud-metadata: user-data: {VERSION_COMMANDS[command]}" in console, command
    assert "cloud-metadata: user-data exited with status 0" in console

    connection.compute.delete_server(server.id)
    connection.compute.wait_for_delete(server, wait=60)
    assert _running_qemus(disk) == []
    assert not disk.exists()
    assert compute.servers == {}
