"""Password files: one `name:bcrypt-hash` line per user, readable by the farm's owner only.

The web UI login and the change hook both check against such a file, so no plaintext
password is ever stored on the master.
"""

import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Hashable
from pathlib import Path

import bcrypt
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.python import log
from zope.interface import implementer

MAX_FAILED_LOGINS = 5
FAILED_LOGIN_WINDOW = 60.0
# Keys of a throttle beyond which stale ones are dropped: many addresses must not grow it forever.
THROTTLE_PRUNE_SIZE = 1024


def generate_password() -> str:
    return secrets.token_urlsafe(18)


class PasswordFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, bytes]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return {
            name: hashed.encode() for name, _, hashed in (line.partition(":") for line in lines) if hashed
        }

    def check(self, name: str, password: str | bytes) -> bool:
        hashed = self._read().get(name)
        if hashed is None:
            return False
        if isinstance(password, str):
            password = password.encode()
        return bcrypt.checkpw(password, hashed)

    def set(self, name: str, password: str) -> None:
        entries = self._read()
        entries[name] = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        text = "".join(f"{user}:{hashed.decode()}\n" for user, hashed in sorted(entries.items()))
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, text)

    def users(self) -> list[str]:
        return sorted(self._read())


def write_private(path: Path, text: str) -> None:
    """Write a secret only its owner may read, replacing the file whole (never half-written)."""
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    temporary.replace(path)


class LoginThrottle:
    """At most ``limit`` logins per key in ``window`` seconds that have not succeeded (yet).

    An attempt counts from the moment it is checked, so a burst sent all at once is cut off
    as surely as one sent in a row; one that succeeds forgets the key's earlier failures.
    """

    def __init__(
        self,
        limit: int = MAX_FAILED_LOGINS,
        window: float = FAILED_LOGIN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._attempts: dict[Hashable, deque[float]] = {}

    def attempt(self, key: Hashable) -> bool:
        """Whether a login for ``key`` may be checked now; if so, it counts until it succeeds."""
        now = self.clock()
        if len(self._attempts) > THROTTLE_PRUNE_SIZE:
            for stale in [k for k, times in self._attempts.items() if times[-1] <= now - self.window]:
                del self._attempts[stale]
        attempts = self._attempts.setdefault(key, deque())
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        if len(attempts) >= self.limit:
            return False
        attempts.append(now)
        return True

    def succeeded(self, key: Hashable) -> None:
        self._attempts.pop(key, None)


class ClientUsernamePassword(credentials.UsernamePassword):
    """A user name and password with the address they came from (the throttle keys on both)."""

    def __init__(self, username: bytes, password: bytes, client_address: str) -> None:
        super().__init__(username, password)
        self.client_address = client_address


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """A Twisted credentials checker over a :class:`PasswordFile`, for web UI logins and the change hook.

    bcrypt takes a quarter of a second on purpose: it runs in a thread, never on the reactor, and
    a throttle per user and client address (when the credentials carry one) refuses further
    attempts unchecked, so a flood of wrong passwords neither stalls the master nor tries many.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, password_file: PasswordFile, throttle: LoginThrottle | None = None) -> None:
        self.password_file = password_file
        self.throttle = throttle or LoginThrottle()

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred:
        name = creds.username.decode() if isinstance(creds.username, bytes) else creds.username
        key = (name, getattr(creds, "client_address", None))
        if not self.throttle.attempt(key):
            log.msg(
                f"login of {name!r} from {key[1] or 'an unknown address'} refused unchecked: "
                f"{self.throttle.limit} attempts failed within {self.throttle.window:.0f} s"
            )
            return defer.fail(error.UnauthorizedLogin())

        def checked(valid: bool) -> bytes | str:
            if not valid:
                raise error.UnauthorizedLogin()
            self.throttle.succeeded(key)
            return creds.username

        return threads.deferToThread(self.password_file.check, name, creds.password).addCallback(checked)
