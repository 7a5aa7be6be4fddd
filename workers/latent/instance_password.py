"""A fresh worker password for every instance a latent worker starts, forgotten when it stops."""

from __future__ import annotations

import secrets
from typing import Any

from buildbot.interfaces import IRenderable
from zope.interface import implementer


@implementer(IRenderable)
class InstancePassword:
    """The password the current instance's worker logs in with, rendered at each login attempt.

    Buildbot's PB dispatcher renders a worker's registered password whenever someone logs in, so
    a new password per instance needs no re-registration. Without an instance, nobody knows it.
    """

    def __init__(self) -> None:
        self.current: str | None = None

    def issue(self) -> str:
        """A new password for the instance about to start (from :mod:`secrets`: ``getRandomPass``
        draws from :mod:`random` and lasts a whole configuration)."""
        self.current = secrets.token_urlsafe(24)
        return self.current

    def revoke(self) -> None:
        """The instance is gone: its password stops working now."""
        self.current = None

    def getRenderingFor(self, _properties: object) -> str:
        return self.current or secrets.token_urlsafe(32)


class InstancePasswordMixin:
    """For an ``AbstractLatentWorker`` whose instances each log in with their own password.

    AbstractWorker keeps the configured password in ``password`` and registers it with the PB
    dispatcher; here nothing is configured, and the attribute always yields the worker's
    :class:`InstancePassword`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.instance_password = InstancePassword()
        super().__init__(*args, **kwargs)

    @property
    def password(self) -> InstancePassword:
        return self.instance_password

    @password.setter
    def password(self, _configured: object) -> None:
        return
