"""Ephemeral OpenStack workers on openstacksdk: boot on demand, build, vanish, leak nothing.

Each :class:`OpenStackLatentWorker` owns at most one server at a time, so ``max_instances`` of a
``[[workers.openstack]]`` entry is the number of workers :func:`openstack_worker_pool` creates
(``<name>-1`` .. ``<name>-N``); Buildbot never runs more servers than that.

Every server carries metadata naming the farm (:data:`FARM_ID_KEY`, the stable id from farm.toml),
the worker (:data:`WORKER_KEY`) and a random instance token (:data:`INSTANCE_KEY`).
:class:`OpenStackOrphanReaper` deletes servers carrying this farm's id whose token no running worker
holds (left behind by a master crash or a deletion that timed out); servers without the farm id are
never touched.

All openstacksdk calls run in threads (``deferToThread``), never on the reactor.
"""

from __future__ import annotations

import base64
import enum
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import openstack
import openstack.connection
from buildbot import config
from buildbot.interfaces import IRenderable, LatentWorkerCannotSubstantiate, LatentWorkerFailedToSubstantiate
from buildbot.util import service
from buildbot.worker.latent import AbstractLatentWorker, States
from openstack import exceptions as sdk_exceptions
from twisted.internet import defer, task, threads
from twisted.python import log
from zope.interface import implementer

from gentoo_farm.glance import FARM_ID_PROPERTY, farm_images
from gentoo_farm.workers.bootstrap import WorkerBootstrap, check_worker_name

FARM_ID_KEY = "gentoo_farm_id"
WORKER_KEY = "gentoo_farm_worker"
INSTANCE_KEY = "gentoo_farm_instance"
# image = LATEST_FARM_IMAGE boots the newest active Glance image the farm published (FARM_ID_PROPERTY)
LATEST_FARM_IMAGE = "farm-latest"

_FARM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
# timeouts and rate limits; a 409 from Nova means the request cannot work (e.g. ambiguous network)
_TRANSIENT_STATUSES = {408, 429}
API_TIMEOUT = 120.0
"""Seconds any one cloud API request may take: a hung call must not hold a worker forever."""

_Result = TypeVar("_Result")

# Failed instance starts per build request id (ERROR, boot timeout, never connected), shared by
# all workers of this master: Buildbot retries a request after a failed substantiation on any
# worker, and this bounds how often.
_failed_starts: dict[int, list[str]] = {}


class Trouble(enum.Enum):
    """What a failure means for the build request waiting on the instance."""

    # quota, rate limits, 5xx, the cloud unreachable: try again after Buildbot's quarantine backoff
    TRANSIENT = "transient"
    # unknown flavor/image/network/key, bad credentials: retrying cannot help, fail the build now
    CONFIGURATION = "configuration"
    # this instance broke (ERROR, boot timeout, worker never connected): retry on a new instance, bounded
    INSTANCE = "instance"


class CloudCallFailed(Exception):
    """An openstacksdk call failed, with a one-line reason and what kind of trouble it is."""

    def __init__(self, message: str, trouble: Trouble) -> None:
        super().__init__(message)
        self.trouble = trouble


