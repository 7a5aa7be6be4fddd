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
from typing import cast
from urllib.parse import parse_qs, unquote

from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web import http, resource, server, static

from gentoo_farm.config import host_port
from gentoo_farm.store.base import PreconditionFailed, StoreError, check_key
from gentoo_farm.store.local import LocalStore

# How long a refused request's body is drained so that its client can read the refusal.
REFUSED_LINGER_SECONDS = 10


class StoreResource(resource.Resource):
    isLeaf = True

    def __init__(self, store: LocalStore) -> None:
        super().__init__()
        self.store = store

    def key_of(self, path: bytes) -> str | None:
        """The store key a request path names, or None when it names none."""
        key = unquote(path.decode("utf-8", "replace")).lstrip("/")
        try:
            return check_key(key)
        except StoreError:
            return None

    def refusal(self, method: bytes, uri: bytes, content_length: int | None) -> tuple[int, str] | None:
        """The status and reason a request is refused with, judged from its request line and headers alone
        (the body has not been read), or None to go ahead."""
        if method in (b"GET", b"HEAD"):
            return (400, "a read carries no body") if content_length else None
        if method != b"PUT":
            return 405, f"{method.decode('ascii', 'replace')} is not allowed: the store is read-only"
        path, _, query = uri.partition(b"?")
        key = self.key_of(path)
        if key is None:
            return 400, "invalid key"
        fields = {name: values[0] for name, values in parse_qs(query.decode("ascii", "replace")).items()}
        problem = self.store.check_upload(key, fields, content_length)
        if problem is not None:
            return 403, f"upload of {key} refused: {problem}"
        if self.store.head(key) is not None:
            # What S3 answers a conditional PUT whose object exists: this URL has been used.
            return 412, f"upload of {key} refused: it exists already (an upload URL writes once)"
        return None

    def _error(self, request: server.Request, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (message + "\n").encode()

    def render_GET(self, request: server.Request) -> bytes | int:
        key = self.key_of(request.path)
        path = self.store.path_of(key) if key else None
        if path is None or not path.is_file():
            return self._error(request, 404, "no such object")
        # static.File brings Range requests (resumed downloads), HEAD and content types.
        return static.File(str(path)).render(request)

    render_HEAD = render_GET

    def render_PUT(self, request: server.Request) -> bytes | int:
        # StoreChannel judged the headers already; asking again costs nothing and keeps this resource safe
        # behind any other channel.
        length = request.getHeader(b"content-length")
        refused = self.refusal(b"PUT", request.uri, int(length) if length and length.isdigit() else None)
        key = self.key_of(request.path)
        if refused is not None or key is None:
            return self._error(request, *(refused or (400, "invalid key")))
        body = request.content
        assert body is not None, "a request has its content once its body is in"
        body.seek(0)
        writing = threads.deferToThread(self.store.put_new, key, body)

        def written(_: None) -> None:
            request.setResponseCode(201)
            request.write(b"stored\n")
            request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(PreconditionFailed):
                # Two PUTs through one URL at the same moment: the other one landed first.
                request.setResponseCode(412)
                request.write(f"upload of {key} refused: {failure.getErrorMessage()}\n".encode())
            else:
                log.err(failure, f"store server: writing {key} failed")
                request.setResponseCode(500)
                request.write(b"the store could not write the object\n")
            request.finish()

        writing.addCallbacks(written, failed)
        return server.NOT_DONE_YET


class StoreChannel(http.HTTPChannel):
    """An HTTP channel that judges each request once its headers are in, before the body is read.

    Twisted spools a whole body to a temporary file before any resource sees the request; an unsigned
    or oversized upload is answered here instead, and the connection closed, so nothing of its body is
    read or stored.
    """

    site: server.Site

    def allHeadersReceived(self) -> None:
        # Twisted keeps the request line on the channel until the body is in; these names are the only
        # place it can be read at this point.
        refused = self.site.resource.refusal(self._command, self._path, self.length)
        if refused is None:
            super().allHeadersReceived()
            return
        code, message = refused
        body = (message + "\n").encode()
        # The channel's TCP connection: set since the connection was made.
        transport = cast(ITCPTransport, self.transport)
        transport.write(
            b"HTTP/1.1 %d %s\r\n" % (code, http.RESPONSES.get(code, b"Refused"))
            + b"Content-Type: text/plain; charset=utf-8\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )
        log.msg(f"store server: refused {self._command.decode('ascii', 'replace')} {message}")
        # Whatever of the body arrives from now on is dropped unread. Closing at once would reset the
        # connection under a client still sending its body (a second PUT through a used URL): its send
        # fails with a broken pipe before it reads this answer. So only the sending half closes now, and
        # the connection ends when the client hangs up or REFUSED_LINGER_SECONDS have passed.
        self.length = None
        self.dataReceived = self.rawDataReceived = lambda data: None  # type: ignore[method-assign]  # drops the rest unread
        transport.loseWriteConnection()
        self.setTimeout(REFUSED_LINGER_SECONDS)


def access_log_line(timestamp: str, request: server.Request) -> str:
    """Twisted's combined log line without the query string: a signed URL's query is its credential."""
    return http.combinedLogFormatter(timestamp, _WithoutQuery(request))


class _WithoutQuery:
    """The request as the access log sees it: every attribute, but ``uri`` is only the path."""

    def __init__(self, request: server.Request) -> None:
        self._request = request
        self.uri = request.path

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)


def store_site(store: LocalStore) -> server.Site:
    """The HTTP site serving ``store``: early refusals and an access log without signatures."""
    site = server.Site(StoreResource(store), logFormatter=access_log_line)
    site.protocol = StoreChannel  # type: ignore[method-assign,assignment]  # typed as Twisted's factory method
    return site


def parse_listen(listen: str) -> tuple[str, int]:
    try:
        return host_port(listen, any_port=True)
    except ValueError as error:
        raise StoreError(f"store listen address {listen!r}: {error}") from None


def serve(store: LocalStore, listen: str) -> defer.Deferred[IListeningPort]:
    """Serve ``store`` on the reactor at ``listen`` (HOST:PORT; port 0: any free one)."""
    host, port = parse_listen(listen)
    return endpoints.TCP4ServerEndpoint(reactor, port, interface=host).listen(store_site(store))


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve a local artifact store over HTTP.")
    parser.add_argument("root", help="the store directory")
    parser.add_argument("--listen", default="127.0.0.1:8011", help="HOST:PORT (port 0: any free port)")
    args = parser.parse_args()
    store = LocalStore(Path(args.root).resolve(), "")

    def started(listening: IListeningPort) -> None:
        address = cast(IPv4Address, listening.getHost())  # a TCP4 endpoint's
        print(f"serving {store.root} on http://{address.host}:{address.port}", flush=True)

    listening = serve(store, args.listen)

    def failed(failure: Failure) -> None:
        print(failure.getErrorMessage())
        reactor.stop()

    listening.addCallbacks(started, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
