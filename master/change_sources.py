"""c['change_source']: the recipe's git repositories, polled and knocked by their post-receive hooks.

The kernel config and the overlay each live in a git repository. A GitPoller (not the change
hook's own `base` dialect) turns pushes into changes, one per commit with its files, and stays
correct when a knock is lost or a branch is force-pushed.
"""

from typing import Any

from buildbot.plugins import changes
from twisted.internet import defer

from gentoo_farm.config import FarmConfig
from gentoo_farm.recipes import recipe_repositories


class KnockedGitPoller(changes.GitPoller):
    """A GitPoller whose knock (the `poller` change hook) reaches the master that polls it.

    With several masters Buildbot runs each poller on one of them; the hook calls force() on the
    poller of the master it reached, and an inactive poller ignores it. So force() only announces the
    knock on the message queue, and the active poller, wherever it runs, polls once for it.
    """

    _knocks: Any = None

    def _knock_key(self) -> tuple[str, str, str]:
        return ("changesources", str(self.serviceid), "knock")

    def force(self) -> None:
        self.master.mq.produce(self._knock_key(), {"name": self.name})

    def _knocked(self, key: tuple[str, ...], message: dict[str, Any]) -> None:
        self.doPoll()

    @defer.inlineCallbacks
    def activate(self) -> Any:
        yield super().activate()
        self._knocks = yield self.master.mq.startConsuming(self._knocked, self._knock_key())

    @defer.inlineCallbacks
    def deactivate(self) -> Any:
        if self._knocks is not None:
            yield self._knocks.stopConsuming()
            self._knocks = None
        yield super().deactivate()


def change_sources(config: FarmConfig) -> list[changes.GitPoller]:
    return [
        KnockedGitPoller(
            repourl=repository.url,
            name=repository.poller,
            branches=[repository.branch],
            pollInterval=repository.poll_interval,
            pollAtLaunch=True,
            workdir=f"gitpoller-{repository.poller}",
        )
        for repository in recipe_repositories(config)
    ]
