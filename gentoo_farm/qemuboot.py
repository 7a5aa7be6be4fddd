"""Boot an image in qemu on this machine the way a cloud boots it: what the worker's boot test and
``farm boot`` share.

The guest gets a copy-on-write disk over the image (the image itself is never written), virtio-net on
qemu's user networking with its port 22 forwarded to 127.0.0.1, and an EC2/OpenStack-style metadata
service at 169.254.169.254:80: an HTTP server on 127.0.0.1 that qemu's guestfwd reaches through
``busybox nc``.
"""

import argparse
import contextlib
import http.server
import json
import socket
import subprocess
import threading
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

METADATA_ADDRESS = "169.254.169.254"
# The guest's link-local network: slirp forwards only addresses inside its own net=.
GUEST_NETWORK = "169.254.0.0/16"
MIB = 1024 * 1024
# KVM is not usable on every host the farm runs on (it opens, then fails at the first guest exit);
# TCG always works. Every qemu the farm starts uses this.
ACCELERATOR = "tcg"
# The account that gets the instance's SSH key (the image's conf.d/cloud-metadata names it too).
CLOUD_USER = "ec2-user"


def add_instance_arguments(parser: argparse.ArgumentParser, *, hostname: str, memory_mib: int) -> None:
    """The options that describe the instance, which ``farm boot`` and the boot test stage share."""
    parser.add_argument(
        "--hostname", default=hostname, help=f"the hostname the metadata hands out (default {hostname})"
    )
    parser.add_argument(
        "--user",
        default=CLOUD_USER,
        help=f"the cloud user who logs in with the key (default {CLOUD_USER})",
    )
    parser.add_argument(
        "--memory", default=str(memory_mib), help=f"guest memory in MiB (default {memory_mib})"
    )


@dataclass(frozen=True)
class Metadata:
    """What the metadata service says about the instance."""

    hostname: str
    instance_id: str
    public_key: str
    user_data: str | None

    def meta_data_json(self) -> bytes:
        """OpenStack's meta_data.json (the fields Nova writes that the image reads)."""
        return json.dumps(
            {
                "uuid": self.instance_id,
                "hostname": self.hostname,
                "name": self.hostname,
                "launch_index": 0,
                "public_keys": {"farm-boot-test": self.public_key + "\n"},
                "keys": [{"name": "farm-boot-test", "type": "ssh", "data": self.public_key + "\n"}],
            },
            indent=2,
        ).encode()

    def documents(self) -> dict[str, bytes]:
        documents = {
            "/latest/meta-data/instance-id": self.instance_id.encode(),
            "/latest/meta-data/public-keys/0/openssh-key": f"{self.public_key}\n".encode(),
            "/latest/meta-data/hostname": self.hostname.encode(),
            "/openstack/latest/meta_data.json": self.meta_data_json(),
        }
        # Without user-data both paths answer 404, as EC2's and Nova's do.
        if self.user_data is not None:
            documents["/latest/user-data"] = self.user_data.encode()
            documents["/openstack/latest/user_data"] = self.user_data.encode()
        return documents


class MetadataHandler(http.server.BaseHTTPRequestHandler):
    """Answers the EC2 and OpenStack metadata paths with the instance's documents."""

    documents: typing.ClassVar[dict[str, bytes]] = {}
    log: typing.ClassVar[Callable[[str], None]]

    def do_GET(self) -> None:
        body = self.documents.get(self.path.rstrip("/"))
        self.send_response(200 if body is not None else 404)
        body = body if body is not None else b"not found\n"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        type(self).log(f"metadata service: {self.command} {self.path}")


