"""The farm commands' REST client: a read the master drops half-way, hangs up on or answers 502/503/504 (a
master starting or overloaded) is tried again; other errors are not."""

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gentoo_farm import masterapi
from gentoo_farm.masterapi import MasterApi, MasterApiError
from tests.farmtest import Farm

ANSWER = b'{"builders": []}'


class FlakyMaster(http.server.ThreadingHTTPServer):
    """Answers GETs; the first ``drops`` answers fail by ``fault``: "cut" stops after the headers, as a
    master under load did, "hang-up" closes the connection before the status line, a status number
    answers that status."""

    def __init__(self, drops: int, status: int = 200, fault: str | int = "cut") -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.drops, self.status, self.fault, self.requests = drops, status, fault, 0


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyMaster

    def do_GET(self) -> None:
        self.server.requests += 1
        self.close_connection = True
        failing = self.server.requests <= self.server.drops
        if failing and self.server.fault == "hang-up":
            return
        status = self.server.fault if failing and isinstance(self.server.fault, int) else self.server.status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        if not (failing and self.server.fault == "cut"):
            self.wfile.write(ANSWER)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(drops: int, status: int = 200, fault: str | int = "cut") -> Iterator[FlakyMaster]:
    server = FlakyMaster(drops, status, fault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masterapi.time, "sleep", lambda seconds: None)


@pytest.mark.parametrize("fault", ["cut", "hang-up", 502, 503, 504])
def test_a_read_failing_in_passing_is_tried_again(fault: str | int) -> None:
    with serve(drops=masterapi.READ_ATTEMPTS - 1, fault=fault) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert MasterApi(url).get("builders") == {"builders": []}
        assert server.requests == masterapi.READ_ATTEMPTS


def test_a_master_that_keeps_dropping_is_named_after_the_last_attempt() -> None:
    with serve(drops=100) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with pytest.raises(
            MasterApiError, match=r"builders: the master at .* closed the connection mid-answer"
        ):
            MasterApi(url).get("builders")
        assert server.requests == masterapi.READ_ATTEMPTS


def test_an_answer_the_master_meant_is_not_tried_again() -> None:
    with serve(drops=0, status=404) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with pytest.raises(MasterApiError, match="the master answered 404"):
            MasterApi(url).get("builders/9")
        assert server.requests == 1


def test_a_master_still_answering_503_is_named_after_the_last_attempt() -> None:
    with serve(drops=100, fault=503) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with pytest.raises(MasterApiError, match="builders: the master answered 503") as failure:
            MasterApi(url).get("builders")
        assert failure.value.transient
        assert server.requests == masterapi.READ_ATTEMPTS


def test_a_wait_of_the_tests_farm_outlasts_more_drops_than_one_read_retries(tmp_path: Path) -> None:
    with serve(drops=masterapi.READ_ATTEMPTS + 1, fault="hang-up") as server:
        farm = Farm(tmp_path, "unused", url=f"http://127.0.0.1:{server.server_address[1]}/")
        assert farm.poll(lambda: farm.api("builders"), 60, 0, "no builders answer") == {"builders": []}
        assert server.requests == masterapi.READ_ATTEMPTS + 2
