"""HTTP access to a local store: read-only GET/HEAD for everyone, PUT only with a signed URL for that key.

Portage reads the binhost (``binpkgs/<profile>/``) and distfile mirror (``distfiles/``) from it, people
download images, workers upload through the URLs :meth:`LocalStore.upload_url` signs. In the master it runs as
``gentoo_farm.master.store_server.StoreServer`` (a Buildbot service); ``python -m gentoo_farm.store.server``
serves a store on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import unquote

from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.interfaces import IListeningPort
from twisted.python import log
from twisted.web import resource, server, static

from gentoo_farm.config import host_port
from gentoo_farm.store.base import StoreError, check_key
from gentoo_farm.store.local import LocalStore


class StoreResource(resource.Resource):
    isLeaf = True

    def __init__(self, store: LocalStore) -> None:
        super().__init__()
        self.store = store

    def _key(self, request: server.Request) -> str | None:
        key = unquote(request.path.decode("utf-8", "replace")).lstrip("/")
        try:
            return check_key(key)
        except StoreError:
            return None

    def _error(self, request: server.Request, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (message + "\n").encode()

    def render_GET(self, request: server.Request) -> bytes | int:
        key = self._key(request)
        path = self.store.path_of(key) if key else None
        if path is None or not path.is_file():
            return self._error(request, 404, "no such object")
        # static.File brings Range requests (resumed downloads), HEAD and content types.
        return static.File(str(path)).render(request)

    render_HEAD = render_GET

    def render_PUT(self, request: server.Request) -> bytes | int:
        key = self._key(request)
        if key is None:
            return self._error(request, 400, "invalid key")

        def argument(name: bytes) -> str:
            return request.args.get(name, [b""])[0].decode("ascii", "replace")

        problem = self.store.check_upload_signature(key, argument(b"expires"), argument(b"signature"))
        if problem:
            return self._error(request, 403, f"upload of {key} refused: {problem}")
        request.content.seek(0)
        writing = threads.deferToThread(self.store.put_stream, key, request.content)

        def written(_: None) -> None:
            request.setResponseCode(201)
            request.write(b"stored\n")
            request.finish()

        def failed(failure: object) -> None:
            log.err(failure, f"store server: writing {key} failed")
            request.setResponseCode(500)
            request.write(b"the store could not write the object\n")
            request.finish()

        writing.addCallbacks(written, failed)
        return server.NOT_DONE_YET


def parse_listen(listen: str) -> tuple[str, int]:
    try:
        return host_port(listen, any_port=True)
    except ValueError as error:
        raise StoreError(f"store listen address {listen!r}: {error}") from None


def serve(store: LocalStore, listen: str) -> defer.Deferred[IListeningPort]:
    """Serve ``store`` on the reactor at ``listen`` (HOST:PORT; port 0: any free one)."""
    host, port = parse_listen(listen)
    return endpoints.TCP4ServerEndpoint(reactor, port, interface=host).listen(
        server.Site(StoreResource(store))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve a local artifact store over HTTP.")
    parser.add_argument("root", help="the store directory")
    parser.add_argument("--listen", default="127.0.0.1:8011", help="HOST:PORT (port 0: any free port)")
    args = parser.parse_args()
    store = LocalStore(Path(args.root).resolve(), "")

    def started(listening: object) -> None:
        address = listening.getHost()  # type: ignore[attr-defined]
        print(f"serving {store.root} on http://{address.host}:{address.port}", flush=True)

    listening = serve(store, args.listen)
    listening.addCallbacks(started, lambda failure: (print(failure.getErrorMessage()), reactor.stop()))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
