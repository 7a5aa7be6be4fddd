"""The Buildbot master's configuration, composed from farm.toml one config key per module.

A farm's ``master/master.cfg`` calls :func:`buildmaster_config` with the farm directory.
"""

from pathlib import Path
from typing import Any

from gentoo_farm.config import load_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master import builders, change_sources, schedulers, services, workers, www


def buildmaster_config(farm_root: Path) -> dict[str, Any]:
    config = load_config(farm_root)
    farm = FarmDir(config.basedir)
    fleet = workers.openstack_fleet(config)
    return {
        "title": config.farm.title,
        "titleURL": config.master.buildbot_url,
        "buildbotURL": config.master.buildbot_url,
        "db": {"db_url": config.master.db_url},
        "protocols": {"pb": {"port": workers.pb_port(config)}},
        "workers": workers.workers(config, farm, fleet),
        "builders": builders.builders(config),
        "schedulers": schedulers.schedulers(config),
        "change_source": change_sources.change_sources(config),
        "services": services.services(config, farm, fleet),
        "www": www.www(config, farm),
        "buildbotNetUsageData": None,
    }
