"""The overlay stage: the recipe's modifications as a reproducible vmoverride tarball."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gentoo_farm.stageprotocol import RESULT_MARKER
from gentoo_farm.workers.toolkit.stages.overlay import FIXED_MTIME
from gentoo_farm.workers.toolkit.vmoverride import EDITS_MEMBER

DEFAULT_OVERLAY = Path(__file__).parent.parent / "gentoo_farm" / "defaults" / "overlay"
FARM_WORKER = str(Path(sys.executable).parent / "farm-worker")


def build_overlay(overlay: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FARM_WORKER, "overlay", str(overlay), "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
    )


def input_key(overlay: Path) -> str:
    """The overlay builder's input key: ``farm-worker input-key`` of the tree and overlay.toml."""
    process = subprocess.run(
        [
            FARM_WORKER,
            "input-key",
            "--kind",
            "overlay",
            "--file",
            overlay / "root",
            "--file",
            overlay / "overlay.toml",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(results(process)["input_key"])


def results(process: subprocess.CompletedProcess[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            values.update(json.loads(line[len(RESULT_MARKER) :]))
    return values


def copy_overlay(destination: Path) -> Path:
    shutil.copytree(DEFAULT_OVERLAY, destination)
    return destination


def test_same_tree_gives_same_bytes_and_key_wherever_and_whenever_it_was_checked_out(tmp_path: Path) -> None:
    first = copy_overlay(tmp_path / "checkout-a" / "overlay")
    second = copy_overlay(tmp_path / "elsewhere" / "b")
    for path in second.rglob("*"):
        os.utime(path, (1_800_000_000, 1_800_000_000), follow_symlinks=False)

    one = build_overlay(first, tmp_path / "one.tar.gz")
    two = build_overlay(second, tmp_path / "two.tar.gz")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    assert input_key(first) == input_key(second)
    expected = hashlib.sha512((tmp_path / "one.tar.gz").read_bytes()).hexdigest()
    assert results(one)["overlay_sha512"] == expected
    assert (tmp_path / "one.tar.gz.sha512").read_text() == f"{expected}  one.tar.gz\n"

    (second / "root/etc/fstab").write_text("# changed\n")
    three = build_overlay(second, tmp_path / "three.tar.gz")
    assert results(three)["overlay_sha512"] != expected
    assert input_key(second) != input_key(first)


def test_tarball_is_sorted_root_owned_with_one_mtime_and_carries_the_recipe(tmp_path: Path) -> None:
    process = build_overlay(DEFAULT_OVERLAY, tmp_path / "vmoverride.tar.gz")
    assert process.returncode == 0, process.stderr
    with tarfile.open(tmp_path / "vmoverride.tar.gz") as archive:
        members = archive.getmembers()
        names = [member.name for member in members if member.name.split("/")[0] != ".gentoo-farm"]
        assert names == sorted(names)
        assert {(member.uid, member.gid, member.uname, member.gname) for member in members} == {
            (0, 0, "", "")
        }
        assert {member.mtime for member in members} == {FIXED_MTIME}
        by_name = {member.name: member for member in members}
        fstab = archive.extractfile("etc/fstab").read().decode()
        inittab = archive.extractfile("etc/inittab").read().decode()
        extlinux = archive.extractfile("boot/extlinux.conf").read().decode()
        edits = archive.extractfile(EDITS_MEMBER).read().decode()

    assert [line for line in fstab.splitlines() if line.strip() and not line.startswith("#")] == []
    assert "s0:12345:respawn:/sbin/agetty -L 9600 ttyS0 vt100" in inittab.splitlines()
    assert "SERIAL 0" in extlinux and "root=/dev/vda1" in extlinux and "console=ttyS0" in extlinux
    # udev keeps the kernel's eth0, the interface net.eth0 and conf.d/net's config_eth0 name.
    assert "net.ifnames=0" in extlinux
    assert by_name["etc/init.d/net.eth0"].issym() and by_name["etc/init.d/net.eth0"].linkname == "net.lo"
    for service in ("sshd", "net.eth0", "cloud-metadata"):
        assert by_name[f"etc/runlevels/default/{service}"].linkname == f"/etc/init.d/{service}"
    assert by_name["etc/init.d/cloud-metadata"].mode == 0o755
    assert by_name["etc/fstab"].mode == 0o644
    assert '"root": ""' in edits


@pytest.mark.parametrize(
    ("manifest", "complaint"),
    [
        ('[modes]\n"etc/fstab" = "rwx"\n', "[modes] 'etc/fstab': 'rwx' is not an octal mode"),
        ('[modes]\n"etc/nothing-here" = "0600"\n', "[modes] 'etc/nothing-here': no such file"),
        ('[symlinks]\n"/etc/init.d/net.eth1" = "net.lo"\n', "expected a path relative to the image root"),
        ('[symlinks]\n"etc/fstab" = "/dev/null"\n', "[symlinks] 'etc/fstab'"),
        ("[owners]\nroot = 0\n", "unknown section(s) owners"),
        ("[passwords\n", "not valid TOML"),
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "not valid TOML: arrays or tables nested too deeply"),
        ('[passwords]\n"root\\nadmin" = ""\n', "[passwords] 'root\\nadmin': not a user name"),
        ('[passwords]\n"root admin" = ""\n', "[passwords] 'root admin': not a user name"),
        ('[passwords]\n"-root" = ""\n', "[passwords] '-root': not a user name"),
        ('[passwords]\nroot = "$6$x:y"\n', "[passwords] 'root': a password hash cannot hold ':'"),
    ],
)
def test_manifest_mistakes_name_the_file_section_and_key(
    tmp_path: Path, manifest: str, complaint: str
) -> None:
    overlay = copy_overlay(tmp_path / "overlay")
    (overlay / "overlay.toml").write_text(manifest)
    process = build_overlay(overlay, tmp_path / "out.tar.gz")
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert f"{overlay / 'overlay.toml'}" in process.stderr
    assert complaint in process.stderr
    assert not (tmp_path / "out.tar.gz").exists()


def test_overlay_without_its_tree_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "overlay").mkdir()
    process = build_overlay(tmp_path / "overlay", tmp_path / "out.tar.gz")
    assert process.returncode == 1
    assert "an overlay needs a root/ directory" in process.stderr
