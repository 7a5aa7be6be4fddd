"""What one farm's OpenStack workers on a master and their orphan reapers share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

_Result = TypeVar("_Result")

_FARM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

# Threads for waits on servers (boot up to boot_timeout, deletion up to delete_timeout): one per
# instance booting at once, beyond which waits queue. Not Twisted's default pool of 10, which
# logins, the store and every other SDK call need while a fleet boots.
WAIT_THREADS = 32


@dataclass
class _Roster:
    tokens: set[str] = field(default_factory=set)
    failed_starts: dict[int, list[str]] = field(default_factory=dict)
    waits: ThreadPool | None = None
    successor: _Roster | None = None

    def absorb(self, other: _Roster) -> None:
        """Take over what ``other`` knows; from now on ``other`` forwards to this roster."""
        if other is self:
            return
        self.tokens |= other.tokens
        for request_id, reasons in other.failed_starts.items():
            self.failed_starts.setdefault(request_id, []).extend(reasons)
        if self.waits is None:
            self.waits = other.waits
        other.successor = self


class OpenStackFleet:
    """The OpenStack workers of the farm ``farm_id`` on this master, as they and the reapers see them.

    - the instance token each worker holds, from before it creates a server until the server is
      deleted: a server of this farm whose token nobody holds is an orphan;
    - failed instance starts per build request: Buildbot retries a request after a failed start on
      any worker, so the bound on attempts must count across workers.

    master.cfg makes one and gives it to every ``OpenStackLatentWorker`` and ``OpenStackOrphanReaper``.
    A reconfig makes a new one; each worker and reaper handed it calls :meth:`take_over` with the
    one it had, which carries everything over and makes the old one read and write the new state,
    so a worker and a reaper never disagree about a token, whichever is reconfigured first.
    """

    def __init__(self, farm_id: str) -> None:
        self.farm_id = farm_id
        self._roster = _Roster()

    def _current(self) -> _Roster:
        while self._roster.successor is not None:
            self._roster = self._roster.successor
        return self._roster

    def take_over(self, previous: OpenStackFleet | None) -> OpenStackFleet:
        """This fleet, holding everything ``previous`` (the one before a reconfig) held."""
        if previous is not None:
            self._current().absorb(previous._current())
        return self

    def hold(self, token: str) -> None:
        """A worker is about to create a server tagged ``token``: no reaper may take it."""
        self._current().tokens.add(token)

    def release(self, token: str) -> None:
        """The server tagged ``token`` is deleted (or left to the reapers)."""
        self._current().tokens.discard(token)

    def live_tokens(self) -> frozenset[str]:
        return frozenset(self._current().tokens)

    def failed_starts(self, request_id: int) -> list[str]:
        """Why instances failed to start for build request ``request_id`` so far, oldest first."""
        return list(self._current().failed_starts.get(request_id, []))

    def record_failed_start(self, request_id: int, reason: str) -> None:
        self._current().failed_starts.setdefault(request_id, []).append(reason)

    def forget_request(self, request_id: int) -> None:
        """The request got a worker, or gave up: its count starts over."""
        self._current().failed_starts.pop(request_id, None)

    def wait(
        self, reactor: Any, function: Callable[..., _Result], *args: Any, **kwargs: Any
    ) -> defer.Deferred[_Result]:
        """Run a long wait ``function`` in the fleet's own pool of :data:`WAIT_THREADS` threads.

        ``reactor`` is the master's; the pool starts with the first wait and stops when the reactor
        shuts down.
        """
        roster = self._current()
        if roster.waits is None:
            roster.waits = ThreadPool(0, WAIT_THREADS, name=f"openstack-waits-{self.farm_id}")
            roster.waits.start()
            reactor.addSystemEventTrigger("during", "shutdown", roster.waits.stop)
        return threads.deferToThreadPool(reactor, roster.waits, function, *args, **kwargs)


def check_fleet(fleet: object) -> None:
    """Raise ValueError unless ``fleet`` is an :class:`OpenStackFleet` with a usable farm id."""
    if not isinstance(fleet, OpenStackFleet):
        raise ValueError(f"fleet must be an OpenStackFleet, got {fleet!r}")
    farm_id = fleet.farm_id
    if not isinstance(farm_id, str) or not _FARM_ID.match(farm_id):
        raise ValueError(f"farm_id {farm_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