def describe_cloud_error(cloud: str, action: str, error: BaseException) -> CloudCallFailed:
    """Turn an SDK/keystoneauth exception into one line a user can act on."""
    status = getattr(error, "status_code", None) or getattr(error, "http_status", None)
    details = getattr(error, "details", None) or str(error)
    details = " ".join(str(details).split())[:300]
    if status in (403, 413) and "quota" in details.lower():
        return CloudCallFailed(
            f"cloud {cloud}: {action}: quota exceeded (HTTP {status}): {details}", Trouble.TRANSIENT
        )
    if isinstance(status, int) and (status >= 500 or status in _TRANSIENT_STATUSES):
        return CloudCallFailed(
            f"cloud {cloud}: {action}: API error (HTTP {status}): {details}", Trouble.TRANSIENT
        )
    if isinstance(status, int):
        return CloudCallFailed(
            f"cloud {cloud}: {action}: rejected (HTTP {status}): {details}", Trouble.CONFIGURATION
        )
    if isinstance(error, sdk_exceptions.ResourceTimeout):
        return CloudCallFailed(f"cloud {cloud}: {action}: {details}", Trouble.TRANSIENT)
    if isinstance(error, sdk_exceptions.SDKException):
        # a bad clouds.yaml entry, a service missing from the catalog, malformed answers
        return CloudCallFailed(f"cloud {cloud}: {action}: {details}", Trouble.CONFIGURATION)
    # connection refused, DNS, TLS: the cloud may come back
    return CloudCallFailed(f"cloud {cloud}: {action}: {type(error).__name__}: {details}", Trouble.TRANSIENT)


def connect_to_cloud(cloud: str) -> openstack.connection.Connection:
    """A connection for the clouds.yaml entry ``cloud`` (authentication happens on first use)."""
    return openstack.connect(cloud=cloud, api_timeout=API_TIMEOUT)


@implementer(IRenderable)
class _InstancePassword:
    """The password the current instance's worker logs in with, rendered at each login attempt.

    Buildbot's PB dispatcher renders a worker's registered password whenever someone logs in, so
    a new password per instance needs no re-registration. Without an instance, nobody knows it.
    """

    def __init__(self) -> None:
        self.current: str | None = None

    def getRenderingFor(self, _properties: object) -> str:
        return self.current or secrets.token_urlsafe(32)


