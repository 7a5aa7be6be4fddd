"""A tiny HTTP server standing in for an upstream Gentoo mirror (or the farm's own mirror).

It serves one directory on 127.0.0.1, honours ``Range`` requests (so resumed downloads can be
tested), records every request, and has switches to slow down, fail, or go down entirely.
"""

import email.utils
import http.server
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class ServedRequest:
    method: str
    path: str
    status: int
    range: str | None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the request log on WorldServer is the record."""

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, *, send_body: bool) -> None:
        url_path = unquote(urlsplit(self.path).path)
        status = self.server.owner.fail_status
        if status is None:
            self._send_file(url_path, send_body)
        else:
            self._start_answer(url_path, status, {"Content-Length": "0"})

    def _start_answer(self, url_path: str, status: int, headers: dict[str, str]) -> None:
        """Log the request, then send the status line and ``headers``.

        Logged before any byte goes out, so a client that has its answer finds its request in the log
        (logged after the body, a loaded machine could let the client read the log first).
        """
        range_header = self.headers.get("Range")
        self.server.owner._record(ServedRequest(self.command, url_path, status, range_header))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_file(self, url_path: str, send_body: bool) -> None:
        file_path = self.server.owner.resolve(url_path)
        if file_path is None or not file_path.is_file():
            self._start_answer(url_path, 404, {"Content-Length": "0"})
            return
        size = file_path.stat().st_size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes=") :].partition("-")
            start = int(first) if first else 0
            end = min(int(last), size - 1) if last else size - 1
            if start >= size:
                self._start_answer(url_path, 416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                return
            status = 206
        headers = {
            "Content-Length": str(end - start + 1),
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(file_path.stat().st_mtime, usegmt=True),
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._start_answer(url_path, status, headers)
        if send_body:
            self._copy(file_path, start, end - start + 1)

    def _copy(self, file_path: Path, offset: int, length: int) -> None:
        delay = self.server.owner.delay_per_chunk
        with file_path.open("rb") as source:
            source.seek(offset)
            while length > 0:
                chunk = source.read(min(CHUNK_SIZE, length))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                length -= len(chunk)
                if delay:
                    time.sleep(delay)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "WorldServer"


class WorldServer:
    """Serve ``directory`` over HTTP on 127.0.0.1; use as a context manager.

    ``delay_per_chunk`` (seconds per 64 KiB) slows it down, ``fail_status`` answers every request
    with that status code, ``go_down()`` stops listening (connections are refused) until ``come_up()``.
    """

    def __init__(self, directory: Path, *, port: int = 0) -> None:
        self.directory = Path(directory).resolve()
        self.port = port
        self.delay_per_chunk = 0.0
        self.fail_status: int | None = None
        self._requests: list[ServedRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ServedRequest]:
        with self._lock:
            return list(self._requests)

    def requested_paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def clear_log(self) -> None:
        with self._lock:
            self._requests.clear()

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path names, or None when it would leave the served directory."""
        candidate = Path(os.path.normpath(self.directory / url_path.lstrip("/")))
        if candidate != self.directory and self.directory not in candidate.parents:
            return None
        return candidate

    def _record(self, request: ServedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def come_up(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"world-server-{self.port}", daemon=True
        )
        self._thread.start()

    def go_down(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> "WorldServer":
        self.come_up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.go_down()
