"""The store server as the master runs it: a BuildbotService serving a local store over HTTP."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.python import log
from twisted.python.log import textFromEventDict
from twisted.trial import unittest

from gentoo_farm.master.store_server import StoreServer
from gentoo_farm.store.local import LocalStore


def _request(url: str, data: bytes | None = None, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method=method), timeout=10
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class StoreServerServiceTest(unittest.TestCase):
    async def test_serves_reads_and_signed_writes_until_stopped(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="farm-store-server-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        service = StoreServer(store_path=str(root), listen="127.0.0.1:0")
        await service.reconfigService(store_path=str(root), listen="127.0.0.1:0")
        await service.startService()
        base = f"http://127.0.0.1:{service.listening_port.getHost().port}"
        store = LocalStore(root, base)
        store.put_bytes("binpkgs/p/Packages", b"PACKAGES: 0\n")

        status, body = await threads.deferToThread(_request, f"{base}/binpkgs/p/Packages")
        self.assertEqual((status, body), (200, b"PACKAGES: 0\n"))
        status, _ = await threads.deferToThread(_request, f"{base}/binpkgs/p/x.gpkg.tar", b"x", "PUT")
        self.assertEqual(status, 403)
        url = store.upload_url("binpkgs/p/x.gpkg.tar", 60)
        status, _ = await threads.deferToThread(_request, url, b"package bytes", "PUT")
        self.assertEqual(status, 201)
        self.assertEqual(store.get_bytes("binpkgs/p/x.gpkg.tar"), b"package bytes")

        await service.stopService()
        with self.assertRaises(urllib.error.URLError):
            await threads.deferToThread(urllib.request.urlopen, f"{base}/binpkgs/p/Packages", timeout=5)


def _headers_only(base: str, path: str, length: int, method: str = "PUT") -> tuple[bytes, bool]:
    """Send a request's headers announcing ``length`` bytes, none of the body; the server's answer and
    whether it then closed the connection."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        closed = False
        with contextlib.suppress(TimeoutError):
            connection.settimeout(5)
            rest = connection.recv(65536)
            while rest:
                answer += rest
                rest = connection.recv(65536)
            closed = True
        return answer, closed


class StoreServerRefusesEarlyTest(unittest.TestCase):
    """Refusals come from the headers: the answer arrives while not one byte of the body has been sent."""

    async def _started(self) -> tuple[str, LocalStore]:
        root = Path(tempfile.mkdtemp(prefix="farm-store-server-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        service = StoreServer(store_path=str(root), listen="127.0.0.1:0")
        await service.reconfigService(store_path=str(root), listen="127.0.0.1:0")
        await service.startService()
        self.addCleanup(service.stopService)
        base = f"http://127.0.0.1:{service.listening_port.getHost().port}"
        return base, LocalStore(root, base)

    async def test_an_unsigned_or_oversized_upload_is_refused_before_its_body(self) -> None:
        base, store = await self._started()
        big = 150 * 1024 * 1024

        answer, closed = await threads.deferToThread(_headers_only, base, "/images/s/x.qcow2", big)
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertIn(b"the URL is not signed", answer)
        self.assertNotIn(b"100 Continue", answer)
        self.assertTrue(closed, "the connection closes instead of waiting for the body")

        # Signed, but for 10 bytes: 150 MiB announced is refused just as early.
        sized = urlsplit(store.upload_url("images/s/x.qcow2", 60, size=10))
        answer, closed = await threads.deferToThread(_headers_only, base, f"{sized.path}?{sized.query}", big)
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertIn(b"the URL is for 10 bytes, the request announces 157286400", answer)
        self.assertTrue(closed)

        # A read with a body, or another method, is not spooled either.
        answer, closed = await threads.deferToThread(_headers_only, base, "/images/s/x.qcow2", big, "GET")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 ") and closed, answer)
        answer, closed = await threads.deferToThread(_headers_only, base, "/images/s/x.qcow2", big, "POST")
        self.assertTrue(answer.startswith(b"HTTP/1.1 405 ") and closed, answer)

        self.assertIsNone(store.head("images/s/x.qcow2"))
        self.assertEqual(sorted(store.root.rglob("*x.qcow2*")), [], "no partial file in the store")

    async def test_a_signed_url_writes_once(self) -> None:
        _, store = await self._started()
        url = store.upload_url("kernel/s/vmlinuz.tar.xz", 60, size=5)

        status, _ = await threads.deferToThread(_request, url, b"first", "PUT")
        self.assertEqual(status, 201)
        status, body = await threads.deferToThread(_request, url, b"again", "PUT")
        self.assertEqual(status, 412, body)
        self.assertIn(b"an upload URL writes once", body)
        self.assertEqual(store.get_bytes("kernel/s/vmlinuz.tar.xz"), b"first")

    async def test_the_access_log_has_no_signatures(self) -> None:
        _, store = await self._started()
        logged: list[str] = []

        def observe(event: dict[str, object]) -> None:
            logged.append(textFromEventDict(event) or "")

        log.addObserver(observe)
        self.addCleanup(log.removeObserver, observe)
        url = store.upload_url("kernel/s/config", 60)
        status, _ = await threads.deferToThread(_request, url, b"CONFIG_X=y\n", "PUT")
        self.assertEqual(status, 201)
        status, _ = await threads.deferToThread(_request, url, b"CONFIG_X=n\n", "PUT")
        self.assertEqual(status, 412)
        # The access log is written once the connection's requests are done.
        await deferLater(reactor, 0.2, lambda: None)

        access = [line for line in logged if "/kernel/s/config" in line]
        self.assertTrue(any('"PUT /kernel/s/config HTTP/1.1" 201' in line for line in access), logged)
        self.assertEqual([line for line in logged if "signature" in line or "expires=" in line], [])
