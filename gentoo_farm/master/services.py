"""c['services']: long-running helpers inside the master."""

from buildbot.util.service import BuildbotService

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir


def services(config: FarmConfig, farm: FarmDir) -> list[BuildbotService]:
    return []
