"""From a root to a qcow2 that provably boots: assemble, disk and boot-test, with a real kernel in qemu.

The root is the stand-in stage3 (tests/world/stage3.py), the kernel Debian's linux-image package
made into a vmlinuz tarball by the kernel-package stage, the overlay the project's default recipe.
"""

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests import debian
from tests.imagetest import (
    FARM_WORKER,
    GREETING,
    assemble,
    farm_worker,
    make_overlay,
    make_root,
    results,
    serial_log_printed,
)


@pytest.fixture(scope="module")
def kernel_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    package = debian.download(debian.kernel_image_package())
    output = tmp_path_factory.mktemp("kernel") / "vmlinuz.tar.zst"
    process = farm_worker("kernel-package", package, "--output", output)
    assert process.returncode == 0, process.stderr
    assert results(process)["kernel_initramfs"] is True
    return output


@pytest.mark.slow
def test_stage3_root_with_recipe_and_debian_kernel_boots_and_passes_every_check(
    tmp_path: Path, kernel_tarball: Path
) -> None:
    root = make_root(tmp_path)
    assembled = assemble(root, kernel_tarball, make_overlay(tmp_path))
    assert assembled.returncode == 0, assembled.stderr
    release = results(assembled)["kernel_release"]
    assert (root / "etc/shadow").read_text().startswith("root::")
    group = (root / "etc/group").read_text()
    assert "wheel:x:10:root,ec2-user" in group and "users:x:100:ec2-user" in group
    assert (root / "home/ec2-user").is_dir()
    assert (root / "boot/vmlinuz").readlink() == Path(f"vmlinuz-{release}")
    assert not (root / ".gentoo-farm").exists()

    image = tmp_path / "images" / "gentoo.qcow2"
    disk = farm_worker("disk", root, "--output", image, "--compress")
    assert disk.returncode == 0, disk.stderr
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True).stdout
    )
    assert info["format"] == "qcow2"
    # What publishing checks the upload against, and what the image set records as its kernel.
    assert results(disk)["image_sha512"] == hashlib.sha512(image.read_bytes()).hexdigest()
    assert results(disk)["kernel_release"] == release
    assert sorted(path.name for path in image.parent.iterdir()) == ["gentoo.qcow2"]

    booted = farm_worker("boot-test", image, "--timeout", 180, "--expect", GREETING)
    assert booted.returncode == 0, booted.stdout[-3000:] + booted.stderr
    assert "boot test passed: 8 checks met in order" in booted.stdout
    serial_log = Path(str(results(booted)["boot_test_serial_log"]))
    console = serial_log.read_text()
    assert "SYSLINUX" in console and f"Linux version {release}" in console
    assert "cloud-init: SSH key installed for ec2-user" in console
    assert "SYSLINUX" in serial_log_printed(booted)


@pytest.mark.slow
def test_image_that_does_not_boot_fails_naming_the_check_and_keeps_the_serial_log(
    tmp_path: Path, kernel_tarball: Path
) -> None:
    def drop_initramfs(tree: Path) -> None:
        conf = tree / "boot/extlinux.conf"
        conf.write_text("".join(line for line in conf.read_text().splitlines(True) if "INITRD" not in line))

    root = make_root(tmp_path)
    assert assemble(root, kernel_tarball, make_overlay(tmp_path, drop_initramfs)).returncode == 0
    image = tmp_path / "broken.qcow2"
    assert farm_worker("disk", root, "--output", image, "--no-compress").returncode == 0

    booted = farm_worker("boot-test", image, "--timeout", 120)
    assert booted.returncode == 1
    assert "Traceback" not in booted.stderr
    error = booted.stderr.strip().splitlines()[0]
    assert error.startswith(
        "farm-worker boot-test: error: boot test failed: the init reaching the default runlevel"
    )
    assert "the kernel panicked" in error
    assert "VFS: Unable to mount root fs" in serial_log_printed(booted)
    assert str(tmp_path / "broken.qcow2.serial.log") in error


