"""Boot an image in qemu and log in over SSH as the cloud user, checking what a cloud user needs.

qemu runs under TCG with ``-display none -serial file:LOG`` (so the SYSLINUX lines reach the serial
log only when extlinux.conf says ``SERIAL 0``), a virtio disk (a copy-on-write disk over the image,
``--grow-disk`` MiB bigger as a cloud flavor's disk is, and a snapshot: the image is not changed)
and virtio-net on restricted user networking: the guest reaches nothing but what the test
offers, and the guest's port 22 is forwarded to 127.0.0.1:PORT. The test makes a fresh ed25519 key
and hands it out, with a hostname, an instance id and a user-data script, the way ``--metadata`` says:

- ``service``: an EC2-style metadata service at 169.254.169.254:80 (forwarded to an HTTP server on
  127.0.0.1);
- ``config-drive``: an OpenStack config drive, an ISO 9660 disk labelled ``config-2``;
- ``none``: neither; the image must still boot to its login prompt and start sshd.

The serial console must show, in order: the SYSLINUX banner, the kernel command line with
root=/dev/vda1, the init entering the default runlevel and a login prompt on the serial console.
Then, over SSH as the cloud user with the key: the hostname is the metadata's, the user-data ran
(the file it writes), the key was not installed for root, the root filesystem grew beyond the
image's size (the image's growroot service), ``uname -r`` is ``--kernel-release``,
every ``--expect-command`` succeeds; and root's login is refused although the user-data gave root
the key too (so it is sshd's configuration that refuses it). With ``none``, sshd must answer.
Last, ``ssh-keyscan`` reads the guest's ed25519 host key: its fingerprint is reported in
``boot_test_host_keys``, so two boots of one image can be shown to have made their own.
The test fails naming the first check not met; the serial log is printed after a marker line so
the build step can attach it.
"""

import argparse
import contextlib
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gentoo_farm.qemuboot import (
    MIB,
    Metadata,
    add_instance_arguments,
    free_port,
    grown_disk,
    metadata_proxy,
    metadata_service,
    new_key,
    qemu_command,
    qemu_exited,
    running,
    ssh_banner,
)
from gentoo_farm.stageprotocol import SERIAL_LOG_END, SERIAL_LOG_MARKER
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.tools import run_tool

# Where the instance finds its key, hostname and user-data; "none" checks that it still boots without.
METADATA_SOURCES = ("service", "config-drive", "none")
CONFIG_DRIVE_LABEL = "config-2"
# What the user-data writes (world-readable, so the cloud user can show it) and what it contains.
USER_DATA_PROOF = "/var/tmp/farm-boot-test-user-data"
NO_ROOT_KEY = "root had no authorized_keys before the user-data"
# Console lines after which a boot cannot succeed: the watch stops there instead of at the timeout.
FATAL_CONSOLE_LINES = {
    "Kernel panic - not syncing": "the kernel panicked",
    "Give root password for maintenance": "the boot dropped to the maintenance login (sulogin)",
}
POLL_SECONDS = 0.5
SSH_RETRY_SECONDS = 2.0
# One SSH command may take this long under TCG (key exchange, login, the command itself).
SSH_COMMAND_SECONDS = 60.0
SSH_CONNECT_SECONDS = 15


@dataclass(frozen=True)
class Check:
    description: str
    pattern: re.Pattern[str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the qcow2 (or raw) image to boot")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds the boot and the SSH checks may take together (default 300)",
    )
    parser.add_argument(
        "--metadata",
        choices=METADATA_SOURCES,
        default="service",
        help="how the instance gets its metadata: a metadata service at 169.254.169.254 (default), "
        "an OpenStack config drive, or not at all",
    )
    parser.add_argument(
        "--kernel-release",
        default="",
        help="what `uname -r` must print in the booted image (unchecked if empty)",
    )
    parser.add_argument(
        "--expect-command",
        action="append",
        default=[],
        metavar="COMMAND",
        help="a command that must succeed over SSH as the cloud user (repeatable, run in order)",
    )
    parser.add_argument(
        "--serial-log", type=Path, help="where to write the serial log (default: IMAGE.serial.log)"
    )
    add_instance_arguments(parser, hostname="farm-boot-test", memory_mib=512)
    parser.add_argument(
        "--runlevel-marker",
        default="INIT: Entering runlevel: 3",
        help="what the init prints on reaching the default runlevel (default: sysvinit's line)",
    )
    parser.add_argument(
        "--grow-disk",
        type=int,
        default=1024,
        metavar="MIB",
        help="boot on a disk this much bigger than the image, as a cloud flavor's is, and check that the "
        "root filesystem grew to fill it (default 1024; 0 boots the image at its own size)",
    )


