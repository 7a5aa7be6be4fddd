"""The Buildbot master's configuration, composed from farm.toml one config key per module.

A farm's ``master/master.cfg`` calls :func:`buildmaster_config` with the farm directory.
"""

from pathlib import Path
from typing import Any

from gentoo_farm.config import load_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.master import builders, change_sources, mq, schedulers, services, workers, www


def buildmaster_config(farm_root: Path) -> dict[str, Any]:
    config = load_config(farm_root)
    farm = FarmDir(config.basedir)
    fleet = workers.openstack_fleet(config)
    # A master without "builds" has no workers and no builders: Buildbot's masters claim build
    # requests only for builders they have, so builds stay on the masters that run them. Schedulers
    # and change sources are on every master; Buildbot runs each on one of them.
    builds = "builds" in config.master.roles
    return {
        "title": config.farm.title,
        "titleURL": config.master.buildbot_url,
        "buildbotURL": config.master.buildbot_url,
        "db": {"db_url": config.master.db_url},
        "multiMaster": config.master.multi_master,
        "mq": mq.mq(config),
        "protocols": {"pb": {"port": workers.pb_port(config)}} if builds else {},
        "workers": workers.workers(config, farm, fleet) if builds else [],
        "builders": builders.builders(config) if builds else [],
        "schedulers": schedulers.schedulers(config),
        "change_source": change_sources.change_sources(config),
        "services": services.services(config, farm, fleet),
        # port None: Buildbot serves no web UI and no REST API on this master
        "www": www.www(config, farm) if "ui" in config.master.roles else {"port": None},
        "buildbotNetUsageData": None,
    }