def test_overlay_without_extlinux_conf_fails_assembly_clearly(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    kernel = tmp_path / "vmlinuz.tar.gz"
    with tarfile.open(kernel, "w:gz") as archive:
        for name, data in (
            ("boot/vmlinuz-6.1.0-test", b"kernel"),
            ("boot/config-6.1.0-test", b"CONFIG_X=y\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    overlay = make_overlay(tmp_path, lambda tree: (tree / "boot/extlinux.conf").unlink())

    process = assemble(root, kernel, overlay)
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert f"{overlay}: the overlay has no /boot/extlinux.conf" in process.stderr


def test_disk_refuses_a_sparse_file_under_boot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    with (root / "boot/vmlinuz-6.1.0-test").open("wb") as kernel:
        kernel.truncate(4 * 1024 * 1024)
    (root / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-test")

    process = farm_worker("disk", root, "--output", tmp_path / "out.qcow2")
    assert process.returncode == 1
    assert f"sparse files under /boot ({root}/boot/vmlinuz-6.1.0-test)" in process.stderr
    assert not (tmp_path / "out.qcow2").exists()


def test_disk_without_a_loop_device_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(b"kernel")
    (root / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-test")

    # A worker whose /dev has no loop devices (a container, say): a private /dev with only /dev/null.
    hide_loop_devices = 'mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && exec "$@"'
    disk = [FARM_WORKER, "disk", str(root), "--output", str(tmp_path / "o.qcow2")]
    process = subprocess.run(
        ["unshare", "--mount", "sh", "-c", hide_loop_devices, "sh", *disk],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "no loop device available" in process.stderr
    assert not (tmp_path / "o.raw").exists()


@pytest.mark.slow
def test_stand_in_stage3_needs_the_recipe_empty_fstab_to_reach_the_default_runlevel(
    tmp_path: Path, kernel_tarball: Path
) -> None:
    root = make_root(tmp_path)
    overlay = make_overlay(tmp_path, lambda tree: (tree / "etc/fstab").unlink())
    assert assemble(root, kernel_tarball, overlay).returncode == 0
    image = tmp_path / "stage3-fstab.qcow2"
    assert farm_worker("disk", root, "--output", image, "--no-compress").returncode == 0

    booted = farm_worker("boot-test", image, "--timeout", 300)
    assert booted.returncode == 1
    assert "boot test failed: the init reaching the default runlevel" in booted.stderr
    assert "the boot dropped to the maintenance login (sulogin)" in booted.stderr
    console = serial_log_printed(booted)
    assert "fsck.ext3: No such file or directory while trying to open /dev/ROOT" in console
    assert "INIT: the boot runlevel failed" in console


def test_a_stopped_disk_stage_unmounts_and_detaches_its_loop_device(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(b"kernel")
    (root / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-test")
    # Enough to copy that the stop comes while the filesystem is mounted.
    with (root / "payload").open("wb") as payload:
        for _ in range(400):
            payload.write(os.urandom(1024 * 1024))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # As buildbot-worker runs a command: its own process group, which a stop signals as a whole.
    stage = subprocess.Popen(
        [FARM_WORKER, "disk", str(root), "--output", str(tmp_path / "out.qcow2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
        process_group=0,
    )
    for line in stage.stdout:
        if line.startswith("copying"):
            break
    os.killpg(stage.pid, signal.SIGTERM)
    _, stderr = stage.communicate(timeout=60)

    assert stage.returncode == 128 + signal.SIGTERM, stderr
    assert "farm-worker disk: stopped (SIGTERM), cleaned up" in stderr
    assert str(scratch) not in Path("/proc/self/mounts").read_text()
    attached = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True, text=True
    )
    assert str(tmp_path) not in attached.stdout
    assert not (tmp_path / "out.raw").exists()
