"""The farm's own OpenPGP key: it signs the binary packages the farm's binhost serves and the DIGESTS
of every published set.

The key lives in a GnuPG home in the farm's secrets (``secrets/gnupg``), made by ``farm init``, and only
the master uses it: a worker never holds it. It signs gpkg binary packages with Portage's own
``gpkg-sign`` (the signatures Portage checks on install with ``verify-signature``); workers get the
public half only. ``farm key`` prints its fingerprint and exports it.

Rotation, as Gentoo rotates its release key: ``farm key rotate`` makes a new key the signing key and keeps
the old one's public half in the home, so the published key file carries both (the signing key first) and
what was signed before stays verifiable; ``farm key retire`` drops an old public key once nothing needs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Collection
from pathlib import Path

from gentoo_farm.farmdir import FarmDir
from gentoo_farm.portage_tools import INSTALL_HINT, portage_tool

GPG_TIMEOUT = 120


class SigningError(Exception):
    """The farm key is missing or GnuPG / gpkg-sign failed; the message names the file and the cause."""


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    command = ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
               "--passphrase", ""]  # fmt: skip
    try:
        result = subprocess.run(
            [*command, *args], input=stdin, capture_output=True, check=False, timeout=GPG_TIMEOUT
        )
    except FileNotFoundError as error:
        raise SigningError("gpg not found: install GnuPG (app-crypt/gnupg) on the master") from error
    except subprocess.TimeoutExpired as error:
        raise SigningError(f"gpg {args[0]} did not finish within {GPG_TIMEOUT} s") from error
    if result.returncode != 0:
        raise SigningError(
            f"gpg {' '.join(args[:1])} failed: {result.stderr.decode(errors='replace').strip()}"
            + _socket_path_hint(home)
        )
    return result.stdout


# A Unix socket's path holds at most 107 bytes; GnuPG's agent makes its sockets in the home directory
# unless the system gives it /run/user/UID (systemd's logins do; an OpenRC host or a cron job may not).
_LONGEST_AGENT_SOCKET = "S.gpg-agent.browser"
_SOCKET_PATH_MAX = 107


def _socket_path_hint(home: Path) -> str:
    socket = home / _LONGEST_AGENT_SOCKET
    if len(os.fsencode(socket)) <= _SOCKET_PATH_MAX or Path(f"/run/user/{os.getuid()}").is_dir():
        return ""
    return (
        f" ({home} is too long a path for GnuPG's agent sockets: {socket} would be "
        f"{len(os.fsencode(socket))} bytes, at most {_SOCKET_PATH_MAX} work; move the farm to a shorter path)"
    )


class FarmKey:
    """The signing key in ``home`` (a GnuPG home directory holding exactly one secret key, and the public
    halves of the older keys not yet retired)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    @classmethod
    def create(cls, home: Path, uid: str) -> FarmKey:
        """A new passphrase-less ed25519 signing key (the master signs unattended)."""
        if home.exists() and any(home.iterdir()):
            raise SigningError(f"{home} exists already; the farm has a key")
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "0")
        return cls(home)

    @property
    def fingerprint(self) -> str:
        if not self.home.is_dir():
            raise SigningError(f"{self.home}: no farm signing key (created by `farm init`)")
        listing = _gpg(self.home, "--with-colons", "--list-secret-keys").decode()
        fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        if not fingerprints:
            raise SigningError(f"{self.home} holds no secret key")
        return fingerprints[0]

    def public_key(self) -> str:
        """The armored public keys, as workers and downloaders import them: the signing key first (it
        was made first in its home), then the older keys still published during a rotation."""
        exported = _gpg(self.home, "--armor", "--export").decode() if self.home.is_dir() else ""
        if not exported:
            raise SigningError(f"{self.home}: no farm signing key (created by `farm init`)")
        return exported

    def rotate(self, uid: str, retired_home: Path) -> FarmKey:
        """A new signing key in this home; the old home moves to ``retired_home`` (nothing signs with it
        any more) and the public keys it published stay published beside the new one."""
        published = self.public_key().encode()
        self.stop_agent()
        if retired_home.exists():
            raise SigningError(f"{retired_home} exists already")
        retired_home.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.move(self.home, retired_home)
        new = FarmKey.create(self.home, uid)
        _gpg(new.home, "--import", stdin=published)
        return new

    def retire(self, fingerprint: str) -> None:
        """Stop publishing (and so trusting) the old public key ``fingerprint``."""
        if fingerprint == self.fingerprint:
            raise SigningError(f"{fingerprint} is the signing key: `farm key rotate` first")
        if fingerprint not in key_fingerprints(self.public_key().encode()):
            raise SigningError(f"{fingerprint} is not among the farm's published keys")
        _gpg(self.home, "--delete-keys", fingerprint)

    def sign_gpkg(self, package: Path) -> None:
        """Sign a gpkg binary package in place, as Portage's binpkg-signing would have at build time."""
        environment = {
            **os.environ,
            "BINPKG_GPG_SIGNING_GPG_HOME": str(self.home),
            "BINPKG_GPG_SIGNING_KEY": self.fingerprint,
            # Portage's default wraps gpg in flock on /run/lock; one signer at a time is the master's own job.
            "BINPKG_GPG_SIGNING_BASE_COMMAND": "gpg --sign --armor [PORTAGE_CONFIG]",
            "FEATURES": "binpkg-signing",
            "NOCOLOR": "true",
        }
        try:
            result = subprocess.run(
                [gpkg_sign_command(), str(package)],
                env=environment,
                capture_output=True,
                text=True,
                check=False,
                timeout=GPG_TIMEOUT,
            )
        except subprocess.TimeoutExpired as error:
            raise SigningError(f"gpkg-sign {package.name} did not finish within {GPG_TIMEOUT} s") from error
        if result.returncode != 0 or "signed" not in result.stdout + result.stderr:
            raise SigningError(f"gpkg-sign {package.name} failed: {(result.stderr or result.stdout).strip()}")

    def clearsign(self, text: str) -> str:
        """``text`` clear-signed with the farm key, as Gentoo signs its DIGESTS files."""
        return _gpg(
            self.home, "--clearsign", "--local-user", self.fingerprint, "--digest-algo", "SHA512",
            stdin=text.encode(),
        ).decode()  # fmt: skip

    def stop_agent(self) -> None:
        """Stop the daemons gpg started for this home (gpg-agent, keyboxd): they would outlive the
        command, and the master's outlive the master."""
        if self.home.is_dir():
            subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                           capture_output=True, check=False, timeout=GPG_TIMEOUT)  # fmt: skip


