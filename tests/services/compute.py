"""A Compute (Nova) v2.1 API stand-in behind the real test Keystone, whose "VMs" are local processes.

It speaks the subset openstacksdk uses for latent workers: version discovery, flavors, keypairs,
limits, servers (create with metadata/user_data/block_device_mapping_v2, get, list, delete) and the
console-output action. Every request must carry a token that Keystone validates; servers belong to
the token's project. Images are checked against the real Glance when one is given.

Creating a server runs its user-data as the init of a new PID namespace (``unshare --pid``), in the
server's own directory: ``PORTAGE_CONFIGROOT`` and ``FARM_WORKER_HOME`` point inside it, and
``prepare_vm(vm_dir)`` lets a test lay out what the "image" contains. Deleting the server kills the
namespace, and with it every process the user-data started (the buildbot-worker daemon too).

With ``images`` (Glance image id -> qcow2 path on this machine), a server of one of those images is a
real VM instead: qemu boots a copy-on-write disk over the qcow2 under TCG (gentoo_farm/qemuboot.py's
pieces), with the metadata service at 169.254.169.254 serving the server's name as hostname, its id, its
keypair's key and its user-data; the server is ACTIVE once qemu runs (ERROR if qemu exits on its own),
console-output is the serial console, and deleting it stops qemu and removes its disk. The mapping is
the stand-in's, not Glance's: the qcow2 is not uploaded anywhere. The VM reaches nothing but the
metadata service and :attr:`ComputeStandIn.guest_forwards` (``"ADDRESS:PORT"`` the guest connects to,
inside 169.254.0.0/16 -> a port on 127.0.0.1: the master's store, say).

Fault switches (set by tests): :attr:`ComputeStandIn.boot_faults` (``"error"`` — ERROR after
:attr:`error_after` seconds; ``"never-active"`` — stuck in BUILD; ``"no-boot"`` — ACTIVE but the
user-data never runs; ``"crash"`` — ACTIVE without running the user-data, then ERROR after
:attr:`error_after` seconds), :attr:`create_errors` (HTTP status + message returned by the next creates,
e.g. 413/403 quota or 500), and :attr:`max_instances` (quota: 403 beyond it). Every request is
recorded in :attr:`requests` (method, path, headers, body) for leak checks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gentoo_farm import qemuboot
from tests.services.keystone import Keystone, free_port

API_VERSION = "2.1"
# a PID namespace needs CAP_SYS_ADMIN; without root, a user namespace grants it
UNSHARE = ["unshare"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user"]
TOKEN_CACHE_SECONDS = 60.0

FLAVORS: dict[str, dict[str, Any]] = {
    "1": {"id": "1", "name": "m1.small", "ram": 2048, "vcpus": 1, "disk": 20},
    "2": {"id": "2", "name": "m1.large", "ram": 8192, "vcpus": 4, "disk": 80},
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StandInServer:
    id: str
    name: str
    project_id: str
    flavor_id: str
    image_id: str
    metadata: dict[str, str]
    user_data: str | None
    request: dict[str, Any]
    created: float
    status: str = "BUILD"
    fault: dict[str, Any] | None = None
    boot_fault: str | None = None
    vm_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    timers: list[threading.Timer] = field(default_factory=list)
    # A VM's metadata service, stopped with the server.
    services: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def view(self, base_url: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "tenant_id": self.project_id,
            "user_id": "stand-in",
            "metadata": dict(self.metadata),
            "flavor": {"id": self.flavor_id, "links": []},
            "image": {"id": self.image_id, "links": []} if self.image_id else "",
            "addresses": {"private": [{"addr": "127.0.0.1", "version": 4}]}
            if self.status == "ACTIVE"
            else {},
            "key_name": self.request.get("key_name"),
            "security_groups": self.request.get("security_groups", [{"name": "default"}]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "links": [{"rel": "self", "href": f"{base_url}/servers/{self.id}"}],
            "OS-EXT-STS:vm_state": self.status.lower(),
            "accessIPv4": "",
            "accessIPv6": "",
            "hostId": "",
            "progress": 0,
        }
        if self.fault:
            body["fault"] = self.fault
        return body


class ComputeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ComputeStandIn:
    def __init__(
        self,
        keystone: Keystone,
        workdir: Path,
        *,
        glance_url: str | None = None,
        prepare_vm: Callable[[Path], None] | None = None,
        service_user: str = "nova",
        images: Mapping[str, Path] | None = None,
    ) -> None:
        self.keystone = keystone
        self.workdir = workdir
        self.glance_url = glance_url
        self.prepare_vm = prepare_vm
        self.images = dict(images or {})
        self.guest_forwards: dict[str, int] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v2.1"
        self.service_user = service_user
        # fault switches
        self.boot_faults: list[str] = []
        self.create_errors: list[tuple[int, str]] = []
        self.max_instances = 100
        self.boot_delay = 0.3
        self.error_after = 1.0
        # what happened
        self.requests: list[RecordedRequest] = []
        self.servers: dict[str, StandInServer] = {}
        self.deleted: dict[str, StandInServer] = {}
        self.peak_servers = 0
        self.keypairs: dict[str, dict[str, str]] = {}
        self._lock = threading.RLock()
        self._valid_tokens: dict[str, tuple[float, str]] = {}
        self._service_token: str | None = None
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.service_user not in self.keystone.passwords:
            self.keystone.create_user(self.service_user, "service", ["admin", "service"])
        stand_in = self

        class Handler(_Handler):
            compute = stand_in

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="compute-stand-in", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            for server in list(self.servers.values()):
                self._power_off(server)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset(self) -> None:
        """Delete every server and clear faults and records (between tests)."""
        with self._lock:
            for server in list(self.servers.values()):
                self._power_off(server)
            self.servers.clear()
            self.deleted.clear()
            self.requests.clear()
            self.boot_faults.clear()
            self.create_errors.clear()
            self.max_instances = 100
            self.peak_servers = 0

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}; servers: {self.describe()}"
        )

    def server_creates(self) -> list[RecordedRequest]:
        """The create-server requests received so far (accepted or refused)."""
        with self._lock:
            return [
                r for r in self.requests if r.method == "POST" and r.path.rstrip("/").endswith("/servers")
            ]

    def describe(self) -> str:
        with self._lock:
            return ", ".join(f"{s.name} {s.status}" for s in self.servers.values()) or "none"

    # -- identity --------------------------------------------------------------------------------

    def _keystone_request(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
        request = urllib.request.Request(
            self.keystone.auth_url + path, data=body, headers=headers, method=method
        )
        return urllib.request.urlopen(request, timeout=30)

    def _get_service_token(self) -> str:
        if self._service_token is None:
            body = {
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {
                            "user": {
                                "name": self.service_user,
                                "domain": {"id": "default"},
                                "password": self.keystone.passwords[self.service_user],
                            }
                        },
                    },
                    "scope": {"project": {"name": "service", "domain": {"id": "default"}}},
                }
            }
            with self._keystone_request(
                "POST", "/auth/tokens", {"Content-Type": "application/json"}, json.dumps(body).encode()
            ) as response:
                self._service_token = response.headers["X-Subject-Token"]
        return self._service_token

    def project_of(self, token: str | None) -> str:
        """The project a valid token is scoped to; 401 for anything Keystone does not vouch for."""
        if not token:
            raise ComputeError(401, "The request you have made requires authentication.")
        now = time.monotonic()
        cached = self._valid_tokens.get(token)
        if cached and cached[0] > now:
            return cached[1]
        for attempt in range(2):
            headers = {"X-Auth-Token": self._get_service_token(), "X-Subject-Token": token}
            try:
                with self._keystone_request("GET", "/auth/tokens", headers) as response:
                    project_id = json.load(response)["token"]["project"]["id"]
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 0:
                    self._service_token = None  # our own token expired
                    continue
                raise ComputeError(401, "The request you have made requires authentication.") from error
            self._valid_tokens[token] = (now + TOKEN_CACHE_SECONDS, project_id)
            return project_id
        raise ComputeError(401, "The request you have made requires authentication.")

    # -- servers ---------------------------------------------------------------------------------

    def _check_image(self, image_id: str, token: str) -> None:
        if self.glance_url is None:
            return
        request = urllib.request.Request(
            f"{self.glance_url}/v2/images/{image_id}", headers={"X-Auth-Token": token}
        )
        try:
            with urllib.request.urlopen(request, timeout=30):
                return
        except urllib.error.HTTPError as error:
            raise ComputeError(400, f"Image {image_id} could not be found.") from error

    def create_server(self, project_id: str, token: str, body: dict[str, Any]) -> StandInServer:
        spec = body.get("server")
        if not isinstance(spec, dict) or not spec.get("name") or not spec.get("flavorRef"):
            raise ComputeError(400, "Invalid input: server name and flavorRef are required")
        if spec["flavorRef"] not in FLAVORS:
            raise ComputeError(400, f"Flavor {spec['flavorRef']} could not be found.")
        key_name = spec.get("key_name")
        if key_name is not None and key_name not in self.keypairs:
            raise ComputeError(400, "Invalid key_name provided.")
        image_id = spec.get("imageRef") or ""
        volumes = spec.get("block_device_mapping_v2") or []
        boot_volume = next((v for v in volumes if int(v.get("boot_index", -1)) == 0), None)
        if not image_id and boot_volume is None:
            raise ComputeError(
                400, "Block Device Mapping is Invalid: Boot sequence for the instance is invalid"
            )
        self._check_image(image_id or boot_volume["uuid"], token)
        user_data = spec.get("user_data")
        if user_data is not None:
            user_data = base64.b64decode(user_data).decode()
        with self._lock:
            if self.create_errors:
                status, message = self.create_errors.pop(0)
                raise ComputeError(status, message)
            in_use = sum(1 for s in self.servers.values() if s.project_id == project_id)
            if in_use >= self.max_instances:
                raise ComputeError(
                    403,
                    f"Quota exceeded for instances: Requested 1, but already used {in_use} "
                    f"of {self.max_instances} instances",
                )
            server = StandInServer(
                id=str(uuid.uuid4()),
                name=spec["name"],
                project_id=project_id,
                flavor_id=spec["flavorRef"],
                image_id=image_id,
                metadata={str(k): str(v) for k, v in (spec.get("metadata") or {}).items()},
                user_data=user_data,
                request=spec,
                created=time.time(),
                boot_fault=self.boot_faults.pop(0) if self.boot_faults else None,
            )
            self.servers[server.id] = server
            self.peak_servers = max(self.peak_servers, len(self.servers))
            self._schedule(server)
        return server

    def _schedule(self, server: StandInServer) -> None:
        if server.boot_fault == "never-active":
            return
        if server.boot_fault == "error":
            timer = threading.Timer(self.error_after, self._fail, (server,))
        else:
            timer = threading.Timer(self.boot_delay, self._boot, (server,))
        timer.daemon = True
        server.timers.append(timer)
        timer.start()

    def _fail(self, server: StandInServer) -> None:
        with self._lock:
            if server.id in self.servers:
                server.status = "ERROR"
                server.fault = {
                    "code": 500,
                    "message": "No valid host was found. There are not enough hosts available.",
                }

    def _boot(self, server: StandInServer) -> None:
        if server.image_id in self.images and server.boot_fault is None:
            self._boot_vm(server, self.images[server.image_id])
            return
        with self._lock:
            if server.id not in self.servers:
                return
            server.status = "ACTIVE"
            vm_dir = server.vm_dir = self.workdir / "vms" / server.id
            (vm_dir / "root").mkdir(parents=True)
            (vm_dir / "home").mkdir()
            console = vm_dir / "console.log"
            if server.boot_fault in ("no-boot", "crash") or server.user_data is None:
                console.write_text("Booting from Hard Disk...\nNo bootable device.\n")
                if server.boot_fault == "crash":
                    timer = threading.Timer(self.error_after, self._fail, (server,))
                    timer.daemon = True
                    server.timers.append(timer)
                    timer.start()
                return
            if self.prepare_vm is not None:
                self.prepare_vm(vm_dir)
            script = vm_dir / "user-data"
            script.write_text(server.user_data)
            env = {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": str(vm_dir / "home"),
                "LANG": "C.UTF-8",
                "PORTAGE_CONFIGROOT": str(vm_dir / "root"),
                "FARM_WORKER_HOME": str(vm_dir / "home"),
            }
            # the namespace's init runs the user-data, then idles like a booted system
            init = 'sh "$1"; echo "user-data exited with status $?"; exec sleep infinity'
            with console.open("wb") as output:
                server.process = subprocess.Popen(
                    [
                        *UNSHARE,
                        "--pid",
                        "--fork",
                        "--kill-child",
                        "--",
                        "sh",
                        "-c",
                        init,
                        "init",
                        str(script),
                    ],
                    cwd=vm_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def _boot_vm(self, server: StandInServer, image: Path) -> None:
        """Boot ``image`` in qemu as ``server``: ACTIVE once qemu runs."""
        with self._lock:
            if server.id not in self.servers:
                return
            vm_dir = server.vm_dir = self.workdir / "vms" / server.id
            vm_dir.mkdir(parents=True)
        flavor = FLAVORS[server.flavor_id]

        def run(command: Sequence[str | Path], what: str) -> str:
            return subprocess.run(
                [str(part) for part in command], check=True, capture_output=True, text=True
            ).stdout

        # The flavor's disk, as Nova gives it; the guest's growroot grows its root into it.
        disk, _ = qemuboot.grown_disk(image, lambda size: max(size, flavor["disk"] * 2**30), vm_dir, run)
        key_name = server.request.get("key_name")
        metadata = qemuboot.Metadata(
            hostname=server.name,
            instance_id=server.id,
            public_key=self.keypairs[key_name]["public_key"] if key_name else "",
            user_data=server.user_data,
        )
        log = vm_dir / "metadata.log"

        def note(line: str) -> None:
            with log.open("a") as output:
                output.write(line + "\n")

        port = server.services.enter_context(qemuboot.metadata_service(metadata.documents(), note))
        command = qemuboot.qemu_command(
            disk,
            f"file:{vm_dir / 'console.log'}",
            f"{flavor['ram']}M",
            free_port(),
            qemuboot.metadata_proxy(port, vm_dir),
            None,
        )
        for number, (guest, host_port) in enumerate(self.guest_forwards.items()):
            forward_dir = vm_dir / f"forward-{number}"
            forward_dir.mkdir()
            proxy = qemuboot.metadata_proxy(host_port, forward_dir)
            command[command.index("-netdev") + 1] += f",guestfwd=tcp:{guest}-cmd:{proxy}"
        with (vm_dir / "qemu.log").open("wb") as qemu_log, self._lock:
            if server.id not in self.servers:
                server.services.close()
                return
            # Its own process group: qemu's guestfwd runs a proxy per connection, stopped with it.
            server.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            server.status = "ACTIVE"
        threading.Thread(target=self._watch_vm, args=(server,), name=f"vm-{server.id}", daemon=True).start()

    def _watch_vm(self, server: StandInServer) -> None:
        """A qemu that exits on its own (not deleted) is a server in ERROR, with qemu's words as fault."""
        assert server.process is not None and server.vm_dir is not None
        status = server.process.wait()
        with self._lock:
            if server.id in self.servers and server.status != "DELETED":
                server.status = "ERROR"
                details = (server.vm_dir / "qemu.log").read_text(errors="replace").strip()
                server.fault = {"code": 500, "message": f"qemu exited with status {status}: {details}"}

    def _power_off(self, server: StandInServer) -> None:
        for timer in server.timers:
            timer.cancel()
        if server.process is not None and server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
        server.services.close()
        if server.vm_dir is not None and server.image_id in self.images:
            (server.vm_dir / "disk.qcow2").unlink(missing_ok=True)

    def delete_server(self, project_id: str, server_id: str) -> None:
        with self._lock:
            server = self.servers.get(server_id)
            if server is None or server.project_id != project_id:
                raise ComputeError(404, f"Instance {server_id} could not be found.")
            server.status = "DELETED"
        self._power_off(server)
        with self._lock:
            self.servers.pop(server_id, None)
            self.deleted[server_id] = server

    def console_output(self, server: StandInServer, length: int | None) -> str:
        if server.vm_dir is None or not (server.vm_dir / "console.log").exists():
            return ""
        lines = (server.vm_dir / "console.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-length:] if length else lines)


class _Handler(BaseHTTPRequestHandler):
    compute: ComputeStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _reply(self, status: int, body: Any | None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("OpenStack-API-Version", f"compute {API_VERSION}")
        self.send_header("X-OpenStack-Nova-API-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        compute = self.compute
        with compute._lock:
            compute.requests.append(RecordedRequest(method, self.path, dict(self.headers.items()), body))
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        query = parse_qs(parts.query)
        try:
            status, reply = self._route(method, path, query, body)
        except ComputeError as error:
            names = {
                400: "badRequest",
                401: "unauthorized",
                403: "forbidden",
                404: "itemNotFound",
                413: "overLimit",
            }
            key = names.get(error.status, "computeFault")
            status, reply = error.status, {key: {"code": error.status, "message": str(error)}}
        self._reply(status, reply)

    def _version(self, base: str) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": API_VERSION,
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/v2.1/"}],
        }

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        compute = self.compute
        base = f"http://127.0.0.1:{compute.port}"
        if path == "" and method == "GET":
            return 200, {"versions": [self._version(base)]}
        if path == "/v2.1" and method == "GET":
            return 200, {"version": self._version(base)}
        if not path.startswith("/v2.1/"):
            raise ComputeError(404, f"no such resource {path}")
        token = self.headers.get("X-Auth-Token")
        project_id = compute.project_of(token)
        resource = path[len("/v2.1") :]
        url = compute.url

        if resource in ("/flavors", "/flavors/detail") and method == "GET":
            return 200, {"flavors": list(FLAVORS.values())}
        if resource.startswith("/flavors/") and method == "GET":
            flavor = FLAVORS.get(resource.split("/")[2])
            if flavor is None:
                raise ComputeError(404, f"Flavor {resource.split('/')[2]} could not be found.")
            return 200, {"flavor": flavor}
        if resource == "/os-keypairs" and method == "GET":
            return 200, {"keypairs": [{"keypair": k} for k in compute.keypairs.values()]}
        if resource.startswith("/os-keypairs/") and method == "GET":
            keypair = compute.keypairs.get(resource.split("/")[2])
            if keypair is None:
                raise ComputeError(404, "Keypair not found")
            return 200, {"keypair": keypair}
        if resource == "/limits" and method == "GET":
            with compute._lock:
                used = sum(1 for s in compute.servers.values() if s.project_id == project_id)
            absolute = {"maxTotalInstances": compute.max_instances, "totalInstancesUsed": used}
            return 200, {"limits": {"absolute": absolute, "rate": []}}
        if resource == "/servers" and method == "POST":
            assert token is not None
            server = compute.create_server(project_id, token, json.loads(body or b"{}"))
            return 202, {"server": {"id": server.id, "links": [], "adminPass": "unused"}}
        if resource in ("/servers", "/servers/detail") and method == "GET":
            with compute._lock:
                servers = [s.view(url) for s in compute.servers.values() if s.project_id == project_id]
            if "name" in query:
                servers = [s for s in servers if query["name"][0] in s["name"]]
            return 200, {"servers": servers}
        if resource.startswith("/servers/"):
            segments = resource.split("/")
            with compute._lock:
                server = compute.servers.get(segments[2])
            if server is None or server.project_id != project_id:
                raise ComputeError(404, f"Instance {segments[2]} could not be found.")
            if len(segments) == 3 and method == "GET":
                return 200, {"server": server.view(url)}
            if len(segments) == 3 and method == "DELETE":
                compute.delete_server(project_id, server.id)
                return 204, None
            if segments[3:] == ["action"] and method == "POST":
                action = json.loads(body or b"{}")
                if "os-getConsoleOutput" in action:
                    length = action["os-getConsoleOutput"].get("length")
                    return 200, {"output": compute.console_output(server, int(length) if length else None)}
                raise ComputeError(400, f"unsupported action {sorted(action)}")
        raise ComputeError(404, f"no such resource {method} {resource}")
