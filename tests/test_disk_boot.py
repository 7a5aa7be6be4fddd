"""From a root to a qcow2 that provably boots: assemble, disk and boot-test, with a real kernel in qemu.

The root is the stand-in stage3 (tests/world/stage3.py), the kernel Debian's linux-image package
made into a vmlinuz tarball by the kernel-package stage, the overlay the project's default recipe.

Each qemu boot under TCG costs a minute or more, so tests that can look at the same booted guest share
it; a separate boot is kept only where the image or the way it gets its metadata differs:

- ``booted``: the recipe's image, its extlinux installed in the bootloader VM, booted against the
  metadata service on a disk grown to 4 GiB. Its tests: the cloud user logs in over SSH (hostname,
  user-data, key for the cloud user only, root grown, ``uname -r``, the greeting command,
  ``sudo -n id -u`` printing 0, root refused, the console's lines), local.d's output stays off the
  console, and an image whose bootloader was installed in a VM boots.
- ``without_fixes``: the stand-in stage3's own fstab and no sshd drop-in (two of the recipe's fixes
  undone), against the metadata service. Its tests: root logs in with the key without the drop-in (the
  check sees it, after every check before it passed), and fsck fails on the stage3's fstab placeholders.
- ``loop_image`` (the recipe's image, extlinux installed on a loop device), built once and booted twice:
  with the config drive alone (``config_drive_boot``), and with neither metadata service nor config
  drive (``no_metadata_boot``). The two boots' SSH host key fingerprints differ: each instance made its
  own (issue 16). That the image holds no host key to begin with is tests/test_instance_identity.py's
  (assembly removes them) and the pipeline test's (debugfs lists the published qcow2's /etc/ssh).
- an image without an initramfs, booted once: it must not boot.
"""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gentoo_farm.workers.toolkit.stages.boottest import MIB
from gentoo_farm.workers.toolkit.stages.disk import PARTITION_OFFSET, holes_under_boot
from tests import debian
from tests.imagetest import (
    FARM_WORKER,
    GREETING,
    GREETING_LOG,
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


@dataclass(frozen=True)
class Booted:
    root: Path
    release: str
    disk: subprocess.CompletedProcess[str]
    process: subprocess.CompletedProcess[str]
    console: str


@dataclass(frozen=True)
class Built:
    root: Path
    image: Path
    release: str
    disk: subprocess.CompletedProcess[str]


def build_image(
    tmp_path: Path,
    kernel: Path,
    change: Callable[[Path], object] | None = None,
    compress: bool = False,
    bootloader: str = "auto",
) -> Built:
    """The stand-in stage3 with the (changed) default overlay and ``kernel``, as a qcow2."""
    root = make_root(tmp_path)
    assembled = assemble(root, kernel, make_overlay(tmp_path, change))
    assert assembled.returncode == 0, assembled.stderr
    image = tmp_path / "images" / "gentoo.qcow2"
    disk = farm_worker(
        "disk",
        root,
        "--output",
        image,
        "--compress" if compress else "--no-compress",
        "--bootloader",
        bootloader,
    )
    assert disk.returncode == 0, disk.stderr
    return Built(root, image, str(results(assembled)["kernel_release"]), disk)


def boot_test(image: Path, *options: object) -> tuple[subprocess.CompletedProcess[str], str]:
    """``farm-worker boot-test`` on ``image``: the process and the serial console it logged."""
    booted = farm_worker("boot-test", image, "--timeout", 300, *options)
    serial_log = results(booted).get("boot_test_serial_log")
    return booted, Path(str(serial_log)).read_text(errors="replace") if serial_log else ""


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory, kernel_tarball: Path) -> Booted:
    """The recipe's image booted once against the metadata service, with every check the farm runs.

    Its extlinux is installed in the bootloader VM (what an unprivileged worker does): this one boot
    also shows that such an image boots. The config drive's boot below is of an image whose extlinux
    went in on a loop device. Its root has sudo as the world's app-admin/sudo installs it (make_root: the
    farm emerges it for [image] admin = "sudo"), so the cloud user's ``sudo -n id -u`` runs the real
    sudo through the stand-in stage3's PAM and the sudoers file assembly wrote."""
    built = build_image(tmp_path_factory.mktemp("booted"), kernel_tarball, compress=True, bootloader="vm")
    image, release = built.image, built.release
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True).stdout
    )
    assert info["format"] == "qcow2"
    # The default compression: these boots show that a zstd-compressed qcow2 boots.
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    # What publishing checks the upload against, and what the image set records as its kernel.
    assert results(built.disk)["image_sha512"] == hashlib.sha512(image.read_bytes()).hexdigest()
    assert results(built.disk)["kernel_release"] == release
    # What the build-disk step's status line gives: the qcow2's size and the disk's.
    assert results(built.disk)["image_bytes"] == image.stat().st_size
    assert results(built.disk)["disk_bytes"] == info["virtual-size"]
    assert sorted(path.name for path in image.parent.iterdir()) == ["gentoo.qcow2"]
    process, console = boot_test(
        image,
        # The image's disk grown to about 4 GiB, as a cloud flavor's is.
        "--grow-disk",
        str(4096 - info["virtual-size"] // MIB),
        "--kernel-release",
        release,
        "--expect-command",
        "greeting",
        "--expect-command",
        f"grep -qxF '{GREETING}' {GREETING_LOG}",
        "--expect-command",
        "sudo -n id -u",
    )
    return Booted(built.root, release, built.disk, process, console)


@pytest.mark.slow
def test_recipe_image_boots_and_the_cloud_user_logs_in_over_ssh(booted: Booted) -> None:
    root = booted.root
    assert (root / "etc/shadow").read_text().startswith("root::")
    group = (root / "etc/group").read_text()
    assert "wheel:x:10:root,ec2-user" in group and "users:x:100:ec2-user" in group
    assert (root / "home/ec2-user").is_dir()
    assert (root / "boot/vmlinuz").readlink() == Path(f"vmlinuz-{booted.release}")
    assert not (root / ".gentoo-farm").exists()

    process = booted.process
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr
    for check in (
        "an SSH login as ec2-user with the key from the metadata service",
        "the hostname 'farm-boot-test' from the metadata service",
        "the user-data from the metadata service having run",
        "the key installed for the cloud user only",
        "the root filesystem grown beyond the image's",
        f"the kernel release {booted.release}",
        "the command 'greeting'",
        "the command 'sudo -n id -u'",
        "root's SSH login being refused",
    ):
        assert f"checking {check}" in process.stdout
    assert f"greeting: status 0\n{GREETING}" in process.stdout
    # The cloud user is root through sudo, without a password (the output's stdout line, then sudo's
    # warnings, if any, on stderr); root itself is refused over SSH (the check above).
    assert re.search(r"^sudo -n id -u: status 0\n0$", process.stdout, re.MULTILINE), process.stdout[-3000:]
    assert (root / "etc/sudoers.d/90-cloud-user").read_text().endswith("ec2-user ALL=(ALL) NOPASSWD: ALL\n")
    grown = re.search(r"the root filesystem holds (\d+) MiB", process.stdout)
    assert grown and int(grown[1]) > 3800, process.stdout[-3000:]
    assert "boot test passed" in process.stdout
    # The boot-test step's status line: how long the image took from power-on to the SSH login.
    assert results(process)["boot_test_login_seconds"] in range(1, 301)
    console = booted.console
    assert "SYSLINUX" in console and f"Linux version {booted.release}" in console
    assert "net.ifnames=0" in console
    assert "/dev/ROOT" not in console  # the recipe's empty fstab: fsck has nothing to fail on
    assert "cloud-metadata: SSH key installed for ec2-user" in console
    assert "cloud-metadata: user-data: farm-boot-test: user-data ran" in console
    assert "growroot: growing /dev/vda1 to the end of /dev/vda" in console
    assert "SYSLINUX" in serial_log_printed(process)


@pytest.mark.slow
def test_local_d_output_does_not_reach_the_console_but_the_script_runs(booted: Booted) -> None:
    # The greeting's local.d script ran (the boot test's `grep` of its log succeeded over SSH), yet
    # OpenRC's local service sent what it printed to /dev/null: nothing may rely on that output.
    assert booted.process.returncode == 0, booted.process.stderr
    assert f"checking the command \"grep -qxF '{GREETING}' {GREETING_LOG}\"" in booted.process.stdout
    assert GREETING not in booted.console


def undo_fstab_and_sshd_drop_in(tree: Path) -> None:
    """Two of the recipe's fixes undone: the stage3's fstab placeholders stay, sshd has no drop-in."""
    (tree / "etc/fstab").unlink()
    (tree / "etc/ssh/sshd_config.d/10-gentoo-farm.conf").unlink()


@pytest.fixture(scope="module")
def without_fixes(tmp_path_factory: pytest.TempPathFactory, kernel_tarball: Path) -> Booted:
    """An image without the recipe's empty fstab and sshd drop-in, booted once against the metadata
    service: what each of those fixes prevents shows on this one guest."""
    built = build_image(tmp_path_factory.mktemp("without-fixes"), kernel_tarball, undo_fstab_and_sshd_drop_in)
    process, console = boot_test(built.image)
    return Booted(built.root, built.release, built.disk, process, console)


@pytest.mark.slow
def test_root_login_is_refused_by_the_sshd_drop_in(without_fixes: Booted) -> None:
    # Without the drop-in, sshd's own default (prohibit-password) lets root in with the key that the
    # boot test's user-data gives root: the check sees it.
    process = without_fixes.process
    assert process.returncode == 1
    error = process.stderr.strip().splitlines()[0]
    assert error.startswith(
        "farm-worker boot-test: error: boot test failed: root's SSH login being refused: root logged in"
    ), error


@pytest.fixture(scope="module")
def loop_image(tmp_path_factory: pytest.TempPathFactory, kernel_tarball: Path) -> Built:
    """The recipe's image with extlinux installed on a loop device, built once for the boots that differ
    only in how the instance gets its metadata (each boot runs on a snapshot: the image stays as built)."""
    return build_image(tmp_path_factory.mktemp("loop-image"), kernel_tarball, bootloader="loop")


@pytest.fixture(scope="module")
def config_drive_boot(tmp_path_factory: pytest.TempPathFactory, loop_image: Built) -> Booted:
    """``loop_image`` booted with the config drive alone."""
    process, console = boot_test(
        loop_image.image,
        "--metadata",
        "config-drive",
        "--kernel-release",
        loop_image.release,
        "--grow-disk",
        "0",
        "--serial-log",
        tmp_path_factory.mktemp("config-drive") / "console.log",
    )
    return Booted(loop_image.root, loop_image.release, loop_image.disk, process, console)


@pytest.fixture(scope="module")
def no_metadata_boot(tmp_path_factory: pytest.TempPathFactory, loop_image: Built) -> Booted:
    """``loop_image`` booted with neither metadata service nor config drive."""
    process, console = boot_test(
        loop_image.image,
        "--metadata",
        "none",
        "--serial-log",
        tmp_path_factory.mktemp("no-metadata") / "console.log",
    )
    return Booted(loop_image.root, loop_image.release, loop_image.disk, process, console)


@pytest.mark.slow
def test_config_drive_alone_gives_the_key_hostname_and_user_data(config_drive_boot: Booted) -> None:
    process, console = config_drive_boot.process, config_drive_boot.console
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr
    # What every boot after the first finds: the root already fills the disk, and it is left alone.
    assert "growroot: /dev/vda1 already fills /dev/vda" in console
    assert "resize2fs" not in console
    assert "checking the hostname 'farm-boot-test' from the config drive" in process.stdout
    assert "metadata service: GET" not in process.stdout
    assert "cloud-metadata: reading the config drive /dev/vdb (iso9660)" in console
    assert "cloud-metadata: SSH key installed for ec2-user" in console


@pytest.mark.slow
def test_no_metadata_and_no_config_drive_still_reaches_a_login_prompt(no_metadata_boot: Booted) -> None:
    process, console = no_metadata_boot.process, no_metadata_boot.console
    # The login prompt came and sshd answers: waiting for a metadata service that never answers
    # and looking for a config drive that is not there took its bounded time and no more.
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr
    assert "sshd answers: SSH-2.0-OpenSSH" in process.stdout
    assert (
        "cloud-metadata: no metadata service at http://169.254.169.254 (within 10 s) and no config drive"
        in console
    )
    assert "cloud-metadata: SSH key installed" not in console


@pytest.mark.slow
def test_host_keys_differ_between_the_config_drive_and_no_metadata_boots_of_one_image(
    config_drive_boot: Booted, no_metadata_boot: Booted
) -> None:
    # Both boots ran on snapshots of the same qcow2: had it carried host keys, sshd would offer them
    # on both. Each instance made its own at its first boot instead.
    fingerprints = [
        results(boot.process).get("boot_test_host_keys") for boot in (config_drive_boot, no_metadata_boot)
    ]
    for keys, boot in zip(fingerprints, (config_drive_boot, no_metadata_boot), strict=True):
        assert isinstance(keys, list) and keys, boot.process.stdout[-3000:] + boot.process.stderr
        assert all(key.startswith("SHA256:") for key in keys), keys
    assert not set(fingerprints[0]) & set(fingerprints[1]), fingerprints


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


def write_with_zero_block(path: Path, *, sparse: bool) -> None:
    """Random data, then one 4 KiB-aligned all-zero block (a hole in the file when ``sparse``), then more
    random data: what ``mkfs.ext4 -d`` turns into a hole either way."""
    with path.open("wb") as file:
        file.write(os.urandom(8192))
        if sparse:
            file.seek(4096, os.SEEK_CUR)
        else:
            file.write(bytes(4096))
        file.write(os.urandom(4000))


def boot_blocks(raw: Path, name: str) -> list[str]:
    """The data blocks debugfs lists for ``name`` in the raw disk's partition."""
    listed = subprocess.run(
        ["debugfs", "-R", f"blocks {name}", f"{raw}?offset={PARTITION_OFFSET}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_mkfs_leaves_zero_blocks_as_holes_and_the_check_names_them(tmp_path: Path) -> None:
    # Why the stage rewrites /boot: mkfs.ext4 -d alone leaves the zero block unallocated.
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    write_with_zero_block(root / "boot/vmlinuz-6.1.0-test", sparse=False)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as disk:
        disk.truncate(64 * MIB)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, "-E", f"offset={PARTITION_OFFSET}", raw, "63M"],
        check=True,
    )
    assert len(boot_blocks(raw, "/boot/vmlinuz-6.1.0-test")) == 3
    assert holes_under_boot(root, raw) == ["/boot/vmlinuz-6.1.0-test"]


def test_disk_allocates_every_block_of_a_sparse_kernel(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    write_with_zero_block(root / "boot/vmlinuz-6.1.0-test", sparse=True)
    assert (root / "boot/vmlinuz-6.1.0-test").stat().st_blocks * 512 < 4 * 4096
    (root / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-test")
    raw = tmp_path / "out.raw"

    process = farm_worker(
        "disk", root, "--output", tmp_path / "out.qcow2", "--raw", raw, "--bootloader", "loop"
    )
    assert process.returncode == 0, process.stderr
    assert re.search(r"^installed extlinux on a loop device in \d+\.\d s$", process.stdout, re.MULTILINE)
    # All four blocks allocated: SYSLINUX can load it.
    assert len(boot_blocks(raw, "/boot/vmlinuz-6.1.0-test")) == 4
    assert holes_under_boot(root, raw) == []


@pytest.mark.parametrize(
    ("options", "compression"), [((), "zstd"), (("--compression", "zlib"), "zlib")], ids=["default", "zlib"]
)
def test_disk_writes_the_qcow2_with_the_compression_type_asked_for(
    tmp_path: Path, options: tuple[str, ...], compression: str
) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(os.urandom(4096) + b"kernel" * 100_000)
    (root / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-test")
    image = tmp_path / "out.qcow2"

    process = farm_worker("disk", root, "--output", image, "--bootloader", "loop", *options)
    assert process.returncode == 0, process.stderr
    assert f"converting to qcow2 ({compression}-compressed)" in process.stdout + process.stderr
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True, check=True).stdout
    )
    assert info["format-specific"]["data"]["compression-type"] == compression
    # Compressed indeed: the repeated text takes far less room than on the raw disk.
    assert image.stat().st_size < 1 * MIB
    check = subprocess.run(["qemu-img", "check", image], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_bootloader_vm_that_does_not_finish_fails_the_stage_with_its_console(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\n")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(b"not a kernel")
    (root / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-test")

    process = farm_worker("disk", root, "--output", tmp_path / "out.qcow2", "--bootloader", "vm")
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "installing extlinux in the bootloader VM failed: qemu exited with status 1" in process.stderr
    # qemu refused the kernel before the guest printed anything.
    assert "the console stayed empty" in process.stderr
    assert not (tmp_path / "out.qcow2").exists() and not (tmp_path / "out.raw").exists()


# Who runs the stage, how, and whom the image's files then belong to (the ids the stage sees).
UNPRIVILEGED = {
    "a user": (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], 65534),
    "root of a user namespace": (["unshare", "--user", "--map-root-user"], 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("who", UNPRIVILEGED)
def test_disk_stage_without_privilege_installs_extlinux_in_a_vm(who: str, kernel_tarball: Path) -> None:
    # Neither can attach a loop device nor mount a filesystem: auto takes the VM path. (Root of a user
    # namespace has euid 0 but not the initial namespace's uid_map.)
    run_as, owner = UNPRIVILEGED[who]
    # tmp_path lies under a directory only root may enter, hence a directory of the stage's own.
    scratch = Path(tempfile.mkdtemp(prefix="disk-unprivileged-"))
    try:
        root = scratch / "root"
        root.mkdir()
        subprocess.run(["tar", "-xf", kernel_tarball, "-C", root], check=True)
        (kernel,) = (root / "boot").glob("vmlinuz-*")
        release = kernel.name.removeprefix("vmlinuz-")
        (root / "boot/vmlinuz").symlink_to(f"vmlinuz-{release}")
        (root / "boot/extlinux.conf").write_text("DEFAULT gentoo\nLABEL gentoo\n\tLINUX /boot/vmlinuz\n")
        # A kernel-sized file with a zero block, as a kernel image may have: not a hole once built.
        write_with_zero_block(root / "boot/System.map", sparse=False)
        subprocess.run(["chown", "-R", f"{owner}:{owner}", scratch], check=True)
        raw = scratch / "disk.raw"

        disk = subprocess.run(
            [*run_as, FARM_WORKER, "disk", root, "--output", scratch / "disk.qcow2", "--raw", raw],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip

        assert disk.returncode == 0, disk.stdout[-3000:] + disk.stderr
        assert "installing extlinux (in a qemu VM)" in disk.stdout
        assert re.search(r"^installed extlinux in a qemu VM in \d+\.\d s$", disk.stdout, re.MULTILINE)
        assert raw.stat().st_uid == owner
        listing = subprocess.run(
            ["debugfs", "-R", "ls -l /boot", f"{raw}?offset={PARTITION_OFFSET}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "ldlinux.sys" in listing and "ldlinux.c32" in listing
        # extlinux wrote its boot sector into the partition; mbr.bin is in the disk's first sector.
        with raw.open("rb") as disk_file:
            mbr = disk_file.read(512)
            disk_file.seek(PARTITION_OFFSET)
            boot_sector = disk_file.read(512)
        assert boot_sector[3:11] == b"SYSLINUX" and boot_sector[510:] == b"\x55\xaa"
        assert mbr[:440] == Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
        assert len(boot_blocks(raw, "/boot/System.map")) == 4
        assert holes_under_boot(root, raw) == []
        # The files keep the owner the stage saw them with.
        status = subprocess.run(
            ["debugfs", "-R", "stat /boot/System.map", f"{raw}?offset={PARTITION_OFFSET}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert re.search(rf"User: +{owner} +Group: +{owner}\b", status), status
    finally:
        shutil.rmtree(scratch)


@pytest.mark.slow
def test_image_whose_bootloader_was_installed_in_a_vm_boots(booted: Booted) -> None:
    assert "installing extlinux (in a qemu VM)" in booted.disk.stdout
    process, console = booted.process, booted.console
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr
    assert "an SSH login as ec2-user with the key from the metadata service" in process.stdout
    assert "boot test passed" in process.stdout
    assert "SYSLINUX" in console and f"Linux version {booted.release}" in console


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
def test_stage3_fstab_placeholders_make_fsck_fail_until_the_recipe_empties_it(without_fixes: Booted) -> None:
    # OpenRC's fsck tries the stage3's /dev/ROOT; real OpenRC goes on with the boot, but with errors
    # on the console of every boot. The recipe's empty fstab (the booted fixture) has none.
    assert "fsck.ext3: No such file or directory while trying to open /dev/ROOT" in without_fixes.console


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
