"""Boot a published image (or a local qcow2) in qemu on this machine and print the ssh line that logs in.

The instance gets what a cloud gives it: a copy-on-write disk over the image grown to --disk (the image
file is never written), a metadata service on 127.0.0.1 (reached by the guest at 169.254.169.254)
serving your public key, a hostname and optional user-data, and outbound network. It runs until Ctrl-C
or until qemu exits (a poweroff or reboot in the guest); then qemu, the metadata service and the
temporary directory are gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from gentoo_farm.cli import CommandError
from gentoo_farm.commands.download import download, published
from gentoo_farm.config import FarmConfig
from gentoo_farm.qemuboot import (
    Metadata,
    add_instance_arguments,
    free_port,
    grown_disk,
    metadata_proxy,
    metadata_service,
    qemu_command,
    qemu_exited,
    running,
    ssh_banner,
)
from gentoo_farm.units import human_size

DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
# busybox's nc carries the guest's metadata requests from qemu's guestfwd to the service.
TOOLS = ("qemu-system-x86_64", "qemu-img", "busybox")
IMAGE_SUFFIXES = (".qcow2", ".img", ".raw")
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# A guest under KVM prints on its serial console within a second or two (extlinux, then the kernel). A
# host whose KVM cannot run guests either makes qemu fail at once or, as some nested hosts do, leaves the
# guest stopped without a word: after this long without output, KVM is given up for TCG.
KVM_FIRST_OUTPUT_SECONDS = 20.0
KVM_POLL_SECONDS = 0.2
SSH_POLL_SECONDS = 2.0
SSH_CONNECT_SECONDS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image",
        nargs="?",
        default="latest",
        help="a published image's name or set id, `latest` (default), or a local qcow2 file (needs no farm)",
    )
    parser.add_argument(
        "--disk", type=disk_size, default="8G", help="the instance's disk size, e.g. 8G (default), 20G"
    )
    parser.add_argument(
        "--key",
        type=Path,
        help="the SSH public key the instance authorizes (default: the first of ~/.ssh/"
        + ", ~/.ssh/".join(DEFAULT_KEYS)
        + ")",
    )
    parser.add_argument(
        "--user-data", type=Path, help="a user-data file (e.g. a shell script) for the instance"
    )
    add_instance_arguments(parser, hostname="gentoo", memory_mib=1024)
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the instance's sshd (default 900; a boot without KVM takes minutes)",
    )
    serial = parser.add_mutually_exclusive_group()
    serial.add_argument(
        "--console",
        action="store_true",
        help="the serial console on this terminal (default: a log file in the temporary directory)",
    )
    serial.add_argument("--serial-log", type=Path, help="keep the serial console in this file instead")


def disk_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 8G or 512M")
    return int(match[1]) * SIZE_UNITS[match[2].upper()]


def local_image(name: str) -> Path | None:
    """The file ``name`` names, None for a published image's name; a missing file is an error."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if "/" in name or path.suffix in IMAGE_SUFFIXES:
        raise CommandError(f"{name}: no such image file")
    return None


def needs_farm(args: argparse.Namespace) -> bool:
    return local_image(args.image) is None


def public_key(path: Path | None) -> str:
    candidates = [path] if path is not None else [Path.home() / ".ssh" / name for name in DEFAULT_KEYS]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        if path is not None:
            raise CommandError(f"{path}: no such public key file")
        raise CommandError(
            f"no SSH public key: none of {', '.join(map(str, candidates))} exists; "
            "make one with `ssh-keygen -t ed25519` or name one with --key"
        )
    key = found.read_text(errors="replace").strip()
    if not key.startswith(("ssh-", "ecdsa-", "sk-")):
        raise CommandError(f"{found}: not an SSH public key (expected a line like `ssh-ed25519 AAAA...`)")
    return key


def cached_image(config: FarmConfig, name: str) -> Path:
    """The published image, downloaded into the user's cache unless a verified copy is there already."""
    store, record = published(config, name)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gentoo-farm" / "images"
    image = cache / Path(record.key).name
    checksum = image.with_name(image.name + ".sha512")
    # download() writes the checksum file only after the sha512 matched.
    if image.is_file() and checksum.is_file() and checksum.read_text().split()[:1] == [record.sha512]:
        print(f"{record.name}: {image} (cached)", file=sys.stderr)
        return image
    return download(store, record, cache)