class OpenStackLatentWorker(AbstractLatentWorker):
    """A latent worker that boots one OpenStack server per substantiation and deletes it afterwards.

    ``image`` is a Glance image name or id, or ``"farm-latest"``: the newest active image whose
    ``farm_id`` property is ``farm_id``. ``volume_size`` (GiB) boots from a volume made from the
    image. ``boot_timeout``: seconds for the server to become ACTIVE; ``connect_timeout``: seconds
    from ACTIVE until the worker must have connected. A build request whose instance fails that way
    ``max_start_attempts`` times fails with the last reason; quota and API errors are retried with
    Buildbot's quarantine backoff (10 s doubling up to an hour); configuration errors (unknown flavor,
    image, network or key, credentials refused) fail the build at once.

    The worker password is not configured: every instance gets a fresh one from :mod:`secrets`
    (``getRandomPass`` draws from :mod:`random` and lasts a whole configuration), which the master
    forgets as soon as the instance is deleted. ``stop_instance`` always waits for the deletion,
    bounded by ``delete_timeout``; a server it could not delete is left to the orphan reaper.
    """

    # seconds between looks at a server whose worker has not connected yet (ERROR, connect_timeout)
    DEFAULT_CHECK_INTERVAL = 5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._login_password = _InstancePassword()
        self._server_id: str | None = None
        self._server_name: str | None = None
        self._instance_token: str | None = None
        self._active_since: float | None = None
        self._starting_request: int | None = None
        self._cloud_connection: openstack.connection.Connection | None = None
        super().__init__(*args, **kwargs)

    # AbstractWorker stores the configured password in ``password`` and registers it with the PB
    # dispatcher; ours is chosen per instance, so the attribute always yields the renderable.
    @property
    def password(self) -> IRenderable:
        return self._login_password

    @password.setter
    def password(self, _configured: object) -> None:
        return

    @property
    def instance_token(self) -> str | None:
        """The token of the server this worker owns now (or is creating); None without one."""
        return self._instance_token

    def checkConfig(
        self,
        name: str,
        *,
        cloud: str,
        flavor: str,
        image: str,
        farm_id: str,
        master_address: str,
        binhost_url: str,
        distfile_mirror_url: str,
        install_spec: str,
        network: str | None = None,
        key_name: str | None = None,
        security_groups: Sequence[str] = (),
        volume_size: int | None = None,
        boot_timeout: float = 600,
        connect_timeout: float = 900,
        delete_timeout: float = 300,
        max_start_attempts: int = 3,
        poll_interval: float = 5,
        build_wait_timeout: int = 0,
        check_instance_interval: float = DEFAULT_CHECK_INTERVAL,
        **kwargs: Any,
    ) -> None:
        where = f"OpenStack worker {name!r}"
        try:
            check_worker_name(name)
        except ValueError as error:
            config.error(f"{where}: {error}")
        for key, value in (("cloud", cloud), ("flavor", flavor), ("image", image)):
            if not isinstance(value, str) or not value.strip():
                config.error(f"{where}: {key} must be a non-empty string, got {value!r}")
        if not isinstance(farm_id, str) or not _FARM_ID.match(farm_id):
            config.error(f"{where}: farm_id {farm_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            WorkerBootstrap(master_address, binhost_url, distfile_mirror_url, install_spec)
        except ValueError as error:
            config.error(f"{where}: {error}")
        for key, value in (
            ("boot_timeout", boot_timeout),
            ("connect_timeout", connect_timeout),
            ("delete_timeout", delete_timeout),
            ("poll_interval", poll_interval),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                config.error(f"{where}: {key} must be a positive number of seconds, got {value!r}")
        if not isinstance(max_start_attempts, int) or max_start_attempts < 1:
            config.error(f"{where}: max_start_attempts must be an integer >= 1, got {max_start_attempts!r}")
        if volume_size is not None and (not isinstance(volume_size, int) or volume_size < 0):
            config.error(
                f"{where}: volume_size must be whole GiB (0: boot from the image), got {volume_size!r}"
            )
        if isinstance(security_groups, str) or not all(isinstance(g, str) for g in security_groups):
            config.error(f"{where}: security_groups must be a list of names, got {security_groups!r}")
        super().checkConfig(
            name,
            None,
            build_wait_timeout=build_wait_timeout,
            check_instance_interval=check_instance_interval,
            **kwargs,
        )

    @defer.inlineCallbacks
    def reconfigService(
        self,
        name: str,
        *,
        cloud: str,
        flavor: str,
        image: str,
        farm_id: str,
        master_address: str,
        binhost_url: str,
        distfile_mirror_url: str,
        install_spec: str,
        network: str | None = None,
        key_name: str | None = None,
        security_groups: Sequence[str] = (),
        volume_size: int | None = None,
        boot_timeout: float = 600,
        connect_timeout: float = 900,
        delete_timeout: float = 300,
        max_start_attempts: int = 3,
        poll_interval: float = 5,
        build_wait_timeout: int = 0,
        check_instance_interval: float = DEFAULT_CHECK_INTERVAL,
        **kwargs: Any,
    ):
        if "missing_timeout" not in kwargs:
            # Buildbot's own backstop behind boot_timeout + connect_timeout (checked in check_instance)
            kwargs["missing_timeout"] = int(boot_timeout + connect_timeout + 5 * check_instance_interval)
        yield super().reconfigService(
            name,
            None,
            build_wait_timeout=build_wait_timeout,
            check_instance_interval=check_instance_interval,
            **kwargs,
        )
        if self._cloud_connection is not None and cloud != self.cloud:
            self._cloud_connection = None
        self.cloud = cloud
        self.flavor = flavor
        self.image = image
        self.farm_id = farm_id
        self.bootstrap = WorkerBootstrap(master_address, binhost_url, distfile_mirror_url, install_spec)
        # farm.toml spells "none" as "" and 0
        self.network = network or None
        self.key_name = key_name or None
        self.security_groups = list(security_groups)
        self.volume_size = volume_size or None
        self.boot_timeout = boot_timeout
        self.connect_timeout = connect_timeout
        self.delete_timeout = delete_timeout
        self.max_start_attempts = max_start_attempts
        self.poll_interval = poll_interval

    # -- talking to the cloud (these run in threads) ---------------------------------------------

    def _call(
        self, action: str, function: Callable[..., _Result], *args: Any, **kwargs: Any
    ) -> defer.Deferred[_Result]:
        """Run ``function`` in a thread; SDK errors become :class:`CloudCallFailed`."""

        def guarded() -> _Result:
            try:
                return function(*args, **kwargs)
            except CloudCallFailed:
                raise
            except Exception as error:
                raise describe_cloud_error(self.cloud, action, error) from error

        return threads.deferToThread(guarded)

    def _connection(self) -> openstack.connection.Connection:
        if self._cloud_connection is None:
            self._cloud_connection = connect_to_cloud(self.cloud)
        return self._cloud_connection

    def _not_found(self, what: str) -> CloudCallFailed:
        return CloudCallFailed(f"cloud {self.cloud}: {what} not found", Trouble.CONFIGURATION)

    def _resolve_image_id(self) -> str:
        connection = self._connection()
        if self.image != LATEST_FARM_IMAGE:
            try:
                return connection.image.find_image(self.image, ignore_missing=False).id
            except sdk_exceptions.NotFoundException as error:
                raise self._not_found(f"image {self.image!r}") from error
        published = [image for image in farm_images(connection, self.farm_id) if image.status == "active"]
        if not published:
            raise self._not_found(
                f"image {LATEST_FARM_IMAGE!r} (an active image of this project with "
                f"{FARM_ID_PROPERTY}={self.farm_id}: has this farm published one yet?)"
            )
        return published[0].id

    def _resolve_network_id(self) -> str | None:
        if self.network is None or _UUID.match(self.network):
            return self.network
        try:
            return self._connection().network.find_network(self.network, ignore_missing=False).id
        except sdk_exceptions.NotFoundException as error:
            raise self._not_found(f"network {self.network!r}") from error

    def _create_server(self, server_name: str, user_data: str, token: str) -> str:
        compute = self._connection().compute
        try:
            flavor = compute.find_flavor(self.flavor, ignore_missing=False)
        except sdk_exceptions.NotFoundException as error:
            raise self._not_found(f"flavor {self.flavor!r}") from error
        image_id = self._resolve_image_id()
        network_id = self._resolve_network_id()
        attrs: dict[str, Any] = {
            "name": server_name,
            "flavor_id": flavor.id,
            "user_data": base64.b64encode(user_data.encode()).decode("ascii"),
            "metadata": {FARM_ID_KEY: self.farm_id, WORKER_KEY: self.name, INSTANCE_KEY: token},
            # without a network Nova picks the project's only one or fails with a clear 409
            "networks": [{"uuid": network_id}] if network_id else "auto",
        }
        if self.volume_size is None:
            attrs["image_id"] = image_id
        else:
            attrs["block_device_mapping"] = [
                {
                    "boot_index": 0,
                    "uuid": image_id,
                    "source_type": "image",
                    "destination_type": "volume",
                    "volume_size": self.volume_size,
                    "delete_on_termination": True,
                }
            ]
        if self.key_name:
            attrs["key_name"] = self.key_name
        if self.security_groups:
            attrs["security_groups"] = [{"name": group} for group in self.security_groups]
        return compute.create_server(**attrs).id

    def _wait_until_active(self, server_id: str) -> None:
        compute = self._connection().compute
        server = compute.get_server(server_id)
        try:
            compute.wait_for_server(
                server,
                status="ACTIVE",
                failures=["ERROR"],
                interval=self.poll_interval,
                wait=self.boot_timeout,
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
                f"server {server_id} not ACTIVE after {self.boot_timeout:g} s (status {status})",
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
        if waited < self.connect_timeout:
            return None
        try:
            console = compute.get_server_console_output(server_id, length=10).get("output", "")
        except sdk_exceptions.SDKException:
            console = ""
        tail = " | ".join(line.strip() for line in console.strip().splitlines()[-5:]) or "(empty)"
        return (
            f"server {server.name} ({server_id}) is {server.status} but its worker did not connect "
            f"within {self.connect_timeout:g} s; console: {tail}"
        )

    def _delete_server(self, server_id: str) -> None:
        compute = self._connection().compute
        try:
            compute.delete_server(server_id, ignore_missing=True)
            server = compute.get_server(server_id)
        except sdk_exceptions.NotFoundException:
            return
        compute.wait_for_delete(server, interval=self.poll_interval, wait=self.delete_timeout)

    # -- the latent worker protocol ----------------------------------------------------------------

    def start_instance(self, build: Any) -> defer.Deferred[bool]:
        return defer.Deferred.fromCoroutine(self._start_instance(build))

    async def _start_instance(self, build: Any) -> bool:
        if self._server_id is not None:
            raise LatentWorkerFailedToSubstantiate(self.name, f"still owns server {self._server_id}")
        request_id = min((request.id for request in build.requests), default=None)
        self._starting_request = request_id
        failures = _failed_starts.get(request_id, []) if request_id is not None else []
        if len(failures) >= self.max_start_attempts:
            _failed_starts.pop(request_id, None)
            raise LatentWorkerCannotSubstantiate(
                f"{self.name}: gave up after {len(failures)} failed instance starts; last: {failures[-1]}"
            )

        self._login_password.current = secrets.token_urlsafe(24)
        self._instance_token = token = secrets.token_hex(6)
        self._server_name = f"{self.farm_id}-{self.name}-{token}"
        user_data = self.bootstrap.render(self.name, self._login_password.current)
        try:
            self._server_id = await self._call(
                "creating a server", self._create_server, self._server_name, user_data, token
            )
            log.msg(f"{self.name}: created server {self._server_name} ({self._server_id}) on {self.cloud}")
            await self._call("waiting for the server", self._wait_until_active, self._server_id)
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
            _failed_starts.setdefault(self._starting_request, []).append(reason)

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
            _failed_starts.pop(self._starting_request, None)
            self._starting_request = None

    def stop_instance(self, fast: bool = False) -> defer.Deferred[bool]:
        return defer.Deferred.fromCoroutine(self._stop_instance())

    async def _stop_instance(self) -> bool:
        await self._forget_instance()
        return True

    async def _forget_instance(self) -> None:
        """Delete our server (waiting, bounded) and forget it; the old password stops working now."""
        self._login_password.current = None
        self._active_since = None
        server_id, server_name = self._server_id, self._server_name
        try:
            if server_id is not None:
                await self._call("deleting a server", self._delete_server, server_id)
                log.msg(f"{self.name}: deleted server {server_name} ({server_id})")
        except CloudCallFailed as error:
            # it still carries our farm id but no worker owns it any more: the orphan reaper retries
            log.msg(f"{self.name}: could not delete server {server_name} ({server_id}): {error}")
        finally:
            self._server_id = self._server_name = self._instance_token = None


def openstack_worker_pool(name: str, max_instances: int, **kwargs: Any) -> list[OpenStackLatentWorker]:
    """``max_instances`` workers ``<name>-1`` .. ``<name>-N`` sharing one configuration.

    Each owns at most one server, so the pool never runs more than ``max_instances`` servers.
    """
    if not isinstance(max_instances, int) or max_instances < 1:
        config.error(
            f"OpenStack workers {name!r}: max_instances must be an integer >= 1, got {max_instances!r}"
        )
        return []
    return [OpenStackLatentWorker(f"{name}-{index}", **kwargs) for index in range(1, max_instances + 1)]


class OpenStackOrphanReaper(service.BuildbotService):
    """Deletes servers tagged with this farm's id that no running worker of this master owns.

    Runs when the master starts and then every ``interval`` seconds. A server counts as owned while
    an :class:`OpenStackLatentWorker` with the same ``farm_id`` holds its instance token (from before
    the create call until the deletion finished), so a server being created is never reaped.
    With ``multiMaster``, each master only reaps servers of the worker names it runs.
    """

    def __init__(self, cloud: str, farm_id: str, interval: float = 300, name: str | None = None) -> None:
        self._loop: task.LoopingCall | None = None
        self._cloud_connection: openstack.connection.Connection | None = None
        super().__init__(cloud, farm_id, interval, name=name or f"openstack-orphan-reaper-{cloud}-{farm_id}")

    def checkConfig(self, cloud: str, farm_id: str, interval: float = 300) -> None:
        if not isinstance(cloud, str) or not cloud:
            config.error(f"OpenStack orphan reaper: cloud must be a clouds.yaml name, got {cloud!r}")
        if not isinstance(farm_id, str) or not _FARM_ID.match(farm_id):
            config.error(
                f"OpenStack orphan reaper: farm_id {farm_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if not isinstance(interval, int | float) or interval <= 0:
            config.error(
                f"OpenStack orphan reaper: interval must be a positive number of seconds, got {interval!r}"
            )

    def reconfigService(self, cloud: str, farm_id: str, interval: float = 300) -> None:
        if cloud != getattr(self, "cloud", cloud):
            self._cloud_connection = None
        self.cloud = cloud
        self.farm_id = farm_id
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
        self._start_loop()

    @defer.inlineCallbacks
    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            yield self._loop_done
        yield super().stopService()

    def _sweep_logging_errors(self) -> defer.Deferred[None]:
        d = self.sweep()
        d.addErrback(lambda failure: log.msg(f"{self.name}: sweep failed: {failure.getErrorMessage()}"))
        d.addCallback(lambda _: None)
        return d

    def _owned_tokens(self) -> tuple[set[str], set[str]]:
        """Instance tokens held by this master's workers of our farm, and those workers' names."""
        workers = [
            worker
            for worker in self.master.workers.workers.values()
            if isinstance(worker, OpenStackLatentWorker) and worker.farm_id == self.farm_id
        ]
        tokens = {worker.instance_token for worker in workers if worker.instance_token}
        return tokens, {worker.name for worker in workers}

    def _list_farm_servers(self) -> list[Any]:
        if self._cloud_connection is None:
            self._cloud_connection = connect_to_cloud(self.cloud)
        return [
            server
            for server in self._cloud_connection.compute.servers(details=True)
            if (server.metadata or {}).get(FARM_ID_KEY) == self.farm_id and server.status != "DELETED"
        ]

    def _delete(self, server_ids: Iterable[str]) -> None:
        assert self._cloud_connection is not None
        for server_id in server_ids:
            self._cloud_connection.compute.delete_server(server_id, ignore_missing=True)

    def sweep(self) -> defer.Deferred[list[str]]:
        """Delete this farm's unowned servers now; the Deferred fires with their names."""
        return defer.Deferred.fromCoroutine(self._sweep())

    async def _sweep(self) -> list[str]:
        try:
            servers = await threads.deferToThread(self._list_farm_servers)
        except Exception as error:
            raise describe_cloud_error(self.cloud, "listing servers", error) from error
        # ownership is read after the listing returned: a worker records its token before it
        # creates a server, so every listed server of a live worker is already marked owned
        tokens, worker_names = self._owned_tokens()
        multi_master = bool(getattr(self.master.config, "multiMaster", False))
        orphans = [
            server
            for server in servers
            if server.metadata.get(INSTANCE_KEY) not in tokens
            and (not multi_master or server.metadata.get(WORKER_KEY) in worker_names)
        ]
        if not orphans:
            return []
        for server in orphans:
            log.msg(
                f"{self.name}: deleting orphan server {server.name} ({server.id}) of worker "
                f"{server.metadata.get(WORKER_KEY)!r}: no running worker owns it"
            )
        try:
            await threads.deferToThread(self._delete, [server.id for server in orphans])
        except Exception as error:
            raise describe_cloud_error(self.cloud, "deleting orphan servers", error) from error
        return [server.name for server in orphans]
