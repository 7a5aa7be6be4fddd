"""Throwaway OpenPGP signing keys, standing in for Gentoo's release key and its snapshot key.

Both live in one GnuPG home, as both of Gentoo's keys live in one keyring file: every signature names
the key that makes it, so a test can sign a stage3 with the snapshot key and see it refused.
"""

import subprocess
from pathlib import Path

RELEASE_KEY_UID = "Gentoo Farm Test Release Engineering <releng@farm.invalid>"
SNAPSHOT_KEY_UID = "Gentoo Farm Test ebuild repository signing key <infrastructure@farm.invalid>"
BINHOST_KEY_UID = "Gentoo Farm Test binary package signing key <binhost@farm.invalid>"


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    command = [
        "gpg",
        "--homedir",
        str(home),
        "--batch",
        "--yes",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]
    result = subprocess.run([*command, *args], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def make_signing_key(home: Path, uid: str) -> str:
    """Create a passphrase-less ed25519 key in ``home`` (created if new); return its fingerprint.

    Like Gentoo's keys, the primary key only certifies and a subkey signs: a signature names the subkey,
    and the farm must trace it to the primary fingerprint it is configured with.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _gpg(home, "--quick-gen-key", uid, "ed25519", "cert", "0")
    listing = _gpg(home, "--with-colons", "--list-keys", uid).decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    _gpg(home, "--quick-add-key", fingerprint, "ed25519", "sign", "0")
    return fingerprint


def export_public_key(home: Path, destination: Path) -> None:
    """Every public key of ``home`` in one armored file: the keyring a farm is configured with."""
    destination.write_bytes(_gpg(home, "--armor", "--export"))


def sign_detached(home: Path, path: Path, signature: Path, key: str) -> None:
    """Write an armored detached signature of ``path`` by ``key`` (Gentoo's ``.asc`` / ``.gpgsig``)."""
    _gpg(home, "--local-user", key, "--armor", "--output", str(signature), "--detach-sign", str(path))


def clear_sign(home: Path, text: str, key: str) -> str:
    """Return ``text`` wrapped in an OpenPGP clear signature by ``key`` (like DIGESTS and pointer files)."""
    return _gpg(home, "--local-user", key, "--clearsign", stdin=text.encode()).decode()


def stop_agent(home: Path) -> None:
    """The agent gpg started for this home would otherwise outlive the build."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
    )
