"""The farm commands' REST client: a read the master drops half-way is tried again; other errors are not."""

import contextlib
import http.server
import threading
from collections.abc import Iterator

import pytest

from gentoo_farm import masterapi
from gentoo_farm.masterapi import MasterApi, MasterApiError

ANSWER = b'{"builders": []}'


class FlakyMaster(http.server.ThreadingHTTPServer):
    """Answers GETs; the first ``drops`` answers stop after their headers, as a master under load did."""

    def __init__(self, drops: int, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.drops, self.status, self.requests = drops, status, 0


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyMaster

    def do_GET(self) -> None:
        self.server.requests += 1
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        if self.server.requests > self.server.drops:
            self.wfile.write(ANSWER)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(drops: int, status: int = 200) -> Iterator[FlakyMaster]:
    server = FlakyMaster(drops, status)
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


def test_a_dropped_read_is_tried_again() -> None:
    with serve(drops=masterapi.READ_ATTEMPTS - 1) as server:
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
