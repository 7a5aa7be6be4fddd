"""c['services']: long-running helpers inside the master."""

from buildbot.util.service import BuildbotService

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master.notify import notifiers
from gentoo_farm.master.store_server import StoreServer
from gentoo_farm.workers.latent.fleet import OpenStackFleet
from gentoo_farm.workers.latent.reaper import OpenStackOrphanReaper


def services(config: FarmConfig, farm: FarmDir, fleet: OpenStackFleet) -> list[BuildbotService]:
    result: list[BuildbotService] = []
    store = config.store
    if store.type == "local":
        # A local store is served by the master itself: Portage reads the binhost and distfile
        # mirror from it, people download images from it, workers upload to it with signed URLs.
        result.append(
            StoreServer(store_path=str(store.path), listen=store.listen, public_url=store.public_url)
        )
    # Servers this farm started and no worker owns any more (a crashed or moved master) are deleted,
    # by the masters that run workers. One per region: a connection lists its own region's servers.
    if "builds" in config.master.roles:
        for cloud, region in sorted({(pool.cloud, pool.region) for pool in config.workers.openstack}):
            result.append(OpenStackOrphanReaper(cloud, fleet, region=region))
    result.extend(notifiers(config.notify, farm))
    return result
