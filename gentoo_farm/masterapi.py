"""The master's REST API (Buildbot's ``api/v2``) as the ``farm`` commands use it: log in, read, force.

A login is Buildbot's own: ``auth/login`` with HTTP Basic sets a session cookie the later calls carry.
Every call has a timeout; an error names the URL path and what the master said, never a password.
"""

from __future__ import annotations

import base64
import getpass
import http.client
import http.cookiejar
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

API_TIMEOUT = 30
READ_ATTEMPTS = 3
"""A read that failed in passing (see MasterApiError.transient; seen under heavy load) is tried this often."""
PASSING_STATUSES = (502, 503, 504)
"""Answers of a master (or a proxy before it) that is starting or overloaded, not a verdict on the request."""
PASSWORD_VARIABLE = "FARM_PASSWORD"
# Buildbot's result codes (buildbot.process.results), by name.
RESULT_NAMES = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")


def force_request(base_url: str, scheduler: str, params: Mapping[str, object]) -> urllib.request.Request:
    """The JSON-RPC call that has the force scheduler ``scheduler`` start a build with ``params``."""
    body = json.dumps({"jsonrpc": "2.0", "method": "force", "id": 1, "params": params}).encode()
    return urllib.request.Request(
        f"{base_url}api/v2/forceschedulers/{scheduler}",
        data=body,
        headers={"Content-Type": "application/json"},
    )


class MasterApiError(Exception):
    """The master did not answer, refused the login, or refused the request; the message says which."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status the master answered with, None when it did not answer."""
        self.transient = transient
        """The master dropped the connection before its answer was complete, or answered one of
        PASSING_STATUSES: a read may be tried again."""


def result_name(results: int | None) -> str:
    if results is None:
        return "running"
    return RESULT_NAMES[results] if 0 <= results < len(RESULT_NAMES) else f"result {results}"


class MasterApi:
    def __init__(self, base_url: str, opener: urllib.request.OpenerDirector | None = None) -> None:
        """``opener``: one that keeps the session cookie of a login (default: a new one)."""
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._opener = opener or urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def _open(self, request: urllib.request.Request | str, what: str) -> bytes:
        try:
            with self._opener.open(request, timeout=API_TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace").strip()[:300]
            raise MasterApiError(
                f"{what}: the master answered {error.code} {error.reason}: {detail}",
                error.code,
                transient=error.code in PASSING_STATUSES,
            ) from None
        except (http.client.HTTPException, ConnectionResetError) as error:
            # RemoteDisconnected (closed before the status line) is both.
            raise MasterApiError(
                f"{what}: the master at {self.base_url} closed the connection mid-answer "
                f"({type(error).__name__})",
                transient=True,
            ) from None
        except (urllib.error.URLError, OSError) as error:
            raise MasterApiError(f"{what}: the master at {self.base_url} does not answer ({error})") from None
        return body

    def _json(self, request: urllib.request.Request | str, what: str) -> Any:
        body = self._open(request, what)
        try:
            return json.loads(body)
        except ValueError:
            raise MasterApiError(f"{what}: the master's answer is not JSON: {body[:200]!r}") from None

    def login(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.base_url}auth/login", headers={"Authorization": f"Basic {token}"}
        )
        try:
            self._open(request, "login")
        except MasterApiError as error:
            if error.status in (401, 403):
                raise MasterApiError(f"login as {user!r} refused: wrong user or password") from None
            raise

    def get(self, path: str) -> Any:
        attempt = 1
        while True:
            try:
                return self._json(f"{self.base_url}api/v2/{path}", path.split("?")[0])
            except MasterApiError as error:
                if not error.transient or attempt == READ_ATTEMPTS:
                    raise
            time.sleep(attempt)
            attempt += 1

    def force(self, scheduler: str, **params: object) -> dict[str, int]:
        """Start a forced build; the build request ids by builder id."""
        answer = self._json(force_request(self.base_url, scheduler, params), f"force {scheduler}")
        if not isinstance(answer, dict) or "result" not in answer:
            raise MasterApiError(f"force {scheduler}: unexpected answer {answer!r}")
        _buildset, requests = answer["result"]
        return {str(builder): int(request_id) for builder, request_id in requests.items()}

    def build_of_request(self, request_id: int) -> dict[str, Any] | None:
        """The newest build that runs the build request, None while it waits for a worker."""
        builds = self.get(f"buildrequests/{request_id}/builds")["builds"]
        return max(builds, key=lambda build: build["buildid"]) if builds else None

    def build(self, builder: str, number: int | None = None) -> dict[str, Any]:
        """A build by builder name and number, or the builder's newest."""
        names = sorted(found["name"] for found in self.get("builders")["builders"])
        if builder not in names:
            raise MasterApiError(f"no builder called {builder!r} (the builders: {', '.join(names)})")
        if number is None:
            builds = self.get(f"builders/{builder}/builds?order=-number&limit=1")["builds"]
        else:
            try:
                builds = self.get(f"builders/{builder}/builds/{number}")["builds"]
            except MasterApiError as error:
                if error.status != 404:
                    raise
                builds = []
        if not builds:
            raise MasterApiError(
                f"no build {builder}/{number}" if number is not None else f"{builder} has no build yet"
            )
        return builds[0]

    def steps(self, build_id: int) -> list[dict[str, Any]]:
        return self.get(f"builds/{build_id}/steps")["steps"]

    def logs(self, step_id: int) -> list[dict[str, Any]]:
        return self.get(f"steps/{step_id}/logs")["logs"]

    def log_text(self, log: dict[str, Any], first_line: int = 0) -> tuple[str, int]:
        """The log's lines from ``first_line`` on, and the number of the next line.

        ``log`` is the log as listed by :meth:`logs`; its ``num_lines`` says how far to read (Buildbot
        answers 404 to an offset past the last line, the normal case of a log with nothing new).
        """
        available = log["num_lines"] - first_line
        if available <= 0:
            return "", first_line
        path = f"logs/{log['logid']}/contents?offset={first_line}&limit={available}"
        text = "".join(chunk["content"] for chunk in self.get(path)["logchunks"])
        return text, first_line + text.count("\n")


def connect(base_url: str, user: str | None) -> MasterApi:
    """The API, logged in as ``user`` when one is given (password from $FARM_PASSWORD or a prompt)."""
    api = MasterApi(base_url)
    if user:
        password = os.environ.get(PASSWORD_VARIABLE)
        if password is None:
            if not sys.stdin.isatty():
                raise MasterApiError(
                    f"no password for {user!r}: set {PASSWORD_VARIABLE} or run on a terminal"
                )
            password = getpass.getpass(f"password for {user} at {api.base_url}: ")
        api.login(user, password)
    return api
