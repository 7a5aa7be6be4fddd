"""Boot an image in qemu against a metadata service and check its serial console, in order.

qemu runs under TCG with ``-display none -serial file:LOG`` (so the SYSLINUX lines reach the serial
log only when extlinux.conf says ``SERIAL 0``), a virtio disk (as a snapshot: the image is not
changed) and virtio-net on restricted user networking whose only way out is 169.254.169.254:80,
forwarded to a metadata service on 127.0.0.1 that hands out an SSH key, a hostname and a user-data
script. The test passes when the serial log shows, in this order: the SYSLINUX banner, the kernel
command line with root=/dev/vda1, the init entering the default runlevel, every ``--expect`` text,
the SSH key in ec2-user's authorized_keys, the hostname, the user-data script's marker and a login
prompt on the serial console. It fails naming the first check not met; the serial log is printed
after a marker line so the build step can attach it.
"""

import argparse
import contextlib
import http.server
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gentoo_farm.stageprotocol import SERIAL_LOG_END, SERIAL_LOG_MARKER
from gentoo_farm.workers.toolkit import StageError, progress, report

METADATA_ADDRESS = "169.254.169.254"
# The guest's link-local network: slirp forwards only addresses inside its own net=.
GUEST_NETWORK = "169.254.0.0/16"
# Console lines after which a boot cannot succeed: the watch stops there instead of at the timeout.
FATAL_CONSOLE_LINES = {
    "Kernel panic - not syncing": "the kernel panicked",
    "Give root password for maintenance": "the boot dropped to the maintenance login (sulogin)",
}
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Check:
    description: str
    pattern: re.Pattern[str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the qcow2 (or raw) image to boot")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the boot may take (default 300)"
    )
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="TEXT",
        help="a line the console must show after the default runlevel is reached (repeatable, in order)",
    )
    parser.add_argument(
        "--serial-log", type=Path, help="where to write the serial log (default: IMAGE.serial.log)"
    )
    parser.add_argument(
        "--hostname", default="farm-boot-test", help="the hostname the metadata service hands out"
    )
    parser.add_argument("--user", default="ec2-user", help="the cloud user whose SSH key is checked")
    parser.add_argument(
        "--runlevel-marker",
        default="INIT: Entering runlevel: 3",
        help="what the init prints on reaching the default runlevel (default: sysvinit's line)",
    )
    parser.add_argument("--memory", default="512", help="guest memory in MiB (default 512)")


class MetadataHandler(http.server.BaseHTTPRequestHandler):
    """Answers the EC2 and OpenStack metadata paths cloud-init.start asks for."""

    documents: typing.ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.documents.get(self.path.rstrip("/"))
        self.send_response(200 if body is not None else 404)
        body = body if body is not None else b"not found\n"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        progress(f"metadata service: {self.command} {self.path}")


@contextlib.contextmanager
def metadata_service(documents: dict[str, bytes]) -> Iterator[int]:
    handler = type("BootTestMetadata", (MetadataHandler,), {"documents": documents})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="metadata-service", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def user_data_script(user: str, marker: str) -> str:
    """The user-data the test hands out: it reports what cloud-init.start did, as the guest sees it."""
    return f"""#!/bin/sh
home=$(awk -F: '$1 == "{user}" {{ print $6 }}' /etc/passwd)
echo "farm-boot-test: {user} authorized_keys: $(cat "$home/.ssh/authorized_keys" 2>&1)"
echo "farm-boot-test: hostname: $(hostname)"
echo "farm-boot-test: user-data ran: {marker}"
"""


def build_checks(args: argparse.Namespace, ssh_key: str, marker: str) -> list[Check]:
    checks = [
        Check("the SYSLINUX banner (extlinux.conf needs SERIAL 0)", re.compile(r"SYSLINUX \d")),
        Check("the kernel command line with root=/dev/vda1", re.compile(r"Command line: .*root=/dev/vda1\b")),
        Check(
            f"the init reaching the default runlevel ({args.runlevel_marker!r})",
            _literal(args.runlevel_marker),
        ),
    ]
    checks += [Check(f"the expected line {text!r}", _literal(text)) for text in args.expect]
    checks += [
        Check(
            f"the SSH key from the metadata installed for {args.user}",
            _literal(f"farm-boot-test: {args.user} authorized_keys: {ssh_key}"),
        ),
        Check(
            f"the hostname {args.hostname!r} from the metadata",
            _literal(f"farm-boot-test: hostname: {args.hostname}"),
        ),
        Check("the user-data script's marker", _literal(f"farm-boot-test: user-data ran: {marker}")),
        Check("a login prompt on the serial console (the s0 getty)", _literal(f"{args.hostname} login:")),
    ]
    return checks


def _literal(text: str) -> re.Pattern[str]:
    return re.compile(re.escape(text))


def first_unmet(checks: list[Check], console: str) -> Check | None:
    """The first check the console does not show after the previous one, or None when all are met."""
    position = 0
    for check in checks:
        match = check.pattern.search(console, position)
        if match is None:
            return check
        position = match.end()
    return None


