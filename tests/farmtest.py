"""Drive a real farm from tests: `farm init` + `farm up` in a temporary directory, and its REST API."""

import base64
import http.cookiejar
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from buildbot.process.results import RETRY

from gentoo_farm.masterapi import MasterApi, MasterApiError, force_request

if TYPE_CHECKING:
    from tests.world import World

FARM = str(Path(sys.executable).parent / "farm")
Found = TypeVar("Found")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def farm_command(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([FARM, *args], capture_output=True, text=True, timeout=300, input=input)
    if check and result.returncode != 0:
        raise AssertionError(
            f"farm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def set_option(root: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (TOML) in [section] of farm.toml, uncommenting the documented default."""
    path = root / "farm.toml"
    text = path.read_text()
    header = text.index(f"[{section}]\n")
    pattern = re.compile(rf"^#? ?{re.escape(key)} = .*$", re.MULTILINE)
    match = pattern.search(text, header)
    next_header = re.compile(r"^\[", re.MULTILINE).search(text, header + 1)
    if match and (next_header is None or match.start() < next_header.start()):
        text = text[: match.start()] + f"{key} = {value}" + text[match.end() :]
    else:
        end = next_header.start() if next_header else len(text)
        text = text[:end] + f"{key} = {value}\n" + text[end:]
    path.write_text(text)


@dataclass
class Farm:
    root: Path
    admin_password: str
    url: str = ""
    _opener: urllib.request.OpenerDirector = field(init=False)

    def __post_init__(self) -> None:
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def login(self, user: str = "admin", password: str | None = None) -> None:
        token = base64.b64encode(f"{user}:{password or self.admin_password}".encode()).decode()
        request = urllib.request.Request(f"{self.url}auth/login", headers={"Authorization": f"Basic {token}"})
        self._opener.open(request, timeout=30).read()

    def api(self, path: str) -> Any:
        return MasterApi(self.url, self._opener).get(path)

    def force(self, scheduler: str, **params: Any) -> tuple[int, Any]:
        try:
            with self._opener.open(force_request(self.url, scheduler, params), timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def builder_id(self, builder: str) -> int:
        return self.api(f"builders/{builder}")["builders"][0]["builderid"]

    def builds(self, builder: str) -> list[dict[str, Any]]:
        return self.api(f"builders/{self.builder_id(builder)}/builds?order=buildid")["builds"]

    def pending_requests(self, builder: str) -> list[dict[str, Any]]:
        """The build requests of ``builder`` that are neither built nor skipped (collapsed) yet."""
        return self.api(f"buildrequests?builderid={self.builder_id(builder)}&complete=false")["buildrequests"]

    def poll(
        self, look: Callable[[], Found | None], timeout: float, interval: float, waited_for: str
    ) -> Found:
        """What ``look`` finds (not None), asked every ``interval`` s until ``timeout``.

        A read that keeps failing in passing (``MasterApiError.transient``: a loaded master dropping
        answers) counts as nothing found yet: only the deadline fails the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = look()
            except MasterApiError as error:
                if not error.transient:
                    raise
                found = None
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(f"{waited_for} within {timeout} s")
            time.sleep(interval)

    def wait_for_build_to_start(self, builder: str, number: int, timeout: float = 300) -> dict[str, Any]:
        """Build ``number`` (or a later one) of ``builder`` as soon as the master has started it."""

        def started() -> dict[str, Any] | None:
            return next((build for build in self.builds(builder) if build["number"] >= number), None)

        return self.poll(started, timeout, 0.5, f"{builder} build #{number} did not start")

    def wait_for_build(self, builder: str, number: int = 1, timeout: float = 300) -> dict[str, Any]:
        """The first finished build numbered ``number`` or later that was not retried.

        A latent worker that is still stopping when the next build wants it makes Buildbot mark
        that build RETRY and run the request again as the next number.
        """

        def finished() -> dict[str, Any] | None:
            return next(
                (
                    build
                    for build in self.builds(builder)
                    if build["number"] >= number and build["complete"] and build["results"] != RETRY
                ),
                None,
            )

        return self.poll(finished, timeout, 1, f"{builder} build #{number} did not finish")

    def steps(self, build: dict[str, Any]) -> list[dict[str, Any]]:
        return self.api(f"builds/{build['buildid']}/steps")["steps"]

    def log(self, build: dict[str, Any], step_name: str, log: str = "stdio") -> str:
        (step,) = [step for step in self.steps(build) if step["name"] == step_name]
        log_id = next(
            item["logid"] for item in self.api(f"steps/{step['stepid']}/logs")["logs"] if item["slug"] == log
        )
        lines = self.api(f"logs/{log_id}/contents")["logchunks"]
        return "".join(chunk["content"] for chunk in lines)

    def properties(self, build: dict[str, Any]) -> dict[str, Any]:
        return {
            name: value
            for name, (value, _source) in self.api(f"builds/{build['buildid']}/properties")["properties"][
                0
            ].items()
        }


def init_farm(root: Path, *init_options: str) -> Farm:
    output = farm_command("init", *init_options, str(root)).stdout
    password = re.search(r"Web UI login: admin / (\S+)", output).group(1)
    web_port, worker_port, store_port = free_port(), free_port(), free_port()
    set_option(root, "master", "web_address", f'"127.0.0.1:{web_port}"')
    set_option(root, "master", "worker_address", f'"127.0.0.1:{worker_port}"')
    set_option(root, "store", "listen", f'"127.0.0.1:{store_port}"')
    set_option(root, "schedule", "nightly", "false")
    farm = Farm(root=root, admin_password=password, url=f"http://127.0.0.1:{web_port}/")
    return farm


def toml_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def configure_for_world(farm: Farm, world: "World", upstream_url: str, kernel_source: str) -> None:
    """Point a farm at the stand-in world: its mirror, keys, profile, package set, kernel source."""
    set_option(farm.root, "upstream", "mirror", json.dumps(upstream_url))
    set_option(farm.root, "upstream", "keyring", json.dumps(str(world.keyring)))
    set_option(farm.root, "upstream", "release_key", json.dumps(world.release_fingerprint))
    set_option(farm.root, "upstream", "snapshot_key", json.dumps(world.snapshot_fingerprint))
    set_option(farm.root, "upstream", "profile", json.dumps(world.profile))
    set_option(farm.root, "kernel", "source", json.dumps(kernel_source))
    set_option(farm.root, "image", "packages", toml_list(world.package_set))
    # The boot test runs a command of an emerged package over SSH.
    set_option(farm.root, "image", "boot_test_commands", toml_list([world.static_binary]))
    set_option(farm.root, "image", "disk_size", '"1G"')
