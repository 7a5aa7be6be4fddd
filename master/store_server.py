"""The master's store server: a local artifact store over HTTP, as a Buildbot service (``c['services']``)."""

from pathlib import Path

from buildbot.util import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort

from gentoo_farm.store.local import LocalStore
from gentoo_farm.store.server import parse_listen, serve


class StoreServer(service.BuildbotService):
    """Serves a local store inside the master: ``c['services'].append(StoreServer(...))``."""

    name = "artifact-store"
    listening_port: IListeningPort | None

    def checkConfig(self, store_path: str, listen: str = "127.0.0.1:8011", public_url: str = "") -> None:
        parse_listen(listen)

    def reconfigService(
        self, store_path: str, listen: str = "127.0.0.1:8011", public_url: str = ""
    ) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._listen(Path(store_path), listen, public_url))

    async def _listen(self, store_path: Path, listen: str, public_url: str) -> None:
        await self._stop_listening()
        self.store = LocalStore(store_path, public_url or f"http://{listen}")
        self.listening_port = await serve(self.store, listen)

    async def _stop_listening(self) -> None:
        port = getattr(self, "listening_port", None)
        if port is not None:
            self.listening_port = None
            await port.stopListening()

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self._stop_listening()
        await super().stopService()
