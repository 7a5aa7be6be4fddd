"""c['workers'] and c['protocols']: the latent workers builds run on, local and OpenStack."""

import os
from pathlib import Path

from buildbot.worker.latent import AbstractLatentWorker

from gentoo_farm.config import FarmConfig, OpenStackWorkersSection, listen_endpoint
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.recipes import recipe_repositories
from gentoo_farm.store import workers_base_url
from gentoo_farm.store.binhost import binhost_url
from gentoo_farm.wheelhouse import MANIFEST_NAME, ServedWheels, worker_wheels_dir
from gentoo_farm.workers.latent.fleet import OpenStackFleet
from gentoo_farm.workers.latent.local import LocalLatentWorker, LocalWorkerSettings
from gentoo_farm.workers.latent.openstack import (
    OpenStackLatentWorker,
    OpenStackPoolSettings,
    openstack_worker_pool,
    pool_worker_names,
)
from gentoo_farm.workers.latent.userns import ID_COUNT

# Where an OpenStack instance keeps ccache and kernel sources for as long as it lives.
INSTANCE_CACHE_DIR = "/var/cache/gentoo-farm"


def pb_port(config: FarmConfig) -> str:
    return listen_endpoint(config.master.worker_address)


def local_worker_names(config: FarmConfig) -> list[str]:
    return [f"local-{index}" for index in range(1, config.workers.local.count + 1)]


def worker_names_for(config: FarmConfig, builder: str) -> list[str]:
    names = local_worker_names(config)
    for pool in config.workers.openstack:
        if not pool.builders or builder in pool.builders:
            names += pool_worker_names(pool.name, pool.max_instances)
    return names


def _openstack_workers(
    config: FarmConfig, pool: OpenStackWorkersSection, fleet: OpenStackFleet
) -> list[OpenStackLatentWorker]:
    store = workers_base_url(config.store)
    settings = OpenStackPoolSettings(
        cloud=pool.cloud,
        flavor=pool.flavor,
        image=pool.image,
        master_address=pool.master_address or config.master.worker_address,
        binhost_url=binhost_url(store, config.upstream.profile),
        distfile_mirror_url=store,
        install_spec=pool.install,
        served_wheels=None if pool.install else served_wheels(config),
        network=pool.network,
        key_name=pool.key_name,
        region=pool.region,
        security_groups=pool.security_groups,
        volume_size=pool.volume_size,
        boot_timeout=pool.boot_timeout,
    )
    return openstack_worker_pool(
        pool.name,
        pool.max_instances,
        fleet=fleet,
        settings=settings,
        max_builds=pool.max_builds,
        build_wait_timeout=pool.build_wait_timeout,
        properties={"cache_dir": INSTANCE_CACHE_DIR},
    )


def served_wheels(config: FarmConfig) -> ServedWheels:
    """The master's wheels as `farm up` prepared them, from the store the workers read."""
    return ServedWheels(
        manifest=worker_wheels_dir(config.basedir) / MANIFEST_NAME,
        store=config.store,
        url_expiry_seconds=config.store.url_expiry_seconds,
    )


def openstack_fleet(config: FarmConfig) -> OpenStackFleet:
    """What the OpenStack workers and orphan reapers of one configuration share."""
    return OpenStackFleet(config.farm.id)


def hidden_from_local_workers(config: FarmConfig, farm: FarmDir) -> list[Path]:
    """What of this machine local builds must not see: passwords, the master's state and log, and a
    local store (its upload secret; workers read and write it through the store server only)."""
    hidden = [farm.secrets, farm.master]
    if config.store.type == "local":
        hidden.append(config.store.path)
    return hidden


def local_build_ids(config: FarmConfig, index: int) -> int | None:
    """The first host id local worker ``index`` (from 0) builds as; ``None`` unless the master is root."""
    if os.geteuid() != 0:
        return None
    return config.workers.local.build_ids + index * ID_COUNT


def workers(config: FarmConfig, farm: FarmDir, fleet: OpenStackFleet) -> list[AbstractLatentWorker]:
    local = config.workers.local
    shared = [
        repository.url for repository in recipe_repositories(config) if Path(repository.url).is_absolute()
    ]
    result: list[AbstractLatentWorker] = [
        LocalLatentWorker(
            name,
            settings=LocalWorkerSettings(
                basedir=farm.workers / name,
                master_address=config.master.worker_address,
                hidden_paths=hidden_from_local_workers(config, farm),
                build_ids=local_build_ids(config, index),
                # Kept across builds (each start gets a fresh base directory): ccache, kernel sources.
                cache_dir=local.cache_dir / name,
                shared_repositories=shared,
            ),
            max_builds=local.max_builds,
            build_wait_timeout=local.build_wait_timeout,
        )
        for index, name in enumerate(local_worker_names(config))
    ]
    for pool in config.workers.openstack:
        result += _openstack_workers(config, pool, fleet)
    return result
