"""The cloud user becomes root the configured way ([image] admin); root's own login stays the overlay's
(issue 16). The boot check, ``sudo -n id -u`` over SSH as the cloud user, is in test_disk_boot."""

import os
import re
import stat
from pathlib import Path

import pytest

from gentoo_farm.config import FarmConfigError, parse_config
from tests.imagetest import assemble, make_overlay, make_root
from tests.test_hostile_inputs import kernel_tarball

SUDOERS = "etc/sudoers.d/90-cloud-user"


def test_sudo_lets_the_cloud_user_run_anything_as_root_without_a_password(tmp_path: Path) -> None:
    root = make_root(tmp_path)

    assembled = assemble(root, kernel_tarball(tmp_path), make_overlay(tmp_path))

    assert assembled.returncode == 0, assembled.stderr
    sudoers = root / SUDOERS
    assert sudoers.read_text().splitlines()[-1] == "ec2-user ALL=(ALL) NOPASSWD: ALL"
    status = sudoers.lstat()
    assert (stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid) == (0o440, 0, 0)
    # Root's account is the overlay's: its password removed for the console, nothing else.
    assert (root / "etc/shadow").read_text().startswith("root::")


def test_an_overlays_own_sudoers_file_gets_the_mode_and_owner_sudo_requires(tmp_path: Path) -> None:
    def add_loose_sudoers(tree: Path) -> None:
        (tree / "etc/sudoers.d").mkdir()
        (tree / "etc/sudoers.d/90-cloud-user").write_text("# the overlay's\n")

    root = make_root(tmp_path)
    assembled = assemble(root, kernel_tarball(tmp_path), make_overlay(tmp_path, add_loose_sudoers))

    assert assembled.returncode == 0, assembled.stderr
    assert stat.S_IMODE((root / SUDOERS).stat().st_mode) == 0o440
    assert "NOPASSWD: ALL" in (root / SUDOERS).read_text()


def test_admin_none_writes_no_sudoers_file(tmp_path: Path) -> None:
    root = make_root(tmp_path)

    assembled = assemble(root, kernel_tarball(tmp_path), make_overlay(tmp_path), "--admin", "none")

    assert assembled.returncode == 0, assembled.stderr
    assert not (root / SUDOERS).exists()
    assert "may run any command as root" not in assembled.stdout


def test_sudo_without_the_sudo_program_in_the_image_fails_and_says_why(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    os.unlink(root / "usr/bin/sudo")

    assembled = assemble(root, kernel_tarball(tmp_path), make_overlay(tmp_path))

    assert assembled.returncode != 0
    assert 'admin = "sudo", but the image has no /usr/bin/sudo' in assembled.stderr
    assert not (root / SUDOERS).exists()


def test_farm_toml_admin_takes_sudo_or_none_and_sudo_adds_the_package(tmp_path: Path) -> None:
    default = parse_config('[farm]\nid = "x"\n', tmp_path).image
    assert (default.admin, default.emerged_packages[-1]) == ("sudo", "app-admin/sudo")
    without = parse_config('[farm]\nid = "x"\n[image]\nadmin = "none"\n', tmp_path).image
    assert without.emerged_packages == without.packages
    with pytest.raises(
        FarmConfigError,
        match=re.escape("farm.toml:4: image.admin = \"doas\": expected one of 'sudo', 'none'"),
    ):
        parse_config('[farm]\nid = "x"\n[image]\nadmin = "doas"\n', tmp_path)
