"""The store server as the master runs it: a BuildbotService serving a local store over HTTP."""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from twisted.internet import threads
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
