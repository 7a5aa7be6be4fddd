"""The boot test's config drive is made by genisoimage, as Nova makes it, or by cdrtools' mkisofs on a
worker that has only that (a Gentoo worker image: app-cdr/cdrtools installs no genisoimage)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.stages.boottest import Instance, config_drive, required_tools
from tests.imagetest import FARM_WORKER

INSTANCE = Instance("farm-boot-test", "4c1e0f9c-1d7e-4a43-9a4e-2b0d8a6f3c11", "ssh-ed25519 AAAA test", "ran")


def path_with(tmp_path: Path, **tools: str) -> str:
    """A PATH whose only tools are ``{name: the real program it runs}``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, program in tools.items():
        (bin_dir / name).symlink_to(program)
    return str(bin_dir)


def iso_files(iso: Path) -> dict[str, str]:
    """What the ISO holds under openstack/latest/, read with the ISO tools' own lister (isoinfo)."""
    listed = subprocess.run(
        ["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True, check=True
    )
    names = [name for name in listed.stdout.split() if name.startswith("/openstack/latest/")]
    return {
        name: subprocess.run(
            ["isoinfo", "-R", "-x", name, "-i", str(iso)], capture_output=True, text=True, check=True
        ).stdout
        for name in names
    }


@pytest.mark.parametrize("maker", ["genisoimage", "mkisofs"])
def test_the_config_drive_is_made_by_whichever_iso_tool_the_worker_has(
    maker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    genisoimage = shutil.which("genisoimage")
    assert genisoimage, "scripts/setup installs genisoimage"
    monkeypatch.setenv("PATH", path_with(tmp_path, **{maker: genisoimage}))

    iso = config_drive(INSTANCE, tmp_path)

    monkeypatch.setenv("PATH", os.defpath)
    files = iso_files(iso)
    assert json.loads(files["/openstack/latest/meta_data.json"])["uuid"] == INSTANCE.instance_id
    assert files["/openstack/latest/user_data"] == INSTANCE.user_data()


def test_without_either_tool_the_stage_names_both(tmp_path: Path) -> None:
    others = [tool for (tool,) in required_tools("none")]
    image = tmp_path / "gentoo.qcow2"
    image.write_bytes(b"")
    environment = {
        **os.environ,
        "PATH": path_with(tmp_path, **{tool: str(shutil.which(tool)) for tool in others}),
    }

    stage = subprocess.run(
        [FARM_WORKER, "boot-test", str(image), "--metadata", "config-drive"],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )  # fmt: skip

    assert stage.returncode != 0
    assert "genisoimage or mkisofs is not installed on this worker (the boot test needs it)" in stage.stderr


def test_a_failing_iso_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_with(tmp_path, mkisofs=shutil.which("false") or "/bin/false"))
    with pytest.raises(StageError, match="mkisofs could not make the config drive"):
        config_drive(INSTANCE, tmp_path)
