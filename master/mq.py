"""c['mq']: how this master's events reach the others (Buildbot's WAMP queue with several masters)."""

from typing import Any

from gentoo_farm.config import FarmConfig


def mq(config: FarmConfig) -> dict[str, Any]:
    queue = config.master.mq
    if queue.type == "simple":
        return {"type": "simple"}
    return {
        "type": "wamp",
        "router_url": queue.router_url,
        "realm": queue.realm,
        "wamp_debug_level": queue.wamp_debug_level,
    }
