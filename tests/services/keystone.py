"""A real Keystone (PyPI ``keystone``) on 127.0.0.1 for tests, under gunicorn.

Usage from a test module::

    from tests.services.keystone import keystone  # noqa: F401  (the session fixture)

    def test_something(keystone, tmp_path):
        keystone.register_service("compute", "nova", "http://127.0.0.1:1234/v2.1")
        clouds = keystone.write_clouds_yaml(tmp_path / "clouds.yaml", cloud="demo", username="demo")
        # OS_CLIENT_CONFIG_FILE=clouds -> openstack.connect(cloud="demo")

Outside pytest, ``with running_keystone(workdir) as ks: ...`` does the same.

What is bootstrapped: the ``admin`` user (admin on project ``admin`` and on the system), projects
``service`` and ``demo``, user ``glance`` (admin + service on ``service``: what a service user
validating tokens needs), user ``demo`` (member on ``demo``). Passwords are random per run and held
in :attr:`Keystone.passwords`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openstack
import openstack.connection
import pytest
import yaml

VENV_BIN = Path(sys.executable).parent
REGION = "RegionOne"
T = TypeVar("T")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

# keystone.wsgi.api parses sys.argv at import time and rejects gunicorn's own flags.
WSGI_SHIM = textwrap.dedent(
    """\
    import sys

    sys.argv = sys.argv[:1]
    from keystone.wsgi.api import application  # noqa: E402,F401
    """
)

# keystone-manage's four setup commands in one interpreter: the imports dominate (2.4 s vs 7.8 s).
BOOTSTRAP_SCRIPT = textwrap.dedent(
    """\
    import json
    import sys

    from keystone.cmd import cli

    for argv in json.loads(sys.argv[1]):
        cli.CONF.reset()
        cli.CONF.clear()
        try:
            cli.main(argv=["keystone-manage", *argv])
        except SystemExit as exit_:
            if exit_.code:
                raise
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """A WSGI app under gunicorn in its own process group, logging to a file."""

    def __init__(
        self,
        app: str,
        port: int,
        workdir: Path,
        env: Mapping[str, str],
        health_path: str,
        name: str,
    ) -> None:
        self.app = app
        self.port = port
        self.workdir = workdir
        self.env = dict(env)
        self.health_url = f"http://127.0.0.1:{port}{health_path}"
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        command = [
            str(VENV_BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--timeout",
            "300",
            "--no-control-socket",
            "--chdir",
            str(self.workdir),
            "--pythonpath",
            str(self.workdir),
            self.app,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status < 400:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} not healthy at {self.health_url} after {timeout:.0f} s:\n{self.log_tail()}"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGINT the process group (gunicorn's quick shutdown), SIGKILL it if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Keystone:
    """A running, bootstrapped Keystone."""

    auth_url: str
    workdir: Path
    server: GunicornServer
    passwords: dict[str, str] = field(default_factory=dict)
    # project each user is scoped to by default
    home_projects: dict[str, str] = field(default_factory=dict)

    def connection(
        self, username: str = "admin", project: str | None = None
    ) -> openstack.connection.Connection:
        return openstack.connect(
            auth_url=self.auth_url,
            username=username,
            password=self.passwords[username],
            project_name=project or self.home_projects[username],
            user_domain_name="Default",
            project_domain_name="Default",
            region_name=REGION,
            # never pick up a developer's ~/.config/openstack/clouds.yaml
            load_yaml_config=False,
            load_envvars=False,
        )

    def create_project(self, name: str) -> None:
        self.connection().identity.create_project(name=name, domain_id="default")

    def create_user(self, name: str, project: str, roles: Sequence[str]) -> str:
        """Create a user with the given roles on ``project``; returns its (random) password."""
        admin = self.connection()
        password = secrets.token_urlsafe(16)
        project_obj = admin.identity.find_project(project, ignore_missing=False)
        user = admin.identity.create_user(
            name=name, password=password, domain_id="default", default_project_id=project_obj.id
        )
        for role_name in roles:
            role = admin.identity.find_role(role_name, ignore_missing=False)
            admin.identity.assign_project_role_to_user(project_obj, user, role)
        self.passwords[name] = password
        self.home_projects[name] = project
        return password

    def register_service(self, service_type: str, name: str, url: str) -> None:
        """Put a service in the catalog with public/internal/admin endpoints at ``url``, in place of any
        earlier one of that type (a stand-in a previous test started and stopped is no longer there)."""
        admin = self.connection()
        for earlier in admin.identity.services(type=service_type):
            for endpoint in admin.identity.endpoints(service_id=earlier.id):
                admin.identity.delete_endpoint(endpoint)
            admin.identity.delete_service(earlier)
        service = admin.identity.create_service(type=service_type, name=name, is_enabled=True)
        for interface in ("public", "internal", "admin"):
            admin.identity.create_endpoint(
                service_id=service.id, interface=interface, url=url, region_id=REGION
            )

    def cloud_entry(self, username: str, project: str | None = None) -> dict[str, object]:
        return {
            "auth_type": "password",
            "auth": {
                "auth_url": self.auth_url,
                "username": username,
                "password": self.passwords[username],
                "project_name": project or self.home_projects[username],
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": REGION,
            "interface": "public",
            "identity_api_version": 3,
        }

    def write_clouds_yaml(self, path: Path, cloud: str, username: str, project: str | None = None) -> Path:
        """Add (or replace) cloud ``cloud`` in the clouds.yaml at ``path`` (password auth); returns path."""
        document: dict[str, dict[str, object]] = {"clouds": {}}
        if path.exists():
            document = yaml.safe_load(path.read_text()) or document
            document.setdefault("clouds", {})
        document["clouds"][cloud] = self.cloud_entry(username, project)
        path.write_text(yaml.safe_dump(document, sort_keys=True))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        self.server.stop()


def _write_config(workdir: Path) -> Path:
    config = workdir / "keystone.conf"
    config.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            use_stderr = true

            [database]
            connection = sqlite:///{workdir}/keystone.db

            [token]
            provider = fernet

            [fernet_tokens]
            key_repository = {workdir}/fernet-keys

            [fernet_receipts]
            key_repository = {workdir}/fernet-keys

            [credential]
            key_repository = {workdir}/credential-keys

            [identity]
            # bcrypt at its cheapest: tests authenticate often
            password_hash_rounds = 4

            [cache]
            enabled = true
            backend = dogpile.cache.memory
            """
        )
    )
    return config


def start_keystone(workdir: Path) -> Keystone:
    workdir.mkdir(parents=True, exist_ok=True)
    config = _write_config(workdir)
    (workdir / "keystone_wsgi.py").write_text(WSGI_SHIM)
    port = free_port()
    auth_url = f"http://127.0.0.1:{port}/v3"
    admin_password = secrets.token_urlsafe(16)
    ids = ["--keystone-user", "root", "--keystone-group", "root"]
    manage_commands = [
        ["--config-file", str(config), "db_sync"],
        ["--config-file", str(config), "fernet_setup", *ids],
        ["--config-file", str(config), "credential_setup", *ids],
        [
            "--config-file",
            str(config),
            "bootstrap",
            # One argument: a generated password may begin with "-".
            f"--bootstrap-password={admin_password}",
            "--bootstrap-admin-url",
            auth_url,
            "--bootstrap-internal-url",
            auth_url,
            "--bootstrap-public-url",
            auth_url,
            "--bootstrap-region-id",
            REGION,
        ],
    ]
    bootstrap = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP_SCRIPT, json.dumps(manage_commands)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (workdir / "bootstrap.log").write_text(bootstrap.stdout + bootstrap.stderr)
    if bootstrap.returncode != 0:
        raise RuntimeError(f"keystone-manage bootstrap failed:\n{bootstrap.stderr[-3000:]}")

    server = GunicornServer(
        "keystone_wsgi:application",
        port,
        workdir,
        env={"OS_KEYSTONE_CONFIG_DIR": str(workdir)},
        health_path="/v3",
        name="keystone",
    )
    server.start()
    keystone = Keystone(auth_url, workdir, server, {"admin": admin_password}, {"admin": "admin"})
    try:
        keystone.create_project("service")
        keystone.create_project("demo")
        keystone.create_user("glance", "service", ["admin", "service"])
        keystone.create_user("demo", "demo", ["member"])
    except Exception:
        server.stop()
        raise
    return keystone


@contextlib.contextmanager
def running_keystone(workdir: Path) -> Iterator[Keystone]:
    keystone = start_keystone(workdir)
    try:
        yield keystone
    finally:
        keystone.stop()


_SHARED: dict[str, list[Any]] = {}


@contextlib.contextmanager
def shared_service(name: str, start: Callable[[], T], stop: Callable[[T], None]) -> Iterator[T]:
    """One running service per test process, however many test modules import its session fixture.

    A session fixture imported into two modules is two fixtures to pytest, and would start two
    services side by side; this hands the second the first one's instance and stops it after the last.
    """
    entry = _SHARED.get(name)
    if entry is None:
        entry = _SHARED[name] = [start(), 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _SHARED[name]
            stop(entry[0])


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    start = functools.partial(start_keystone, tmp_path_factory.mktemp("keystone"))
    with shared_service("keystone", start, Keystone.stop) as running:
        yield running
