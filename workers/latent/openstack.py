"""Ephemeral OpenStack workers on openstacksdk: boot on demand, build, vanish, leak nothing.

Each :class:`OpenStackLatentWorker` owns at most one server at a time, so ``max_instances`` of a
``[[workers.openstack]]`` entry is the number of workers :func:`openstack_worker_pool` creates
(``<name>-1`` .. ``<name>-N``); Buildbot never runs more servers than that.

Every server carries metadata naming the farm (:data:`FARM_ID_KEY`, the stable id from farm.toml),
the Buildbot master that started it (:data:`MASTER_KEY`), the worker (:data:`WORKER_KEY`) and a
random instance token (:data:`INSTANCE_KEY`) that the worker holds in its
:class:`~gentoo_farm.workers.latent.fleet.OpenStackFleet` while the server may exist; the orphan reaper
(:mod:`gentoo_farm.workers.latent.reaper`) deletes this farm's servers whose token nobody holds.

All openstacksdk calls run in threads (``deferToThread``), never on the reactor; what their failures
mean for a build is :mod:`gentoo_farm.cloud`'s classification.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import openstack.connection
from buildbot import config
from buildbot.interfaces import LatentWorkerCannotSubstantiate, LatentWorkerFailedToSubstantiate
from buildbot.worker.latent import AbstractLatentWorker, States
from openstack import exceptions as sdk_exceptions
from twisted.internet import defer, threads
from twisted.python import log

from gentoo_farm.cloud import CloudCallFailed, Trouble, call_cloud, connect_to_cloud
from gentoo_farm.config import LATEST_FARM_WORKER_IMAGE
from gentoo_farm.glance import FARM_ID_PROPERTY, VARIANT_PROPERTY, newest_farm_image
from gentoo_farm.image_name import WORKER_VARIANT
from gentoo_farm.wheelhouse import ServedWheels, WheelhouseError
from gentoo_farm.workers.latent.bootstrap import WorkerBootstrap, check_worker_name
from gentoo_farm.workers.latent.fleet import OpenStackFleet, check_fleet
from gentoo_farm.workers.latent.instance_password import InstancePasswordMixin

FARM_ID_KEY = "gentoo_farm_id"
MASTER_KEY = "gentoo_farm_master"
WORKER_KEY = "gentoo_farm_worker"
INSTANCE_KEY = "gentoo_farm_instance"
# image = LATEST_FARM_IMAGE boots the newest active Glance image the farm published (FARM_ID_PROPERTY),
# LATEST_FARM_WORKER_IMAGE (the default) its newest worker image: each names one image variant.
LATEST_FARM_IMAGE = "farm-latest"
LATEST_IMAGE_VARIANTS = {LATEST_FARM_IMAGE: "", LATEST_FARM_WORKER_IMAGE: WORKER_VARIANT}
# seconds between looks at a server whose worker has not connected yet (ERROR, connect_timeout)
DEFAULT_CHECK_INTERVAL = 5

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
# what AbstractLatentWorker gets unless the configuration says otherwise: stop after each build
_LATENT_DEFAULTS = {"build_wait_timeout": 0, "check_instance_interval": DEFAULT_CHECK_INTERVAL}

_Result = TypeVar("_Result")
# Nova refuses metadata values longer than this
_METADATA_VALUE_LENGTH = 255


def master_tag(master_name: str) -> str:
    """The :data:`MASTER_KEY` value of servers Buildbot master ``master_name`` (HOST:BASEDIR) starts."""
    return master_name[:_METADATA_VALUE_LENGTH]


@dataclass(frozen=True)
class OpenStackPoolSettings:
    """How the workers of one pool (a ``[[workers.openstack]]`` entry) boot and watch their servers.

    ``image`` is a Glance image name or id, ``"farm-worker-latest"``: the newest active worker image whose
    ``farm_id`` property is the fleet's farm id, or ``"farm-latest"``: its newest cloud image. ``network``
    and ``key_name`` are a name (or an id), empty for none; ``volume_size`` (GiB, 0 or None: boot from the
    image) boots from a volume made from the image. ``boot_timeout``: seconds for the server to become
    ACTIVE; ``connect_timeout``: seconds from ACTIVE until the worker must have connected;
    ``delete_timeout``: seconds a deletion may take; ``poll_interval``: seconds between looks at a server
    being created or deleted. A build request whose instances fail that way ``max_start_attempts`` times
    fails with the last reason.
    ``master_address`` .. ``install_spec`` go to the user-data (:class:`WorkerBootstrap`).
    """

    cloud: str
    flavor: str
    image: str
    master_address: str
    binhost_url: str
    distfile_mirror_url: str
    install_spec: str = ""
    """A pip requirement (a wheel people host themselves) installed instead of ``served_wheels``."""
    served_wheels: ServedWheels | None = None
    """The master's own wheel and wheelhouse, fetched and checked against their sha256 by the instance."""
    network: str | None = None
    key_name: str | None = None
    region: str = ""
    """Empty: the clouds.yaml entry's own ``region_name``."""
    security_groups: Sequence[str] = ()
    volume_size: int | None = None
    boot_timeout: float = 600
    connect_timeout: float = 900
    delete_timeout: float = 300
    max_start_attempts: int = 3
    poll_interval: float = 5

    def problems(self) -> list[str]:
        """What is wrong with these settings, one message naming the key per problem."""
        found = []
        for key in ("cloud", "flavor", "image"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                found.append(f"{key} must be a non-empty string, got {value!r}")
        try:
            self.bootstrap()
        except ValueError as error:
            found.append(str(error))
        if not self.install_spec.strip() and self.served_wheels is None:
            found.append("install_spec: expected a pip requirement (a wheel you host) or the master's wheels")
        for key in ("boot_timeout", "connect_timeout", "delete_timeout", "poll_interval"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                found.append(f"{key} must be a positive number of seconds, got {value!r}")
        attempts = self.max_start_attempts
        if not isinstance(attempts, int) or attempts < 1:
            found.append(f"max_start_attempts must be an integer >= 1, got {attempts!r}")
        size = self.volume_size
        if size is not None and (not isinstance(size, int) or size < 0):
            found.append(f"volume_size must be whole GiB (0: boot from the image), got {size!r}")
        groups = self.security_groups
        if isinstance(groups, str) or not all(isinstance(group, str) for group in groups):
            found.append(f"security_groups must be a list of names, got {groups!r}")
        return found

    def bootstrap(self) -> WorkerBootstrap:
        return WorkerBootstrap(
            self.master_address, self.binhost_url, self.distfile_mirror_url, self.install_spec
        )


def pool_worker_names(name: str, max_instances: int) -> list[str]:
    """``<name>-1`` .. ``<name>-N``: one latent worker per server the pool may run at once."""
    return [f"{name}-{index}" for index in range(1, max_instances + 1)]


class OpenStackLatentWorker(InstancePasswordMixin, AbstractLatentWorker):
    """A latent worker that boots one OpenStack server per substantiation and deletes it afterwards.

    ``fleet`` is shared by all OpenStack workers of the farm and their orphan reapers; ``settings``
    by the workers of one pool. Instances that fail (ERROR, boot timeout, never connected) are
    retried on a new instance up to ``settings.max_start_attempts`` times per build request; quota
    and API errors are retried with Buildbot's quarantine backoff (10 s doubling up to an hour);
    configuration errors (unknown flavor, image, network or key, credentials refused) fail the
    build at once. Other keywords go to Buildbot's ``AbstractLatentWorker`` (``build_wait_timeout``
    defaults to 0: the server goes after each build).

    The worker password is not configured: every instance gets a fresh one, which the master
    forgets as soon as the instance is deleted. ``stop_instance`` always waits for the deletion,
    bounded by ``delete_timeout``; a server it could not delete is left to the orphan reaper.
    """

    # Both set by reconfigService, before the worker can start an instance.
    settings: OpenStackPoolSettings
    bootstrap: WorkerBootstrap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.fleet: OpenStackFleet | None = None
        self._server_id: str | None = None
        self._server_name: str | None = None
        self._instance_token: str | None = None
        self._active_since: float | None = None
        self._starting_request: int | None = None
        self._cloud_connection: openstack.connection.Connection | None = None
        super().__init__(*args, **kwargs)

    def checkConfig(
        self, name: str, *, fleet: OpenStackFleet, settings: OpenStackPoolSettings, **kwargs: Any
    ) -> None:
        where = f"OpenStack worker {name!r}"
        try:
            check_worker_name(name)
            check_fleet(fleet)
        except ValueError as error:
            config.error(f"{where}: {error}")
        if not isinstance(settings, OpenStackPoolSettings):
            config.error(f"{where}: settings must be an OpenStackPoolSettings, got {settings!r}")
        else:
            for problem in settings.problems():
                config.error(f"{where}: {problem}")
        super().checkConfig(name, None, **{**_LATENT_DEFAULTS, **kwargs})

    @defer.inlineCallbacks
    def reconfigService(
        self, name: str, *, fleet: OpenStackFleet, settings: OpenStackPoolSettings, **kwargs: Any
    ):
        kwargs = {**_LATENT_DEFAULTS, **kwargs}
        # Buildbot's own backstop behind boot_timeout + connect_timeout (checked in check_instance)
        kwargs.setdefault(
            "missing_timeout",
            int(settings.boot_timeout + settings.connect_timeout + 5 * kwargs["check_instance_interval"]),
        )
        yield super().reconfigService(name, None, **kwargs)
        if self._cloud_connection is not None and (settings.cloud, settings.region) != (
            self.settings.cloud,
            self.settings.region,
        ):
            self._cloud_connection = None
        # a reconfig brings a new fleet: it takes over the token of a server we may own right now
        self.fleet = fleet.take_over(self.fleet)
        self.settings = settings
        self.bootstrap = settings.bootstrap()

    @property
    def _fleet(self) -> OpenStackFleet:
        """The fleet; reconfigService sets it before the worker can start an instance."""
        assert self.fleet is not None, f"{self.name}: no fleet before reconfigService"
        return self.fleet

    # -- talking to the cloud (these run in threads) ---------------------------------------------

    def _call(
        self, action: str, function: Callable[..., _Result], *args: Any, **kwargs: Any
    ) -> defer.Deferred[_Result]:
        """Run ``function`` in a thread; SDK errors become :class:`CloudCallFailed`."""
        return threads.deferToThread(call_cloud, self.settings.cloud, action, function, *args, **kwargs)

    def _wait(self, action: str, function: Callable[..., _Result], *args: Any) -> defer.Deferred[_Result]:
        """Like :meth:`_call`, for waits of minutes: in the fleet's own bounded thread pool."""
        return self._fleet.wait(self.master.reactor, call_cloud, self.settings.cloud, action, function, *args)

    def _connection(self) -> openstack.connection.Connection:
        if self._cloud_connection is None:
            self._cloud_connection = connect_to_cloud(self.settings.cloud, self.settings.region)
        return self._cloud_connection

    def _not_found(self, what: str) -> CloudCallFailed:
        return CloudCallFailed(f"cloud {self.settings.cloud!r}: {what} not found", Trouble.CONFIGURATION)

    def _resolve_image_id(self) -> str:
        connection = self._connection()
        image, farm_id = self.settings.image, self._fleet.farm_id
        if image not in LATEST_IMAGE_VARIANTS:
            try:
                return connection.image.find_image(image, ignore_missing=False).id
            except sdk_exceptions.NotFoundException as error:
                raise self._not_found(f"image {image!r}") from error
        variant = LATEST_IMAGE_VARIANTS[image]
        newest = newest_farm_image(connection, farm_id, variant)
        if newest is None:
            marked = f" and {VARIANT_PROPERTY}={variant}" if variant else f" and no {VARIANT_PROPERTY}"
            raise self._not_found(
                f"image {image!r} (an active image of this project with "
                f"{FARM_ID_PROPERTY}={farm_id}{marked}: has this farm published one yet?)"
            )
        return newest.id

    def _resolve_network_id(self) -> str | None:
        network = self.settings.network or None
        if network is None or _UUID.match(network):
            return network
        try:
            return self._connection().network.find_network(network, ignore_missing=False).id
        except sdk_exceptions.NotFoundException as error:
            raise self._not_found(f"network {network!r}") from error

    def _create_server(self, server_name: str, user_data: str, token: str) -> str:
        settings = self.settings
        compute = self._connection().compute
        try:
            flavor = compute.find_flavor(settings.flavor, ignore_missing=False)
        except sdk_exceptions.NotFoundException as error:
            raise self._not_found(f"flavor {settings.flavor!r}") from error
        image_id = self._resolve_image_id()
        network_id = self._resolve_network_id()
        attrs: dict[str, Any] = {
            "name": server_name,
            "flavor_id": flavor.id,
            "user_data": base64.b64encode(user_data.encode()).decode("ascii"),
            "metadata": {
                FARM_ID_KEY: self._fleet.farm_id,
                MASTER_KEY: master_tag(self.master.name),
                WORKER_KEY: self.name,
                INSTANCE_KEY: token,
            },
            # without a network Nova picks the project's only one or fails with a clear 409
            "networks": [{"uuid": network_id}] if network_id else "auto",
        }
        # farm.toml spells "none" as "" and 0
        if not settings.volume_size:
            attrs["image_id"] = image_id
        else:
            attrs["block_device_mapping"] = [
                {
                    "boot_index": 0,
                    "uuid": image_id,
                    "source_type": "image",
                    "destination_type": "volume",
                    "volume_size": settings.volume_size,
                    "delete_on_termination": True,
                }
            ]
        if settings.key_name:
            attrs["key_name"] = settings.key_name
        if settings.security_groups:
            attrs["security_groups"] = [{"name": group} for group in settings.security_groups]
        return compute.create_server(**attrs).id

    def _wait_until_active(self, server_id: str) -> None:
        compute = self._connection().compute
        server = compute.get_server(server_id)
        try:
            compute.wait_for_server(
                server,
                status="ACTIVE",
                failures=["ERROR"],
                interval=self.settings.poll_interval,
                wait=self.settings.boot_timeout,
            )
        except sdk_exceptions.ResourceFailure as error:
            server = compute.get_server(server_id)
            fault = (server.fault or {}).get("message") or "no fault message"
            raise CloudCallFailed(
                f"server {server.name} ({server_id}) went to ERROR: {fault}", Trouble.INSTANCE
            ) from error
        except sdk_exceptions.ResourceTimeout as error:
            status = compute.get_server(server_id).status
            raise CloudCallFailed(
                f"server {server_id} not ACTIVE after {self.settings.boot_timeout:g} s (status {status})",
                Trouble.INSTANCE,
            ) from error

    def _server_trouble(self, server_id: str, waited: float) -> str | None:
        """Why a server whose worker has not connected yet should be given up, or None."""
        compute = self._connection().compute
        try:
            server = compute.get_server(server_id)
        except sdk_exceptions.NotFoundException:
            return f"server {server_id} disappeared before its worker connected"
        if server.status == "ERROR":
            fault = (server.fault or {}).get("message") or "no fault message"
            return f"server {server.name} ({server_id}) went to ERROR: {fault}"
        connect_timeout = self.settings.connect_timeout
        if waited < connect_timeout:
            return None
        try:
            console = compute.get_server_console_output(server_id, length=10).get("output", "")
        except sdk_exceptions.SDKException:
            console = ""
        tail = " | ".join(line.strip() for line in console.strip().splitlines()[-5:]) or "(empty)"
        return (
            f"server {server.name} ({server_id}) is {server.status} but its worker did not connect "
            f"within {connect_timeout:g} s; console: {tail}"
        )

    def _delete_server(self, server_id: str) -> None:
        compute = self._connection().compute
        try:
            compute.delete_server(server_id, ignore_missing=True)
            server = compute.get_server(server_id)
        except sdk_exceptions.NotFoundException:
            return
        compute.wait_for_delete(
            server, interval=self.settings.poll_interval, wait=self.settings.delete_timeout
        )

    # -- the latent worker protocol ----------------------------------------------------------------

    def start_instance(self, build: Any) -> defer.Deferred[bool]:
        return defer.Deferred.fromCoroutine(self._start_instance(build))

    async def _start_instance(self, build: Any) -> bool:
        if self._server_id is not None:
            raise LatentWorkerFailedToSubstantiate(self.name, f"still owns server {self._server_id}")
        request_id = min((request.id for request in build.requests), default=None)
        self._starting_request = request_id
        failures = self._fleet.failed_starts(request_id) if request_id is not None else []
        if request_id is not None and len(failures) >= self.settings.max_start_attempts:
            self._fleet.forget_request(request_id)
            raise LatentWorkerCannotSubstantiate(
                f"{self.name}: gave up after {len(failures)} failed instance starts; last: {failures[-1]}"
            )

        bootstrap = self.bootstrap
        wheel_urls: dict[str, str] = {}
        if self.settings.served_wheels is not None:
            try:
                wheels, wheel_urls = self.settings.served_wheels.for_instance()
            except WheelhouseError as error:
                raise LatentWorkerCannotSubstantiate(f"{self.name}: {error}") from error
            bootstrap = dataclasses.replace(bootstrap, wheels=wheels)
        password = self.instance_password.issue()
        # held before the server exists, so that no reaper sweep can see it unowned
        self._instance_token = token = secrets.token_hex(6)
        self._fleet.hold(token)
        self._server_name = f"{self._fleet.farm_id}-{self.name}-{token}"
        user_data = bootstrap.render(self.name, password, wheel_urls)
        cloud = self.settings.cloud
        try:
            self._server_id = await self._call(
                "creating a server", self._create_server, self._server_name, user_data, token
            )
            log.msg(f"{self.name}: created server {self._server_name} ({self._server_id}) on {cloud}")
            await self._wait("waiting for the server", self._wait_until_active, self._server_id)
        except CloudCallFailed as error:
            await self._forget_instance()
            if error.trouble is Trouble.CONFIGURATION:
                raise LatentWorkerCannotSubstantiate(f"{self.name}: {error}") from error
            if error.trouble is Trouble.INSTANCE:
                self._record_failed_start(str(error))
            raise LatentWorkerFailedToSubstantiate(self.name, str(error)) from error
        except BaseException:
            await self._forget_instance()
            raise
        self._active_since = self.master.reactor.seconds()
        log.msg(f"{self.name}: server {self._server_name} is ACTIVE, waiting for its worker to connect")
        return True

    def _record_failed_start(self, reason: str) -> None:
        log.msg(f"{self.name}: instance start failed: {reason}")
        if self._starting_request is not None:
            self._fleet.record_failed_start(self._starting_request, reason)

    def check_instance(self) -> defer.Deferred[tuple[bool, str]]:
        return defer.Deferred.fromCoroutine(self._check_instance())

    async def _check_instance(self) -> tuple[bool, str]:
        if self._server_id is None or self._active_since is None:
            return (True, "")
        waited = self.master.reactor.seconds() - self._active_since
        try:
            trouble = await self._call("checking the server", self._server_trouble, self._server_id, waited)
        except CloudCallFailed as error:
            # an API hiccup is no reason to throw the instance away; missing_timeout still bounds this
            log.msg(f"{self.name}: {error}")
            return (True, "")
        if trouble is None:
            return (True, "")
        self._record_failed_start(trouble)
        return (False, trouble)

    @defer.inlineCallbacks
    def attached(self, conn: Any):
        yield super().attached(conn)
        if self.state == States.SUBSTANTIATED and self._starting_request is not None:
            self._fleet.forget_request(self._starting_request)
            self._starting_request = None

    def stop_instance(self, fast: bool = False) -> defer.Deferred[bool]:
        return defer.Deferred.fromCoroutine(self._stop_instance())

    async def _stop_instance(self) -> bool:
        await self._forget_instance()
        return True

    async def _forget_instance(self) -> None:
        """Delete our server (waiting, bounded) and forget it; the old password stops working now."""
        self.instance_password.revoke()
        self._active_since = None
        server_id, server_name, token = self._server_id, self._server_name, self._instance_token
        try:
            if server_id is not None:
                await self._wait("deleting a server", self._delete_server, server_id)
                log.msg(f"{self.name}: deleted server {server_name} ({server_id})")
        except CloudCallFailed as error:
            # it still carries our farm id but no worker owns it any more: the orphan reaper retries
            log.msg(f"{self.name}: could not delete server {server_name} ({server_id}): {error}")
        finally:
            self._server_id = self._server_name = self._instance_token = None
            if token is not None:
                self._fleet.release(token)


def openstack_worker_pool(name: str, max_instances: int, **kwargs: Any) -> list[OpenStackLatentWorker]:
    """``max_instances`` workers ``<name>-1`` .. ``<name>-N`` sharing one configuration (``fleet``,
    ``settings``, and whatever else :class:`OpenStackLatentWorker` takes).

    Each owns at most one server, so the pool never runs more than ``max_instances`` servers.
    """
    if not isinstance(max_instances, int) or max_instances < 1:
        config.error(
            f"OpenStack workers {name!r}: max_instances must be an integer >= 1, got {max_instances!r}"
        )
        return []
    return [OpenStackLatentWorker(worker, **kwargs) for worker in pool_worker_names(name, max_instances)]
