"""c['change_source']: the recipe's git repositories, polled and knocked by their post-receive hooks.

The kernel config and the overlay each live in a git repository. A GitPoller (not the change
hook's own `base` dialect) turns pushes into changes, one per commit with its files, and stays
correct when a knock is lost or a branch is force-pushed.
"""

from dataclasses import dataclass
from pathlib import Path

from buildbot.plugins import changes

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import KERNEL_POLLER, OVERLAY_POLLER


@dataclass(frozen=True)
class RecipeRepository:
    poller: str
    url: str
    branch: str
    poll_interval: int


def _url(config: FarmConfig, repository: str) -> str:
    if "://" in repository or repository.startswith("git@"):
        return repository
    return str((config.basedir / Path(repository)).resolve())


def recipe_repositories(config: FarmConfig) -> list[RecipeRepository]:
    return [
        RecipeRepository(
            KERNEL_POLLER,
            _url(config, config.kernel.repository),
            config.kernel.branch,
            config.kernel.poll_interval,
        ),
        RecipeRepository(
            OVERLAY_POLLER,
            _url(config, config.overlay.repository),
            config.overlay.branch,
            config.overlay.poll_interval,
        ),
    ]


def recipe_repository(config: FarmConfig, poller: str) -> RecipeRepository:
    (found,) = [repository for repository in recipe_repositories(config) if repository.poller == poller]
    return found


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