@contextlib.contextmanager
def metadata_service(documents: dict[str, bytes], log: Callable[[str], None]) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 serving ``documents``, for as long as the context: its port."""
    handler = type("Metadata", (MetadataHandler,), {"documents": documents, "log": staticmethod(log)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="metadata-service", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def metadata_proxy(port: int, scratch: Path) -> Path:
    """What qemu runs for each connection the guest opens to the metadata address: ``busybox nc`` to
    the service on ``port``. The path ends up in a qemu option string, so ``scratch`` must not contain
    spaces or commas."""
    proxy = scratch / "metadata-proxy"
    proxy.write_text(f"#!/bin/sh\nexec busybox nc 127.0.0.1 {port}\n")
    proxy.chmod(0o755)
    return proxy


def new_key(scratch: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair: the private key's path and the public key's line."""
    key = scratch / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "farm-boot-test", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key, key.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ssh_banner(port: int, timeout: float) -> bytes:
    """The first bytes the forwarded port sends. qemu accepts the connection itself, so an empty
    answer means nothing listens in the guest yet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        return connection.recv(256)


def qemu_command(
    image: Path,
    serial: str,
    memory: str,
    ssh_port: int,
    proxy: Path | None,
    drive: Path | None,
    accel: str = ACCELERATOR,
    restrict: bool = True,
    serial_copy: Path | None = None,
) -> list[str]:
    """The qemu command line; ``serial`` is a chardev (``file:LOG``, ``stdio``), and ``serial_copy`` a file
    that also gets what a ``stdio`` console shows. ``restrict`` leaves the guest nothing to reach but the
    forwards."""
    image_format = "qcow2" if image.suffix == ".qcow2" else "raw"
    network = f"user,id=n0,restrict={'on' if restrict else 'off'},net={GUEST_NETWORK}"
    network += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    if proxy is not None:
        network += f",guestfwd=tcp:{METADATA_ADDRESS}:80-cmd:{proxy}"
    command = ["qemu-system-x86_64", "-accel", accel, "-cpu", "max", "-m", memory, "-smp", "1"]
    if serial == "stdio" and serial_copy is not None:
        serial_options = ["-chardev", f"stdio,id=serial0,logfile={serial_copy}", "-serial", "chardev:serial0"]
    else:
        serial_options = ["-serial", serial]
    command += ["-display", "none", "-vga", "std", *serial_options, "-monitor", "none"]
    command += ["-no-reboot", "-snapshot", "-drive", f"file={image},if=virtio,format={image_format}"]
    if drive is not None:
        # After the root disk, so the root stays /dev/vda.
        command += ["-drive", f"file={drive},if=virtio,format=raw,readonly=on"]
    return [*command, "-netdev", network, "-device", "virtio-net-pci,netdev=n0"]


@contextlib.contextmanager
def running(command: list[str], qemu_log: Path, console: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """qemu for as long as the context, its messages in ``qemu_log``; with ``console`` the terminal
    stays its stdin and stdout (for ``-serial stdio``)."""
    with qemu_log.open("w") as qemu_output:
        qemu = subprocess.Popen(
            command,
            stdin=None if console else subprocess.DEVNULL,
            stdout=None if console else qemu_output,
            stderr=qemu_output,
        )
    try:
        yield qemu
    finally:
        if qemu.poll() is None:
            qemu.terminate()
            try:
                qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()


def qemu_exited(qemu: subprocess.Popen[bytes], qemu_log: Path) -> str | None:
    if qemu.poll() is None:
        return None
    details = qemu_log.read_text(errors="replace").strip()
    return f"qemu exited with status {qemu.returncode}" + (f": {details}" if details else "")


def grown_disk(
    image: Path, grow_to: Callable[[int], int], scratch: Path, run: Callable[[Sequence[str | Path], str], str]
) -> tuple[Path, int]:
    """A copy-on-write disk over ``image`` of ``grow_to(image's size)`` bytes, and the image's own size.
    ``run(command, what)`` runs a tool and returns its output (each caller reports failures its way)."""
    info = json.loads(run(["qemu-img", "info", "--output=json", image], "qemu-img info"))
    image_bytes = int(info["virtual-size"])
    disk = scratch / "disk.qcow2"
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", info["format"], "-b", image, disk,
         str(grow_to(image_bytes))],
        "qemu-img create",
    )  # fmt: skip
    return disk, image_bytes