def key_fingerprints(armored: bytes) -> list[str]:
    """The fingerprints of the OpenPGP keys in ``armored`` (a key file), read without importing them."""
    try:
        listed = subprocess.run(
            ["gpg", "--show-keys", "--with-colons"], input=armored, capture_output=True, timeout=GPG_TIMEOUT
        )
    except FileNotFoundError as error:
        raise SigningError("gpg not found: install GnuPG") from error
    return [line.split(":")[9] for line in listed.stdout.decode().splitlines() if line.startswith("fpr:")]


def verify_clearsigned(armored_key: bytes, signed: bytes, signers: Collection[str] = ()) -> str:
    """The text ``signed`` vouches for, if a key in ``armored_key`` made its signature (``gpgv``, so
    nothing but those keys counts) and, when ``signers`` are given, it is one of those fingerprints (a
    key file may carry keys the caller does not trust: a store's copy, which a bucket writer could
    extend with their own); :class:`SigningError` otherwise. Only the signed part is returned: text
    around a clear-signed block proves nothing."""
    with tempfile.TemporaryDirectory(prefix="farm-gpgv-") as scratch:
        keyring = Path(scratch) / "keyring.gpg"
        dearmored = subprocess.run(
            ["gpg", "--dearmor", "--yes", "--output", str(keyring)], input=armored_key, capture_output=True,
            timeout=GPG_TIMEOUT,
        )  # fmt: skip
        if dearmored.returncode != 0:
            raise SigningError(f"not an OpenPGP key: {dearmored.stderr.decode(errors='replace').strip()}")
        try:
            verified = subprocess.run(
                ["gpgv", "--status-fd", "2", "--keyring", str(keyring), "--output", "-", "-"],
                input=signed, capture_output=True, timeout=GPG_TIMEOUT,
            )  # fmt: skip
        except FileNotFoundError as error:
            raise SigningError("gpgv not found: install GnuPG") from error
    if verified.returncode != 0:
        raise SigningError(f"bad signature: {verified.stderr.decode(errors='replace').strip()}")
    # VALIDSIG's last field is the primary key's fingerprint (the one people are told).
    signed_by = [line.split()[-1] for line in verified.stderr.decode().splitlines()
                 if line.startswith("[GNUPG:] VALIDSIG ")]  # fmt: skip
    if signers and not set(signed_by) & set(signers):
        raise SigningError(f"signed by {', '.join(signed_by) or 'no key'}, not by {', '.join(signers)}")
    return verified.stdout.decode()


def gpkg_sign_command() -> str:
    """Portage's gpkg-sign (:func:`portage_tool`)."""
    found = portage_tool("gpkg-sign")
    if found is None:
        raise SigningError(f"gpkg-sign not found: {INSTALL_HINT}")
    return found


def farm_fingerprint(farm: FarmDir) -> str:
    """The farm key's fingerprint, read from its public half; empty for a farm without a key (`farm key
    create` makes one). Never from the secret key: that would start a gpg-agent that outlives the reader
    (`buildbot checkconfig`, a CLI command)."""
    public_key = farm.signing_public_key
    if not public_key.is_file():
        return ""
    try:
        fingerprints = key_fingerprints(public_key.read_bytes())
    except SigningError:
        return ""
    return fingerprints[0] if fingerprints else ""
