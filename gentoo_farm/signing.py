"""The farm's own OpenPGP key: it signs the binary packages the farm's binhost serves and the DIGESTS
of every published set.

The key lives in a GnuPG home in the farm's secrets (``secrets/gnupg``), made by ``farm init``, and only
the master uses it: a worker never holds it. It signs gpkg binary packages with Portage's own
``gpkg-sign`` (the signatures Portage checks on install with ``verify-signature``); workers get the
public half only. ``farm key`` prints its fingerprint and exports it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

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
        )
    return result.stdout


class FarmKey:
    """The signing key in ``home`` (a GnuPG home directory holding exactly one secret key)."""

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
        """The armored public key, as workers and downloaders import it."""
        return _gpg(self.home, "--armor", "--export", self.fingerprint).decode()

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


def verify_clearsigned(armored_key: bytes, signed: bytes) -> str:
    """The text ``signed`` vouches for, if the key in ``armored_key`` made its signature (``gpgv``, so
    nothing but that key counts); :class:`SigningError` otherwise. Only the signed part is returned:
    text around a clear-signed block proves nothing."""
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
                ["gpgv", "--keyring", str(keyring), "--output", "-", "-"],
                input=signed, capture_output=True, timeout=GPG_TIMEOUT,
            )  # fmt: skip
        except FileNotFoundError as error:
            raise SigningError("gpgv not found: install GnuPG") from error
    if verified.returncode != 0:
        raise SigningError(f"bad signature: {verified.stderr.decode(errors='replace').strip()}")
    return verified.stdout.decode()


def gpkg_sign_command() -> str:
    """Portage's gpkg-sign (:func:`portage_tool`)."""
    found = portage_tool("gpkg-sign")
    if found is None:
        raise SigningError(f"gpkg-sign not found: {INSTALL_HINT}")
    return found
