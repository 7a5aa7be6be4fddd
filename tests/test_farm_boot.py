"""`farm boot`: a local qcow2 or a published image in qemu, an ssh line that logs in, nothing left
after Ctrl-C. The one boot (slow) is of `latest`, published into a farm's local store (issue 16)."""

import filecmp
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gentoo_farm.commands import boot
from gentoo_farm.config import load_config
from gentoo_farm.store import open_store
from tests.farmtest import FARM, farm_command
from tests.services.store import publish_files
from tests.test_disk_boot import build_image, kernel_tarball  # noqa: F401  (module fixture)
from tests.test_downloads import DISK, published  # noqa: F401  (fixture)

pytest_plugins = ["tests.services.store"]

SSH_LINE = re.compile(r"^ssh -p (\d+) .*ec2-user@127\.0\.0\.1$", re.MULTILINE)
IMAGE_NAME = "gentoo-20261206-amd64.qcow2"


def farm_boot(home: Path, *arguments: str, farm: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`farm [--farm FARM] boot ARGUMENTS` with ``home`` as HOME and the current directory."""
    return subprocess.run(
        [FARM, *(["--farm", str(farm)] if farm else []), "boot", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
        cwd=home,
    )


def new_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def qemu_processes(needle: str) -> list[str]:
    """The command lines of running qemu processes that mention ``needle``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # the process ended while we looked
        if words and words[0].startswith("qemu-system") and any(needle in word for word in words):
            found.append(" ".join(words))
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_missing_image_file_is_an_error_without_a_farm(tmp_path: Path) -> None:
    new_key(tmp_path)
    result = farm_boot(tmp_path, str(tmp_path / "gone.qcow2"), "--key", str(tmp_path / "id_ed25519.pub"))
    assert result.returncode == 2
    assert f"{tmp_path / 'gone.qcow2'}: no such image file" in result.stderr
    assert "farm.toml" not in result.stderr


def test_no_key_names_the_files_it_looked_for(tmp_path: Path) -> None:
    image = tmp_path / "gentoo.qcow2"
    image.write_bytes(b"")
    result = farm_boot(tmp_path, str(image))
    assert result.returncode == 2
    assert "no SSH public key" in result.stderr
    assert str(tmp_path / ".ssh" / "id_ed25519.pub") in result.stderr
    assert "--key" in result.stderr
    missing = farm_boot(tmp_path, str(image), "--key", str(tmp_path / "absent.pub"))
    assert f"{tmp_path / 'absent.pub'}: no such public key file" in missing.stderr


def test_an_image_the_store_does_not_have_is_an_error(tmp_path: Path) -> None:
    farm_command("init", str(tmp_path / "farm"))
    new_key(tmp_path)
    result = farm_boot(
        tmp_path, "no-such-image", "--key", str(tmp_path / "id_ed25519.pub"), farm=tmp_path / "farm"
    )
    assert result.returncode == 2
    assert "no published image named 'no-such-image'" in result.stderr


def test_a_published_image_is_downloaded_verified_into_the_cache_once(
    published: SimpleNamespace,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = boot.cached_image(published, "latest")
    assert image == tmp_path / "cache" / "gentoo-farm" / "images" / "gentoo-20261125-amd64.qcow2"
    assert image.read_bytes() == DISK
    assert "(cached)" not in capsys.readouterr().err
    assert boot.cached_image(published, "latest") == image
    assert f"gentoo-20261125-amd64: {image} (cached)" in capsys.readouterr().err


@pytest.mark.slow
def test_boot_latest_prints_an_ssh_line_that_logs_in_and_ctrl_c_leaves_nothing(
    tmp_path: Path,
    kernel_tarball: Path,  # noqa: F811
) -> None:
    # The image published into a new farm's local store, as a build does: `farm boot latest` finds it
    # through the farm's farm.toml and downloads it into the user's cache before booting it.
    farm_dir = tmp_path / "farm"
    farm_command("init", str(farm_dir))
    built = build_image(tmp_path, kernel_tarball).image
    publish_files(open_store(load_config(farm_dir).store), "images", "farm-boot", {IMAGE_NAME: built})
    home = tmp_path / "home"
    home.mkdir()
    cache = home / ".cache" / "gentoo-farm" / "images"
    key = new_key(tmp_path)
    stderr_path = tmp_path / "farm-boot.stderr"
    started = time.monotonic()
    with stderr_path.open("w") as stderr:
        farm = subprocess.Popen(
            [
                FARM,
                "--farm",
                str(farm_dir),
                "boot",
                "latest",
                "--key",
                f"{key}.pub",
                "--disk",
                "4G",
                "--hostname",
                "farm-boot-tested",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")},
            cwd=home,
        )
    try:
        assert farm.stdout is not None
        # The only line on stdout is the ssh line; readline blocks until it comes or farm ends.
        line = farm.stdout.readline().strip()
        messages = stderr_path.read_text()
        match = SSH_LINE.fullmatch(line)
        assert match, f"no ssh line after {time.monotonic() - started:.0f} s: {line!r}\n{messages}"
        print(f"ssh line after {time.monotonic() - started:.0f} s")
        # Downloaded (its sha512 verified) before qemu started; the boot must not change it.
        image = cache / IMAGE_NAME
        assert filecmp.cmp(image, built, shallow=False), messages
        image_state = image.stat()
        scratch = Path(re.search(r"copy-on-write disk in (\S+)", messages)[1])
        metadata_port = int(re.search(r"metadata service: http://127\.0\.0\.1:(\d+)/", messages)[1])
        assert scratch.is_dir() and listening(metadata_port)

        ssh = [*line.split()[:-1], "-i", str(key), "-o", "BatchMode=yes", line.split()[-1], "hostname"]
        for _ in range(30):  # sshd answers before the metadata's key may be in place
            logged_in = subprocess.run(ssh, capture_output=True, text=True, timeout=90)
            if logged_in.returncode == 0:
                break
            time.sleep(5)
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.strip() == "farm-boot-tested"

        farm.send_signal(signal.SIGINT)
        assert farm.wait(timeout=60) == 130
    finally:
        if farm.poll() is None:
            farm.kill()
            farm.wait()
    assert not qemu_processes(str(scratch)) and not qemu_processes(str(image))
    assert not listening(metadata_port)
    assert not scratch.exists()
    assert sorted(path.name for path in cache.iterdir()) == [IMAGE_NAME, f"{IMAGE_NAME}.sha512"]
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (image_state.st_size, image_state.st_mtime_ns)
    print(f"booted, logged in and stopped in {time.monotonic() - started:.0f} s")


def test_kvm_that_leaves_the_guest_silent_or_refuses_is_given_up_for_tcg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some nested hosts open /dev/kvm and then never run the guest: qemu neither prints nor exits.
    monkeypatch.setattr(boot, "KVM_FIRST_OUTPUT_SECONDS", 1.0)
    qemu_log, serial_log = tmp_path / "qemu.log", tmp_path / "serial.log"
    qemu_log.write_text("")
    with subprocess.Popen(["sleep", "30"]) as silent:
        assert boot.kvm_trouble(silent, qemu_log, serial_log) == (
            "the guest printed nothing on its serial console in 1 s"
        )
        silent.kill()
    # A guest that prints is running: KVM is kept.
    serial_log.write_text("SYSLINUX 6.04\n")
    with subprocess.Popen(["sleep", "30"]) as printing:
        assert boot.kvm_trouble(printing, qemu_log, serial_log) is None
        printing.kill()
    # qemu that refuses KVM says so and exits; another failure is the caller's to report.
    qemu_log.write_text("qemu-system-x86_64: failed to initialize kvm: Permission denied\n")
    refused = subprocess.Popen(["true"])
    refused.wait()
    assert boot.kvm_trouble(refused, qemu_log, serial_log) == (
        "qemu-system-x86_64: failed to initialize kvm: Permission denied"
    )
    qemu_log.write_text("qemu-system-x86_64: -drive file=x: Could not open 'x'\n")
    assert boot.kvm_trouble(refused, qemu_log, serial_log) is None