def qemu_command(image: Path, serial_log: Path, proxy: Path, memory: str) -> list[str]:
    image_format = "qcow2" if image.suffix == ".qcow2" else "raw"
    return [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        memory,
        "-smp",
        "1",
        "-display",
        "none",
        "-vga",
        "std",
        "-serial",
        f"file:{serial_log}",
        "-monitor",
        "none",
        "-no-reboot",
        "-snapshot",
        "-drive",
        f"file={image},if=virtio,format={image_format}",
        "-netdev",
        f"user,id=n0,restrict=on,net={GUEST_NETWORK},guestfwd=tcp:{METADATA_ADDRESS}:80-cmd:{proxy}",
        "-device",
        "virtio-net-pci,netdev=n0",
    ]


def boot_and_watch(
    command: list[str], serial_log: Path, checks: list[Check], timeout: float
) -> tuple[Check | None, str]:
    """Boot; return (the first unmet check or None, why the watch ended)."""
    started = time.monotonic()
    qemu_log = serial_log.with_name(serial_log.name + ".qemu")
    with qemu_log.open("w") as qemu_output:
        qemu = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=qemu_output, stderr=subprocess.STDOUT
        )
    try:
        while True:
            time.sleep(POLL_SECONDS)
            console = serial_log.read_text(errors="replace") if serial_log.exists() else ""
            unmet = first_unmet(checks, console)
            elapsed = time.monotonic() - started
            if unmet is None:
                return None, f"all checks met after {elapsed:.1f} s"
            fatal = next((why for line, why in FATAL_CONSOLE_LINES.items() if line in console), None)
            if fatal:
                return unmet, f"{fatal} after {elapsed:.1f} s"
            if qemu.poll() is not None:
                details = qemu_log.read_text(errors="replace").strip()
                return unmet, f"qemu exited with status {qemu.returncode} after {elapsed:.1f} s" + (
                    f": {details}" if details else ""
                )
            if elapsed > timeout:
                return unmet, f"the boot did not get there within {timeout:.0f} s"
    finally:
        if qemu.poll() is None:
            qemu.terminate()
            try:
                qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()


def last_line(console: str) -> str:
    lines = [line.strip() for line in console.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(the serial console stayed silent)"


def run(args: argparse.Namespace) -> None:
    if not args.image.is_file():
        raise StageError(f"{args.image}: image does not exist")
    for tool in ("qemu-system-x86_64", "busybox"):
        if shutil.which(tool) is None:
            raise StageError(f"{tool} is not installed on this worker (the boot test needs it)")
    serial_log = args.serial_log or args.image.with_name(args.image.name + ".serial.log")
    serial_log.parent.mkdir(parents=True, exist_ok=True)
    serial_log.unlink(missing_ok=True)

    marker = secrets.token_hex(8)
    ssh_key = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{secrets.token_urlsafe(32)} farm-boot-test"
    instance_id = str(uuid.uuid4())
    documents = {
        "/latest/meta-data/public-keys/0/openssh-key": f"{ssh_key}\n".encode(),
        "/latest/meta-data/hostname": args.hostname.encode(),
        "/latest/meta-data/instance-id": instance_id.encode(),
        "/latest/user-data": user_data_script(args.user, marker).encode(),
        "/openstack/latest/meta_data.json": json.dumps(
            {"uuid": instance_id, "hostname": args.hostname, "public_keys": {"farm-boot-test": ssh_key}}
        ).encode(),
    }
    checks = build_checks(args, ssh_key, marker)

    with metadata_service(documents) as port, tempfile.TemporaryDirectory(prefix="boot-test-") as scratch:
        # qemu runs this for each connection the guest opens to the metadata address; the path
        # ends up in a qemu option string, so it must not contain spaces or commas.
        proxy = Path(scratch) / "metadata-proxy"
        proxy.write_text(f"#!/bin/sh\nexec busybox nc 127.0.0.1 {port}\n")
        proxy.chmod(0o755)
        command = qemu_command(args.image.resolve(), serial_log.resolve(), proxy, args.memory)
        progress(f"booting {args.image} (timeout {args.timeout:.0f} s): {' '.join(command)}")
        unmet, ending = boot_and_watch(command, serial_log, checks, args.timeout)

    console = serial_log.read_text(errors="replace") if serial_log.exists() else ""
    print(f"{SERIAL_LOG_MARKER}{serial_log} -----", flush=True)
    print(console, end="" if console.endswith("\n") or not console else "\n", flush=True)
    print(SERIAL_LOG_END, flush=True)
    report(boot_test_serial_log=str(serial_log), boot_test_passed=unmet is None)
    if unmet is not None:
        raise StageError(
            f"boot test failed: {unmet.description} not seen on the serial console ({ending}; "
            f"last line: {last_line(console)!r}; serial log: {serial_log})"
        )
    progress(f"boot test passed: {len(checks)} checks met in order ({ending})")
