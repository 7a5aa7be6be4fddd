"""c['change_source']: the recipe's git repositories, polled and knocked by their post-receive hooks.

The kernel config and the overlay each live in a git repository. A GitPoller (not the change
hook's own `base` dialect) turns pushes into changes, one per commit with its files, and stays
correct when a knock is lost or a branch is force-pushed.
"""

from buildbot.plugins import changes

from gentoo_farm.config import FarmConfig
from gentoo_farm.recipes import recipe_repositories


def change_sources(config: FarmConfig) -> list[changes.GitPoller]:
    return [
        changes.GitPoller(
            repourl=repository.url,
            name=repository.poller,
            branches=[repository.branch],
            pollInterval=repository.poll_interval,
            pollAtLaunch=True,
            workdir=f"gitpoller-{repository.poller}",
        )
        for repository in recipe_repositories(config)
    ]
