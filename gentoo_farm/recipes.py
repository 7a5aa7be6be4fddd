"""The recipe's git repositories: the kernel config and the image overlay, each watched by a poller."""

from dataclasses import dataclass
from pathlib import Path

from gentoo_farm.config import FarmConfig

KERNEL_POLLER = "kernel-config"
OVERLAY_POLLER = "overlay"


@dataclass(frozen=True)
class RecipeRepository:
    poller: str
    url: str
    branch: str
    poll_interval: int
    settle_seconds: int


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
            config.kernel.settle_seconds,
        ),
        RecipeRepository(
            OVERLAY_POLLER,
            _url(config, config.overlay.repository),
            config.overlay.branch,
            config.overlay.poll_interval,
            config.overlay.settle_seconds,
        ),
    ]


def recipe_repository(config: FarmConfig, poller: str) -> RecipeRepository:
    (found,) = [repository for repository in recipe_repositories(config) if repository.poller == poller]
    return found
