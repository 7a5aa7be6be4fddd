"""Deletes the servers a farm's OpenStack workers left behind (a master crash, a deletion that timed out)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import openstack.connection
from buildbot import config
from buildbot.util import service
from twisted.internet import defer, task, threads
from twisted.python import log

from gentoo_farm.cloud import cloud_errors, connect_to_cloud
from gentoo_farm.workers.latent.fleet import OpenStackFleet, check_fleet
from gentoo_farm.workers.latent.openstack import FARM_ID_KEY, INSTANCE_KEY, MASTER_KEY, WORKER_KEY, master_tag


def orphans(
    servers: Iterable[Any],
    live_tokens: Collection[str],
    this_master: str,
    inactive_masters: Collection[str] | None,
) -> list[Any]:
    """Which of a farm's ``servers`` to delete; ``inactive_masters`` is None on a single master.

    A single master owns every server of its farm (those of its predecessor too, after a crash or a
    move): it deletes each whose token no worker holds. With several masters, a master deletes its own
    servers whose token no worker holds, and every server of a master Buildbot has marked inactive
    (stopped, or silent past Buildbot's expiry); a server of a live master, of a master this database
    does not know (another farm sharing the id by mistake, a master on another database) or without a
    master's name is never touched: whether anyone still uses it cannot be told.
    """
    if inactive_masters is None:
        return [server for server in servers if server.metadata.get(INSTANCE_KEY) not in live_tokens]
    return [
        server
        for server in servers
        if server.metadata.get(MASTER_KEY) in inactive_masters
        or (
            server.metadata.get(MASTER_KEY) == this_master
            and server.metadata.get(INSTANCE_KEY) not in live_tokens
        )
    ]


class OpenStackOrphanReaper(service.BuildbotService):
    """Deletes servers on ``cloud`` (in ``region``; empty: clouds.yaml's region_name) tagged with the
    fleet's farm id whose instance token nobody holds (:func:`orphans` says which).

    Runs when the master starts and then every ``interval`` seconds. A worker holds its token in the
    shared :class:`OpenStackFleet` from before the create call until the deletion finished, so a
    server being created is never reaped; servers without the farm id are never touched. With
    ``multiMaster``, a master reaps its own orphans and the servers of masters Buildbot lists as
    inactive, never those of a live master, and sweeps as soon as Buildbot announces that a master
    stopped (cleanly, or marked inactive after it went silent).
    """

    def __init__(
        self,
        cloud: str,
        fleet: OpenStackFleet,
        interval: float = 300,
        region: str = "",
        name: str | None = None,
    ) -> None:
        self.fleet: OpenStackFleet | None = None
        self._loop: task.LoopingCall | None = None
        self._stopped_masters: Any = None
        # one sweep at a time: the interval's and a stopped master's would list the same orphans
        self._sweeping = defer.DeferredLock()
        self._cloud_connection: openstack.connection.Connection | None = None
        place = f"{cloud}-{region}" if region else cloud
        super().__init__(
            cloud,
            fleet,
            interval,
            region,
            name=name or f"openstack-orphan-reaper-{place}-{getattr(fleet, 'farm_id', None)}",
        )

    def checkConfig(self, cloud: str, fleet: OpenStackFleet, interval: float = 300, region: str = "") -> None:
        if not isinstance(cloud, str) or not cloud:
            config.error(f"OpenStack orphan reaper: cloud must be a clouds.yaml name, got {cloud!r}")
        try:
            check_fleet(fleet)
        except ValueError as error:
            config.error(f"OpenStack orphan reaper: {error}")
        if not isinstance(interval, int | float) or interval <= 0:
            config.error(
                f"OpenStack orphan reaper: interval must be a positive number of seconds, got {interval!r}"
            )
        if not isinstance(region, str):
            config.error(f"OpenStack orphan reaper: region must be a region name or empty, got {region!r}")

    def reconfigService(
        self, cloud: str, fleet: OpenStackFleet, interval: float = 300, region: str = ""
    ) -> None:
        if (cloud, region) != (getattr(self, "cloud", cloud), getattr(self, "region", region)):
            self._cloud_connection = None
        self.cloud = cloud
        self.region = region
        # a reconfig brings a new fleet: it takes over the tokens the workers hold now
        self.fleet = fleet.take_over(self.fleet)
        self.interval = interval
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            self._start_loop()

    def _start_loop(self) -> None:
        self._loop = task.LoopingCall(self._sweep_logging_errors)
        self._loop.clock = self.master.reactor
        self._loop_done = self._loop.start(self.interval, now=True)

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()
        if self.master.config.multiMaster:
            # A master Buildbot has just marked inactive leaves its servers to the others: reap them now,
            # not up to an interval later.
            self._stopped_masters = yield self.master.mq.startConsuming(
                self._master_stopped, ("masters", None, "stopped")
            )
        self._start_loop()

    @defer.inlineCallbacks
    def stopService(self):
        if self._stopped_masters is not None:
            self._stopped_masters.stopConsuming()
            self._stopped_masters = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            yield self._loop_done
        yield super().stopService()

    def _master_stopped(self, routing_key: tuple[str, ...], message: dict[str, Any]) -> defer.Deferred[None]:
        log.msg(f"{self.name}: master {message.get('name')!r} stopped: sweeping for its servers")
        return self._sweep_logging_errors()

    def _sweep_logging_errors(self) -> defer.Deferred[None]:
        d = self.sweep()
        d.addErrback(lambda failure: log.msg(f"{self.name}: sweep failed: {failure.getErrorMessage()}"))
        return d.addCallback(lambda _: None)

    def _list_farm_servers(self, farm_id: str) -> list[Any]:
        with cloud_errors(self.cloud, "listing servers"):
            if self._cloud_connection is None:
                self._cloud_connection = connect_to_cloud(self.cloud, self.region)
            return [
                server
                for server in self._cloud_connection.compute.servers(details=True)
                if (server.metadata or {}).get(FARM_ID_KEY) == farm_id and server.status != "DELETED"
            ]

    def _delete(self, server_ids: Iterable[str]) -> None:
        assert self._cloud_connection is not None
        with cloud_errors(self.cloud, "deleting orphan servers"):
            for server_id in server_ids:
                self._cloud_connection.compute.delete_server(server_id, ignore_missing=True)

    def sweep(self) -> defer.Deferred[list[str]]:
        """Delete this farm's unowned servers now; the Deferred fires with their names."""
        return self._sweeping.run(lambda: defer.Deferred.fromCoroutine(self._sweep()))

    async def _sweep(self) -> list[str]:
        assert self.fleet is not None
        servers = await threads.deferToThread(self._list_farm_servers, self.fleet.farm_id)
        # ownership is read after the listing returned: a worker holds its token before it
        # creates a server, so every listed server of a live worker is already marked owned
        tokens = self.fleet.live_tokens()
        inactive: set[str] | None = None
        if self.master.config.multiMaster:
            # read after the listing too: a master that started a listed server is in the database
            masters = await self.master.data.get(("masters",))
            inactive = {master_tag(master["name"]) for master in masters if not master["active"]}
        reaped = orphans(servers, tokens, master_tag(self.master.name), inactive)
        if not reaped:
            return []
        for server in reaped:
            log.msg(
                f"{self.name}: deleting orphan server {server.name} ({server.id}) of worker "
                f"{server.metadata.get(WORKER_KEY)!r} on master {server.metadata.get(MASTER_KEY)!r}: "
                "no running worker owns it"
            )
        await threads.deferToThread(self._delete, [server.id for server in reaped])
        return [server.name for server in reaped]
