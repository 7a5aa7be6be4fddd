"""c['services']: long-running helpers inside the master."""

from buildbot.util.service import BuildbotService

from gentoo_farm.config import FarmConfig
from gentoo_farm.master.store.server import StoreServer


def services(config: FarmConfig) -> list[BuildbotService]:
    store = config.store
    if store.type != "local":
        return []
    # A local store is served by the master itself: Portage reads the binhost and distfile
    # mirror from it, people download images from it, workers upload to it with signed URLs.
    return [StoreServer(store_path=str(store.path), listen=store.listen, public_url=store.public_url)]
