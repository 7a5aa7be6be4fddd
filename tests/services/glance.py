"""A real Glance (PyPI ``glance``, ``glance.wsgi.api`` under gunicorn) behind the test Keystone.

Filesystem store, imports enabled (glance-direct, web-download, copy-image). web-download may fetch
from 127.0.0.1 on :attr:`Glance.download_port` only (Glance refuses local URLs unless told): a test
that serves files for an import binds that port. ``with glance.down(): ...`` stops the server and
starts it again afterwards on the same port ("Glance is down").

Usage::

    from tests.services.glance import glance  # noqa: F401
    from tests.services.keystone import keystone  # noqa: F401
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.keystone import VENV_BIN, GunicornServer, Keystone, free_port, shared_service

PASTE_CONFIG = Path(sys.prefix) / "etc" / "glance" / "glance-api-paste.ini"


@dataclass
class Glance:
    url: str
    keystone: Keystone
    server: GunicornServer
    download_port: int
    datadir: Path

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def stop(self) -> None:
        self.server.stop()


def _write_config(workdir: Path, keystone: Keystone, port: int, download_port: int) -> Path:
    for name in ("images", "staging", "tasks", "locks"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    config = workdir / "glance-api.conf"
    config.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            enabled_backends = fs:file
            enabled_import_methods = [glance-direct,web-download,copy-image]
            worker_self_reference_url = http://127.0.0.1:{port}
            use_stderr = true

            [glance_store]
            default_backend = fs

            [fs]
            filesystem_store_datadir = {workdir}/images

            [os_glance_staging_store]
            filesystem_store_datadir = {workdir}/staging

            [os_glance_tasks_store]
            filesystem_store_datadir = {workdir}/tasks

            [database]
            connection = sqlite:///{workdir}/glance.db

            [paste_deploy]
            config_file = {PASTE_CONFIG}
            flavor = keystone

            [oslo_concurrency]
            lock_path = {workdir}/locks

            [import_filtering_opts]
            allowed_hosts = [127.0.0.1]
            allowed_ports = [{download_port}]

            [keystone_authtoken]
            www_authenticate_uri = {keystone.auth_url}
            auth_url = {keystone.auth_url}
            auth_type = password
            username = glance
            password = {keystone.passwords["glance"]}
            project_name = service
            user_domain_name = Default
            project_domain_name = Default
            service_token_roles_required = true
            """
        )
    )
    return config


def start_glance(keystone: Keystone, workdir: Path) -> Glance:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    download_port = free_port()
    config = _write_config(workdir, keystone, port, download_port)
    db_sync = subprocess.run(
        [str(VENV_BIN / "glance-manage"), "--config-file", str(config), "db_sync"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if db_sync.returncode != 0:
        raise RuntimeError(f"glance-manage db_sync failed:\n{db_sync.stderr[-3000:]}")
    url = f"http://127.0.0.1:{port}"
    server = GunicornServer(
        "glance.wsgi.api:application",
        port,
        workdir,
        env={"OS_GLANCE_CONFIG_DIR": str(workdir)},
        health_path="/healthcheck",
        name="glance",
    )
    server.start()
    keystone.register_service("image", "glance", url)
    return Glance(url, keystone, server, download_port, workdir / "images")


@pytest.fixture(scope="session")
def glance(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glance]:
    start = functools.partial(start_glance, keystone, tmp_path_factory.mktemp("glance"))
    with shared_service("glance", start, Glance.stop) as running:
        yield running
