"""A crossbar.io WAMP router on 127.0.0.1 for tests: the message router Buildbot's ``wamp`` mq needs.

Crossbar pins its own versions of Twisted, autobahn and more, so it lives in a virtual environment of its
own (not the farm's .venv), made once from PyPI into the test cache (tests/cache.py) under a key of the
pinned version, the Python it runs on and the recipe that makes it. Its configuration is minimal: one
router, one realm whose anonymous role may do everything, one WebSocket transport on a free port of
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import cache
from tests.farmtest import free_port

CROSSBAR_VERSION = "26.10.1"
"""The crossbar release the tests run (on PyPI; it supports Python 3.11 to 3.14)."""
PYTHON_VERSIONS = ("3.12", "3.11", "3.13")
"""Pythons crossbar runs on, the first found used: pyenv's (/root/.pyenv, as on the CI machines), else the
Python the tests run on (3.11, the master's)."""
PYENV_VERSIONS = Path("/root/.pyenv/versions")
REALM = "realm1"
INSTALL_TIMEOUT = 900
START_TIMEOUT = 60
STOP_TIMEOUT = 30
RUN_CROSSBAR = "import sys, crossbar; sys.argv[0] = 'crossbar'; sys.exit(crossbar.run())"


@dataclass(frozen=True)
class Crossbar:
    port: int
    realm: str
    log: Path

    @property
    def router_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def _python() -> tuple[str, Path]:
    for version in PYTHON_VERSIONS:
        found = sorted(PYENV_VERSIONS.glob(f"{version}.*/bin/python{version}"))
        if found:
            return version, found[-1]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix) / "bin" / f"python{version}"
    if version in PYTHON_VERSIONS and base.is_file():
        return version, base
    pytest.skip(
        f"crossbar {CROSSBAR_VERSION} needs Python 3.11 or later apart from the master's venv: none of "
        f"{', '.join(PYTHON_VERSIONS)} under {PYENV_VERSIONS}"
    )


def _build_venv(python: Path, path: Path) -> None:
    subprocess.run([str(python), "-m", "venv", str(path)], check=True, timeout=120)
    subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", f"crossbar=={CROSSBAR_VERSION}"],
        check=True,
        timeout=INSTALL_TIMEOUT,
    )


def crossbar_venv() -> Path:
    """The cached venv with crossbar installed (built once per crossbar version, Python and recipe)."""
    version, python = _python()
    key = cache.source_hash([], inspect.getsource(_build_venv), CROSSBAR_VERSION, version, str(python))
    return cache.entry("crossbar-venv", key, lambda path: _build_venv(python, path))


def router_config(port: int, realm: str = REALM) -> dict[str, object]:
    """Crossbar's config.json: a router with ``realm`` (anonymous may do everything) on 127.0.0.1:``port``."""
    everything = {"call": True, "register": True, "publish": True, "subscribe": True}
    return {
        "version": 2,
        "controller": {},
        "workers": [
            {
                "type": "router",
                "realms": [
                    {
                        "name": realm,
                        "roles": [
                            {
                                "name": "anonymous",
                                "permissions": [
                                    {
                                        "uri": "",
                                        "match": "prefix",
                                        "allow": everything,
                                        "disclose": {"caller": False, "publisher": False},
                                        "cache": True,
                                    }
                                ],
                            }
                        ],
                    }
                ],
                "transports": [
                    {
                        "type": "websocket",
                        "endpoint": {"type": "tcp", "interface": "127.0.0.1", "port": port},
                        "url": f"ws://127.0.0.1:{port}/ws",
                        "serializers": ["json", "msgpack", "cbor"],
                    }
                ],
            }
        ],
    }


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_crossbar() -> Iterator[Crossbar]:
    """A crossbar router of its own (``crossbar start --cbdir``), stopped and removed at the end."""
    venv = crossbar_venv()
    top = Path(tempfile.mkdtemp(prefix="farm-crossbar-"))
    cbdir = top / ".crossbar"
    cbdir.mkdir()
    port = free_port()
    (cbdir / "config.json").write_text(json.dumps(router_config(port), indent=2))
    log = top / "crossbar.log"
    # crossbar's entry point run by the venv's python, not bin/crossbar: the cache renames the venv after
    # building it, and its scripts' #! lines name the venv's first path.
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), "-c", RUN_CROSSBAR, "start", "--cbdir", str(cbdir)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=top,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"crossbar did not answer on 127.0.0.1:{port} within {START_TIMEOUT} s "
                    f"(exit {process.poll()}):\n{log.read_text()[-4000:]}"
                )
            time.sleep(0.5)
        yield Crossbar(port=port, realm=REALM, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def crossbar() -> Iterator[Crossbar]:
    with running_crossbar() as running:
        yield running
