"""c['workers'] and c['protocols']: the latent workers builds run on, local and OpenStack."""

from buildbot.worker.latent import AbstractLatentWorker

from gentoo_farm.config import FarmConfig, OpenStackWorkersSection, listen_endpoint
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.store import workers_base_url
from gentoo_farm.store.binhost import binhost_url
from gentoo_farm.workers.local import LocalLatentWorker
from gentoo_farm.workers.openstack import OpenStackLatentWorker

# Where an OpenStack instance keeps ccache and kernel sources for as long as it lives.
INSTANCE_CACHE_DIR = "/var/cache/gentoo-farm"


def pb_port(config: FarmConfig) -> str:
    return listen_endpoint(config.master.worker_address)


def local_worker_names(config: FarmConfig) -> list[str]:
    return [f"local-{index}" for index in range(1, config.workers.local.count + 1)]


def openstack_worker_names(pool: OpenStackWorkersSection) -> list[str]:
    """One latent worker per instance the pool may run at once: Buildbot never starts more."""
    return [f"{pool.name}-{index}" for index in range(1, pool.max_instances + 1)]


def worker_names_for(config: FarmConfig, builder: str) -> list[str]:
    names = local_worker_names(config)
    for pool in config.workers.openstack:
        if not pool.builders or builder in pool.builders:
            names += openstack_worker_names(pool)
    return names


def _openstack_workers(config: FarmConfig, pool: OpenStackWorkersSection) -> list[OpenStackLatentWorker]:
    store = workers_base_url(config.store)
    return [
        OpenStackLatentWorker(
            name,
            cloud=pool.cloud,
            flavor=pool.flavor,
            image=pool.image,
            farm_id=config.farm.id,
            master_address=pool.master_address or config.master.worker_address,
            binhost_url=binhost_url(store, config.upstream.profile),
            distfile_mirror_url=store,
            install_spec=pool.install,
            network=pool.network or None,
            key_name=pool.key_name or None,
            security_groups=pool.security_groups,
            volume_size=pool.volume_size or None,
            boot_timeout=pool.boot_timeout,
            build_wait_timeout=pool.build_wait_timeout,
            properties={"cache_dir": INSTANCE_CACHE_DIR},
        )
        for name in openstack_worker_names(pool)
    ]


def workers(config: FarmConfig, farm: FarmDir) -> list[AbstractLatentWorker]:
    local = config.workers.local
    result: list[AbstractLatentWorker] = [
        LocalLatentWorker(
            name,
            basedir=farm.workers / name,
            master_address=config.master.worker_address,
            max_builds=local.max_builds,
            build_wait_timeout=local.build_wait_timeout,
            # Kept across builds (each start gets a fresh base directory): ccache, kernel sources.
            properties={"cache_dir": str(local.cache_dir / name)},
        )
        for name in local_worker_names(config)
    ]
    for pool in config.workers.openstack:
        result += _openstack_workers(config, pool)
    return result
