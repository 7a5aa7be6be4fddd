"""Helpers of the image tests: run toolkit stages as a user would, make roots and overlays."""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gentoo_farm.stageprotocol import RESULT_MARKER, SERIAL_LOG_END, SERIAL_LOG_MARKER
from tests import cache, debian
from tests.world.repository import lay_out_sudo
from tests.world.stage3 import populate_stage3_root

DEFAULT_OVERLAY = Path(__file__).parent.parent / "gentoo_farm" / "defaults" / "overlay"
FARM_WORKER = str(Path(sys.executable).parent / "farm-worker")
GREETING = "greeting: emerged package runs"
# Where the greeting package's local.d script also writes its line: proof that it ran.
GREETING_LOG = "/var/tmp/greeting.log"


def farm_worker(*arguments: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FARM_WORKER, *(str(argument) for argument in arguments)], capture_output=True, text=True, check=False
    )


def results(process: subprocess.CompletedProcess[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            values.update(json.loads(line[len(RESULT_MARKER) :]))
    return values


def make_overlay(tmp_path: Path, change: Callable[[Path], object] | None = None) -> Path:
    overlay = tmp_path / "overlay"
    shutil.copytree(DEFAULT_OVERLAY, overlay)
    if change is not None:
        change(overlay / "root")
    output = tmp_path / "vmoverride.tar.gz"
    process = farm_worker("overlay", overlay, "--output", output)
    assert process.returncode == 0, process.stderr
    return output


def install_dhcpcd(root: Path) -> None:
    """What emerging net-misc/dhcpcd leaves in a root: Debian's real dhcpcd, at Gentoo's /sbin/dhcpcd
    (the path netifrc's net.lo runs), and a vdb entry. A stage3 has no DHCP client of its own."""
    debian.extract(debian.download("dhcpcd-base"), root)
    (root / "sbin/dhcpcd").symlink_to("../usr/sbin/dhcpcd")
    vdb = root / "var/db/pkg/net-misc/dhcpcd-9.4.1"
    vdb.mkdir(parents=True)
    (vdb / "SLOT").write_text("0\n")


def make_root(tmp_path: Path) -> Path:
    """The stand-in stage3 plus "emerged" packages: dhcpcd (the image's package set has it), sudo (the
    farm adds app-admin/sudo for [image] admin = "sudo"; laid out as the world's ebuild installs it), and
    greeting: the ``greeting`` command and a local.d script that runs it at boot, printing its line
    and writing it to GREETING_LOG.

    A copy (owners, modes, links and attributes kept) of one root per machine in the test cache, keyed by
    the code that makes it: filling a root from Debian's packages takes seconds, copying it a fraction.
    """
    world = Path(__file__).parent / "world"
    key = cache.source_hash([world, Path(__file__), Path(debian.__file__)])
    template = cache.entry("image-root", key, _fill_root)
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", "--", str(template), str(root)], check=True)
    return root


def _fill_root(root: Path) -> None:
    populate_stage3_root(root)
    install_dhcpcd(root)
    lay_out_sudo(root)
    vdb = root / "var/db/pkg/app-misc/greeting-1.2-r1"
    vdb.mkdir(parents=True)
    (vdb / "SLOT").write_text("0\n")
    for path, text in (
        ("usr/bin/greeting", f"#!/bin/sh\necho '{GREETING}'\n"),
        ("etc/local.d/60-greeting.start", f"#!/bin/sh\n/usr/bin/greeting | tee {GREETING_LOG}\n"),
    ):
        (root / path).write_text(text)
        (root / path).chmod(0o755)


def assemble(root: Path, kernel: Path, overlay: Path, *options: object) -> subprocess.CompletedProcess[str]:
    return farm_worker("assemble", root, "--vmlinuz", kernel, "--overlay", overlay, *options)


def serial_log_printed(process: subprocess.CompletedProcess[str]) -> str:
    start = process.stdout.index(SERIAL_LOG_MARKER)
    return process.stdout[start : process.stdout.index(SERIAL_LOG_END)]
