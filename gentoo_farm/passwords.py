"""Password files: one `name:bcrypt-hash` line per user, readable by the farm's owner only.

The web UI login and the change hook both check against such a file, so no plaintext
password is ever stored on the master.
"""

import os
import secrets
from pathlib import Path

import bcrypt
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer


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
        temporary = self.path.with_suffix(".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        temporary.replace(self.path)

    def users(self) -> list[str]:
        return sorted(self._read())


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """A Twisted credentials checker over a :class:`PasswordFile` (for the change hook)."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, password_file: PasswordFile) -> None:
        self.password_file = password_file

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred:
        name = creds.username.decode() if isinstance(creds.username, bytes) else creds.username
        if self.password_file.check(name, creds.password):
            return defer.succeed(creds.username)
        return defer.fail(error.UnauthorizedLogin())
