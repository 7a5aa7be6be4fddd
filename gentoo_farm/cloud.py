"""OpenStack connections and what their failures mean, for the Glance publisher and the OpenStack workers.

Every call here blocks (openstacksdk): callers run them in a thread, never on a reactor.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openstack
import openstack.connection
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

API_TIMEOUT = 120.0
"""Seconds any one cloud API request may take (uploads count from the last byte sent): a hung call
must not hold a build or a worker forever."""
CONNECT_RETRIES = 3
"""A web server may close an idle keep-alive connection just as it is reused (gunicorn after 2 s):
retrying the connection is safe, every call the farm makes is idempotent or checked."""

# timeouts and rate limits; a 409 from Nova means the request cannot work (e.g. ambiguous network)
_TRANSIENT_STATUSES = {408, 429}

# What openstacksdk and keystoneauth raise; anything else is a bug, not the cloud's answer.
CLOUD_ERRORS = (sdk_exceptions.SDKException, ks_exceptions.ClientException)

_Result = TypeVar("_Result")


class Trouble(enum.Enum):
    """What a failure means for whoever waits on the call."""

    # quota, rate limits, 5xx, the cloud unreachable: try again later
    TRANSIENT = "transient"
    # unknown cloud/flavor/image/network/key, bad credentials, a refused request: retrying cannot help
    CONFIGURATION = "configuration"
    # this instance broke (ERROR, boot timeout, worker never connected): retry on a new instance, bounded
    INSTANCE = "instance"


class CloudCallFailed(Exception):
    """A cloud call failed, with a one-line reason naming the cloud and what kind of trouble it is."""

    def __init__(self, message: str, trouble: Trouble) -> None:
        super().__init__(message)
        self.trouble = trouble


def connect_to_cloud(cloud: str, region: str = "") -> openstack.connection.Connection:
    """A connection for the clouds.yaml entry ``cloud`` (OS_CLIENT_CONFIG_FILE or the standard places), in
    ``region`` or, when that is empty, the entry's own ``region_name``; the entry's ``interface`` holds.

    Authentication happens on first use; run that and every later call inside :func:`cloud_errors`.
    """
    return openstack.connect(
        cloud=cloud,
        region_name=region or None,
        api_timeout=API_TIMEOUT,
        connect_retries=CONNECT_RETRIES,
    )


def describe_cloud_error(cloud: str, action: str, error: BaseException) -> CloudCallFailed:
    """Turn an SDK/keystoneauth exception raised while doing ``action`` into one line a user can act on."""
    where = f"cloud {cloud!r}: {action}"
    status = getattr(error, "status_code", None) or getattr(error, "http_status", None)
    details = getattr(error, "details", None) or str(error)
    details = " ".join(str(details).split())[:300]
    if isinstance(error, sdk_exceptions.ConfigException):
        return CloudCallFailed(f"{where}: not usable from clouds.yaml: {details}", Trouble.CONFIGURATION)
    if status in (403, 413) and "quota" in details.lower():
        return CloudCallFailed(f"{where}: quota exceeded (HTTP {status}): {details}", Trouble.TRANSIENT)
    if isinstance(status, int) and (status >= 500 or status in _TRANSIENT_STATUSES):
        return CloudCallFailed(f"{where}: API error (HTTP {status}): {details}", Trouble.TRANSIENT)
    if isinstance(status, int):
        return CloudCallFailed(f"{where}: rejected (HTTP {status}): {details}", Trouble.CONFIGURATION)
    if isinstance(error, ks_exceptions.ConnectionError | ks_exceptions.DiscoveryFailure):
        return CloudCallFailed(
            f"{where}: cannot reach the cloud: {connection_problem(error)}", Trouble.TRANSIENT
        )
    if isinstance(error, sdk_exceptions.ResourceTimeout):
        return CloudCallFailed(f"{where}: {details}", Trouble.TRANSIENT)
    if isinstance(error, sdk_exceptions.SDKException):
        # a service missing from the catalog, malformed answers
        return CloudCallFailed(f"{where}: {details}", Trouble.CONFIGURATION)
    # TLS, an endpoint keystoneauth could not find: the cloud may come back
    return CloudCallFailed(f"{where}: {type(error).__name__}: {details}", Trouble.TRANSIENT)


@contextlib.contextmanager
def cloud_errors(cloud: str, action: str) -> Iterator[None]:
    """SDK and keystoneauth failures inside the block leave it as one :class:`CloudCallFailed`."""
    try:
        yield
    except CLOUD_ERRORS as error:
        raise describe_cloud_error(cloud, action, error) from error


def call_cloud(
    cloud: str, action: str, function: Callable[..., _Result], *args: Any, **kwargs: Any
) -> _Result:
    """``function(*args, **kwargs)`` inside :func:`cloud_errors` (for a thread to run)."""
    with cloud_errors(cloud, action):
        return function(*args, **kwargs)


def connection_problem(error: Exception) -> str:
    """``Connection refused`` rather than three nested exception reprs, when the OS said why."""
    reasons = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
    return reasons[-1].strip() if reasons else str(error)
