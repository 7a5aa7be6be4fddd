"""c['workers'] and c['protocols']: the latent workers builds run on."""

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.workers.local import LocalLatentWorker


def pb_port(config: FarmConfig) -> str:
    host, _, port = config.master.worker_address.rpartition(":")
    return f"tcp:{port}:interface={host}"


def master_address(config: FarmConfig) -> tuple[str, int]:
    host, _, port = config.master.worker_address.rpartition(":")
    return host, int(port)


def local_worker_names(config: FarmConfig) -> list[str]:
    return [f"local-{index}" for index in range(1, config.workers.local.count + 1)]


def workers(config: FarmConfig, farm: FarmDir) -> list[LocalLatentWorker]:
    local = config.workers.local
    return [
        LocalLatentWorker(
            name,
            basedir=farm.workers / name,
            master_address=master_address(config),
            max_builds=local.max_builds,
            build_wait_timeout=local.build_wait_timeout,
            # Kept across builds (each start gets a fresh base directory): ccache, kernel sources.
            properties={"cache_dir": str(farm.root / "cache" / name)},
        )
        for name in local_worker_names(config)
    ]
