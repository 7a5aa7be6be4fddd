"""c['change_source']: the kernel-config repository, polled and knocked by its post-receive hook.

A GitPoller (not the change hook's own `base` dialect) turns pushes into changes, one per
commit with its files, and stays correct when a knock is lost or a branch is force-pushed.
"""

from pathlib import Path

from buildbot.plugins import changes

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import KERNEL_POLLER


def kernel_repository_url(config: FarmConfig) -> str:
    repository = config.kernel.repository
    if "://" in repository or repository.startswith("git@"):
        return repository
    return str((config.basedir / Path(repository)).resolve())


def change_sources(config: FarmConfig) -> list[changes.GitPoller]:
    return [
        changes.GitPoller(
            repourl=kernel_repository_url(config),
            name=KERNEL_POLLER,
            branches=[config.kernel.branch],
            pollInterval=config.kernel.poll_interval,
            pollAtLaunch=True,
            workdir="gitpoller-kernel-config",
        )
    ]
