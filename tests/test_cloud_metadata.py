"""The image's /etc/init.d/cloud-metadata, function by function, under busybox and under bash + awk.

The boot tests show the service at work in a booted image; these run its JSON reading and its
once-per-instance rule directly, with both shells and awks an image may have (busybox's in the
stand-in, bash and another awk on a real Gentoo), in milliseconds.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.imagetest import DEFAULT_OVERLAY

SERVICE = DEFAULT_OVERLAY / "root/etc/init.d/cloud-metadata"
KEYS = {
    "laptop": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG4rT3vTt99Ox5kndS1HH5D2Y2k0VoJNd2bZ9a3o farm@laptop",
    "ci": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7+/w== ci@build/1",
}


@pytest.fixture(params=["busybox", "bash"])
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """A command that sources the service and evaluates its last argument: under busybox's sh with
    only busybox's tools on PATH, or under bash with the host's tools (another awk, sed...)."""
    source_and_eval = f'. "{SERVICE}"; eval "$1"'
    if request.param == "bash":
        return ["bash", "-c", source_and_eval, "bash"]
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed (scripts/setup installs it)"
    tools = tmp_path / "busybox-bin"
    tools.mkdir()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        (tools / applet).symlink_to(busybox)
    return [busybox, "sh", "-c", f"PATH={tools}; {source_and_eval}", "sh"]


def run_service_function(shell: list[str], code: str) -> str:
    process = subprocess.run([*shell, code], capture_output=True, text=True, check=False)
    assert process.returncode == 0, process.stderr
    return process.stdout


def test_reads_the_keys_hostname_and_uuid_of_novas_meta_data_json(shell: list[str], tmp_path: Path) -> None:
    meta_data = tmp_path / "meta_data.json"
    document = {
        "uuid": "83679162-1378-4288-a2d4-70e13ec132aa",
        "public_keys": {name: key + "\n" for name, key in KEYS.items()},
        "keys": [{"name": name, "type": "ssh", "data": key + "\n"} for name, key in KEYS.items()],
        "hostname": "web-1.novalocal",
        "name": "web-1",
        "launch_index": 0,
        "availability_zone": "nova",
        "devices": [],
    }
    # What a JSON writer that escapes slashes gives (PHP, some Go clouds): the keys' "/" survive.
    meta_data.write_text(json.dumps(document, indent=1).replace("/", "\\/"))

    keys = run_service_function(shell, f"json_public_keys {meta_data}")
    hostname = run_service_function(shell, f"json_string hostname {meta_data}")
    instance_id = run_service_function(shell, f"json_string uuid {meta_data}")

    assert keys.splitlines() == list(KEYS.values())
    assert hostname == "web-1.novalocal\n"
    assert instance_id == "83679162-1378-4288-a2d4-70e13ec132aa\n"


def test_user_data_runs_once_per_instance_and_only_when_it_is_a_script(
    shell: list[str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    (state / "source").mkdir(parents=True)
    counter = tmp_path / "runs"
    script = f"#!/bin/sh\necho ran >> {counter}\necho 'hello from user-data'\n"
    (state / "source/user-data").write_text(script)
    # The service's own state directory and console are the image's; here they are the test's.
    prelude = f'state_dir={state}; say() {{ echo "$*"; }}; '

    first = run_service_function(shell, prelude + "instance_id=i-1; run_user_data")
    again = run_service_function(shell, prelude + "instance_id=i-1; run_user_data")
    new_instance = run_service_function(shell, prelude + "instance_id=i-2; run_user_data")

    assert first.splitlines() == [
        "running user-data for instance i-1",
        "user-data: hello from user-data",
        "user-data exited with status 0",
    ]
    assert again == "user-data already ran for instance i-1\n"
    assert new_instance.startswith("running user-data for instance i-2\n")
    assert counter.read_text() == "ran\nran\n"

    (state / "source/user-data").write_text("#cloud-config\npackages: [vim]\n")
    skipped = run_service_function(shell, prelude + "instance_id=i-3; run_user_data")
    assert skipped == "user-data is not a script (no #! line): not run\n"
    assert counter.read_text() == "ran\nran\n"