@dataclass(frozen=True)
class Instance:
    """What the metadata says about the instance being booted."""

    hostname: str
    instance_id: str
    public_key: str
    marker: str

    def user_data(self) -> str:
        """A user-data script that leaves proof it ran, and gives root the key as well: a refused
        root login then shows sshd's configuration, not a missing key."""
        return f"""#!/bin/sh
root_keys="{NO_ROOT_KEY}"
[ -e /root/.ssh/authorized_keys ] && root_keys="root had authorized_keys"
mkdir -p /root/.ssh
chmod 0700 /root/.ssh
echo '{self.public_key}' >> /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
printf '%s\\n' "{self.marker}" "$root_keys" > {USER_DATA_PROOF}
chmod 0644 {USER_DATA_PROOF}
echo "farm-boot-test: user-data ran"
"""

    def metadata(self) -> Metadata:
        return Metadata(self.hostname, self.instance_id, self.public_key, self.user_data())


ISO_MAKERS = ("genisoimage", "mkisofs")
"""What makes the config drive, the first found: Nova's default, then cdrtools' (Gentoo's app-cdr/cdrtools
has no genisoimage), which takes the same options."""


def config_drive(instance: Instance, scratch: Path) -> Path:
    """An OpenStack config drive made the way Nova makes one (genisoimage, label config-2)."""
    tree = scratch / "config-drive"
    latest = tree / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "meta_data.json").write_bytes(instance.metadata().meta_data_json())
    (latest / "user_data").write_text(instance.user_data())
    iso = scratch / "config-drive.iso"
    maker = next(tool for tool in ISO_MAKERS if shutil.which(tool))
    command = [maker, "-o", str(iso), "-ldots", "-allow-lowercase", "-allow-multidot", "-l"]
    command += ["-quiet", "-J", "-r", "-V", CONFIG_DRIVE_LABEL, str(tree)]
    made = subprocess.run(command, capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise StageError(f"{maker} could not make the config drive: {made.stderr.strip()}")
    return iso


def console_checks(args: argparse.Namespace) -> list[Check]:
    # Without metadata the hostname stays the image's own.
    hostname = re.escape(args.hostname) if args.metadata != "none" else r"\S+"
    return [
        Check("the SYSLINUX banner (extlinux.conf needs SERIAL 0)", re.compile(r"SYSLINUX \d")),
        Check("the kernel command line with root=/dev/vda1", re.compile(r"Command line: .*root=/dev/vda1\b")),
        Check(
            f"the init reaching the default runlevel ({args.runlevel_marker!r})",
            re.compile(re.escape(args.runlevel_marker)),
        ),
        Check(
            "a login prompt on the serial console (the s0 getty)"
            + (f" for {args.hostname}" if args.metadata != "none" else ""),
            re.compile(rf"{hostname} login:"),
        ),
    ]


def first_unmet(checks: list[Check], console: str) -> Check | None:
    """The first check the console does not show after the previous one, or None when all are met."""
    position = 0
    for check in checks:
        match = check.pattern.search(console, position)
        if match is None:
            return check
        position = match.end()
    return None


def watch_console(
    qemu: subprocess.Popen[bytes], qemu_log: Path, serial_log: Path, checks: list[Check], deadline: float
) -> tuple[Check | None, str]:
    """Wait for the console checks; return (the first unmet check or None, why the watch ended)."""
    started = time.monotonic()
    while True:
        time.sleep(POLL_SECONDS)
        console = serial_log.read_text(errors="replace") if serial_log.exists() else ""
        unmet = first_unmet(checks, console)
        elapsed = f"after {time.monotonic() - started:.1f} s"
        if unmet is None:
            return None, f"all met {elapsed}"
        fatal = next((why for line, why in FATAL_CONSOLE_LINES.items() if line in console), None)
        if fatal:
            return unmet, f"{fatal} {elapsed}"
        exited = qemu_exited(qemu, qemu_log)
        if exited:
            return unmet, f"{exited} {elapsed}"
        if time.monotonic() > deadline:
            return unmet, "the boot did not get there within the timeout"


@dataclass(frozen=True)
class Guest:
    """The booted guest's sshd, reached through the host forward."""

    qemu: subprocess.Popen[bytes]
    qemu_log: Path
    port: int
    key: Path
    started: float
    """``time.monotonic()`` when qemu was started."""

    def ssh(self, user: str, command: str, deadline: float) -> subprocess.CompletedProcess[str]:
        options = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "PreferredAuthentications": "publickey",
            # Every boot has new host keys: there is nothing to verify them against.
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "LogLevel": "ERROR",
            "ConnectTimeout": str(SSH_CONNECT_SECONDS),
            "ServerAliveInterval": "10",
            "ServerAliveCountMax": "3",
        }
        # -F /dev/null: the worker's own ssh_config (proxies, other keys) must not take part.
        arguments = ["ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(self.port)]
        for name, value in options.items():
            arguments += ["-o", f"{name}={value}"]
        arguments += [f"{user}@127.0.0.1", command]
        seconds = max(1.0, min(SSH_COMMAND_SECONDS, deadline - time.monotonic()))
        try:
            return subprocess.run(arguments, capture_output=True, text=True, timeout=seconds, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(
                arguments, 255, "", f"ssh did not finish within {seconds:.0f} s"
            )


def ssh_failure(result: subprocess.CompletedProcess[str]) -> str:
    output = (result.stderr.strip() or result.stdout.strip())[-500:]
    return f"status {result.returncode}" + (f": {output}" if output else "")


def wait_for_login(guest: Guest, user: str, deadline: float) -> str | None:
    """Log in as ``user`` until it works or the deadline passes: None, or why the last try failed."""
    while True:
        exited = qemu_exited(guest.qemu, guest.qemu_log)
        if exited:
            return exited
        result = guest.ssh(user, "true", deadline)
        if result.returncode == 0:
            # How long the image takes from power-on to a login: the build step's status line says it.
            report(boot_test_login_seconds=round(time.monotonic() - guest.started))
            return None
        # The login prompt comes after the whole default runlevel: the key is in place by then,
        # so a refused key is final.
        if "Permission denied" in result.stderr or time.monotonic() > deadline:
            return ssh_failure(result)
        time.sleep(SSH_RETRY_SECONDS)


def wait_for_banner(guest: Guest, deadline: float) -> str | None:
    """Wait for sshd's version banner on the forwarded port: None, or why it did not come."""
    last = "no answer"
    while time.monotonic() < deadline:
        exited = qemu_exited(guest.qemu, guest.qemu_log)
        if exited:
            return exited
        try:
            banner = ssh_banner(guest.port, SSH_CONNECT_SECONDS)
            if banner.startswith(b"SSH-"):
                progress(f"sshd answers: {banner.decode(errors='replace').strip()}")
                return None
            last = f"the port answered {banner[:60]!r}, not an SSH banner"
        except OSError as error:
            last = str(error)
        time.sleep(SSH_RETRY_SECONDS)
    return f"not within the timeout ({last})"


def host_keys(guest: Guest, deadline: float) -> str | None:
    """Report the fingerprints of the host keys the guest's sshd offers: None, or why there are none."""
    seconds = max(1.0, min(SSH_COMMAND_SECONDS, deadline - time.monotonic()))
    try:
        scanned = subprocess.run(
            # One type: under TCG, the RSA handshake of a default scan can outlast -T and cost its
            # whole wait; every image's sshd makes an ed25519 key.
            [
                "ssh-keyscan",
                "-t",
                "ed25519",
                "-T",
                str(SSH_CONNECT_SECONDS),
                "-p",
                str(guest.port),
                "127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"ssh-keyscan did not finish within {seconds:.0f} s"
    if not scanned.stdout.strip():
        return f"ssh-keyscan found no host key ({ssh_failure(scanned)})"
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=scanned.stdout, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        return f"ssh-keygen cannot read the scanned keys ({ssh_failure(listed)})"
    # Each line: BITS FINGERPRINT HOST (TYPE).
    fingerprints = sorted({line.split()[1] for line in listed.stdout.splitlines() if len(line.split()) > 1})
    progress("host keys: " + ", ".join(fingerprints))
    report(boot_test_host_keys=fingerprints)
    return None


def grown_beyond(guest: Guest, user: str, image_bytes: int, deadline: float) -> Callable[[], str | None]:
    def check() -> str | None:
        result = guest.ssh(user, "df -k /", deadline)
        if result.returncode != 0:
            return f"`df -k /` failed ({ssh_failure(result)})"
        fields = result.stdout.splitlines()[-1].split()
        size = int(fields[1]) * 1024 if len(fields) > 1 and fields[1].isdigit() else None
        if size is None:
            return f"`df -k /` printed {result.stdout.strip()!r}"
        progress(f"the root filesystem holds {size // MIB} MiB")
        return (
            None
            if size > image_bytes
            else f"it holds {size // MIB} MiB: the growroot service did not grow it"
        )

    return check


def login_checks(
    args: argparse.Namespace, guest: Guest, instance: Instance, deadline: float, image_bytes: int
) -> list[tuple[str, Callable[[], str | None]]]:
    """The checks over SSH, in order: (description, a function returning None or why it failed)."""

    def output_is(command: str, expected: str) -> Callable[[], str | None]:
        def check() -> str | None:
            result = guest.ssh(args.user, command, deadline)
            if result.returncode != 0:
                return f"`{command}` failed ({ssh_failure(result)})"
            if result.stdout.strip() != expected:
                return f"`{command}` printed {result.stdout.strip()!r}"
            return None

        return check

    def succeeds(command: str) -> Callable[[], str | None]:
        def check() -> str | None:
            result = guest.ssh(args.user, command, deadline)
            progress(f"{command}: status {result.returncode}\n{result.stdout}{result.stderr}".rstrip())
            return None if result.returncode == 0 else ssh_failure(result)

        return check

    def root_refused() -> str | None:
        result = guest.ssh("root", "true", deadline)
        if result.returncode == 0:
            return "root logged in with the key (sshd must say PermitRootLogin no)"
        return None if "Permission denied" in result.stderr else ssh_failure(result)

    scan_host_keys = ("the guest's SSH host keys", lambda: host_keys(guest, deadline))
    if args.metadata == "none":
        return [("sshd answering on port 22", lambda: wait_for_banner(guest, deadline)), scan_host_keys]
    source = "config drive" if args.metadata == "config-drive" else "metadata service"
    checks: list[tuple[str, Callable[[], str | None]]] = [
        (
            f"an SSH login as {args.user} with the key from the {source}",
            lambda: wait_for_login(guest, args.user, deadline),
        ),
        (f"the hostname {instance.hostname!r} from the {source}", output_is("uname -n", instance.hostname)),
        (
            f"the user-data from the {source} having run (its {USER_DATA_PROOF})",
            output_is(f"head -n 1 {USER_DATA_PROOF}", instance.marker),
        ),
        ("the key installed for the cloud user only", output_is(f"tail -n 1 {USER_DATA_PROOF}", NO_ROOT_KEY)),
    ]
    if args.grow_disk:
        checks.append(
            (
                f"the root filesystem grown beyond the image's {image_bytes // MIB} MiB disk",
                grown_beyond(guest, args.user, image_bytes, deadline),
            )
        )
    if args.kernel_release:
        checks.append(
            (f"the kernel release {args.kernel_release}", output_is("uname -r", args.kernel_release))
        )
    checks += [(f"the command {command!r}", succeeds(command)) for command in args.expect_command]
    checks += [("root's SSH login being refused", root_refused), scan_host_keys]
    return checks


def first_failure(checks: list[tuple[str, Callable[[], str | None]]]) -> tuple[str, str] | None:
    for description, check in checks:
        progress(f"checking {description}")
        why = check()
        if why is not None:
            return description, why
    return None


def required_tools(metadata: str) -> list[tuple[str, ...]]:
    """What the boot test runs, each as the tools any one of which does."""
    tools: list[tuple[str, ...]] = [
        ("qemu-system-x86_64",),
        ("qemu-img",),
        ("ssh",),
        ("ssh-keygen",),
        ("ssh-keyscan",),
    ]
    if metadata == "service":
        tools.append(("busybox",))  # its nc carries the guest's requests to the metadata service
    if metadata == "config-drive":
        tools.append(ISO_MAKERS)
    return tools


def run(args: argparse.Namespace) -> None:
    if not args.image.is_file():
        raise StageError(f"{args.image}: image does not exist")
    for alternatives in required_tools(args.metadata):
        if not any(shutil.which(tool) for tool in alternatives):
            raise StageError(
                f"{' or '.join(alternatives)} is not installed on this worker (the boot test needs it)"
            )
    serial_log = (args.serial_log or args.image.with_name(args.image.name + ".serial.log")).resolve()
    serial_log.parent.mkdir(parents=True, exist_ok=True)
    serial_log.unlink(missing_ok=True)
    qemu_log = serial_log.with_name(serial_log.name + ".qemu")

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="boot-test-")))
        key, public_key = new_key(scratch)
        instance = Instance(args.hostname, str(uuid.uuid4()), public_key, secrets.token_hex(8))
        proxy = drive = None
        if args.metadata == "service":
            port = stack.enter_context(metadata_service(instance.metadata().documents(), progress))
            proxy = metadata_proxy(port, scratch)
        elif args.metadata == "config-drive":
            drive = config_drive(instance, scratch)
        disk, image_bytes = args.image.resolve(), 0
        if args.grow_disk:
            disk, image_bytes = grown_disk(
                disk,
                lambda size: size + args.grow_disk * MIB,
                scratch,
                lambda command, what: run_tool(command, what=what),
            )
        ssh_port = free_port()
        command = qemu_command(disk, f"file:{serial_log}", args.memory, ssh_port, proxy, drive)
        progress(f"booting {args.image} (timeout {args.timeout:.0f} s): {' '.join(command)}")
        started = time.monotonic()
        deadline = started + args.timeout
        qemu = stack.enter_context(running(command, qemu_log))
        checks = console_checks(args)
        unmet, ending = watch_console(qemu, qemu_log, serial_log, checks, deadline)
        failure = None
        if unmet is None:
            progress(f"serial console: {len(checks)} checks met in order ({ending})")
            failure = first_failure(
                login_checks(
                    args, Guest(qemu, qemu_log, ssh_port, key, started), instance, deadline, image_bytes
                )
            )

    console = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    print(f"{SERIAL_LOG_MARKER}{serial_log} -----", flush=True)
    print(console, end="" if console.endswith("\n") or not console else "\n", flush=True)
    print(SERIAL_LOG_END, flush=True)
    report(boot_test_serial_log=str(serial_log), boot_test_passed=unmet is None and failure is None)
    if unmet is not None:
        raise StageError(
            f"boot test failed: {unmet.description} not seen on the serial console ({ending}; "
            f"last line: {last_line(console)!r}; serial log: {serial_log})"
        )
    if failure is not None:
        description, why = failure
        raise StageError(f"boot test failed: {description}: {why} (serial log: {serial_log})")
    progress(f"boot test passed: {len(checks)} console checks, then the checks over SSH")


def last_line(console: str) -> str:
    lines = [line.strip() for line in console.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(the serial console stayed silent)"