def run_tool(command: Sequence[str | Path], what: str) -> str:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CommandError(f"{what} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_qemu(
    stack: contextlib.ExitStack,
    command: dict[str, list[str]],
    qemu_log: Path,
    serial_log: Path,
    console: bool,
) -> subprocess.Popen[bytes]:
    """qemu with KVM when /dev/kvm lets it run a guest, else with TCG (slower, but runs anywhere)."""
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        serial_log.write_bytes(b"")  # output from before (a --serial-log kept) must not pass for the guest's
        attempt = contextlib.ExitStack()
        qemu = attempt.enter_context(running(command["kvm"], qemu_log, console))
        trouble = kvm_trouble(qemu, qemu_log, serial_log)
        if trouble is None:
            stack.push(attempt.pop_all())
            return qemu
        attempt.close()
        log(f"KVM does not work here ({trouble}); booting with TCG")
    return stack.enter_context(running(command["tcg"], qemu_log, console))


def kvm_trouble(qemu: subprocess.Popen[bytes], qemu_log: Path, serial_log: Path) -> str | None:
    """Why KVM cannot boot the guest: qemu refused it, or the guest printed nothing in time. None when the
    guest runs (or qemu failed for a reason that is not KVM's: the caller reports that)."""
    deadline = time.monotonic() + KVM_FIRST_OUTPUT_SECONDS
    while time.monotonic() < deadline:
        if qemu.poll() is not None:
            failure = qemu_log.read_text(errors="replace").strip()
            return failure.splitlines()[0] if "kvm" in failure.lower() else None
        if serial_log.exists() and serial_log.stat().st_size > 0:
            return None
        time.sleep(KVM_POLL_SECONDS)
    return f"the guest printed nothing on its serial console in {KVM_FIRST_OUTPUT_SECONDS:.0f} s"


def console_end(console: bool, serial_log: Path) -> str:
    """The serial console's last lines for an error message (not when the terminal shows the console)."""
    return "" if console else f"; the serial console ended:\n{last_lines(serial_log)}"


def last_lines(path: Path, count: int = 5) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join(lines[-count:]) if lines else "(the serial console stayed silent)"


def run(args: argparse.Namespace, config: FarmConfig | None) -> int:
    key = public_key(args.key)
    user_data = None
    if args.user_data is not None:
        try:
            user_data = args.user_data.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"{args.user_data}: cannot read the user-data: {error}") from error
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise CommandError(
            f"{', '.join(missing)} not installed (Debian: apt-get install qemu-system-x86 qemu-utils busybox)"
        )
    image = local_image(args.image)
    if image is None:
        assert config is not None  # needs_farm() made the CLI load it
        image = cached_image(config, args.image)
    image = image.resolve()

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="farm-boot-")))

        def disk_bytes(image_bytes: int) -> int:
            if args.disk < image_bytes:
                raise CommandError(
                    f"--disk {human_size(args.disk)} is smaller than the image ({human_size(image_bytes)})"
                )
            return args.disk

        disk, _ = grown_disk(image, disk_bytes, scratch, run_tool)
        metadata = Metadata(args.hostname, str(uuid.uuid4()), key, user_data)
        port = stack.enter_context(metadata_service(metadata.documents(), log))
        ssh_port = free_port()
        serial_log = (args.serial_log or scratch / "serial.log").resolve()
        serial = "stdio" if args.console else f"file:{serial_log}"
        proxy = metadata_proxy(port, scratch)
        # Not restricted: like a cloud instance, the guest may reach the network (to emerge, say).
        command = {
            accel: qemu_command(
                disk,
                serial,
                args.memory,
                ssh_port,
                proxy,
                None,
                accel,
                restrict=False,
                serial_copy=serial_log,
            )
            for accel in ("kvm", "tcg")
        }
        log(f"booting {image} on a {human_size(args.disk)} copy-on-write disk in {scratch}")
        log(f"metadata service: http://127.0.0.1:{port}/ (hostname {args.hostname})")
        if not args.console:
            log(f"serial console: {serial_log}")
        qemu_log = scratch / "qemu.log"
        qemu = start_qemu(stack, command, qemu_log, serial_log, args.console)
        deadline = time.monotonic() + args.timeout
        while (banner := answer(ssh_port)) is None:
            if exited := qemu_exited(qemu, qemu_log):
                raise CommandError(f"{exited} before sshd answered{console_end(args.console, serial_log)}")
            if time.monotonic() > deadline:
                raise CommandError(
                    f"sshd did not answer within {args.timeout:.0f} s (--timeout)"
                    + console_end(args.console, serial_log)
                )
            time.sleep(SSH_POLL_SECONDS)
        log(f"sshd answers ({banner}); Ctrl-C stops the instance")
        print(
            f"ssh -p {ssh_port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"{args.user}@127.0.0.1",
            flush=True,
        )
        qemu.wait()
        log(f"qemu exited with status {qemu.returncode}")
        return 0 if qemu.returncode == 0 else 1


def answer(port: int) -> str | None:
    """sshd's version banner on the forwarded port, or None while it does not answer."""
    try:
        banner = ssh_banner(port, SSH_CONNECT_SECONDS)
    except OSError:
        return None
    return banner.decode(errors="replace").strip() if banner.startswith(b"SSH-") else None
