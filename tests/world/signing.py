"""A throwaway OpenPGP signing key, standing in for Gentoo's release engineering key."""

import subprocess
from pathlib import Path

RELEASE_KEY_UID = "Gentoo Farm Test Release Engineering <releng@farm.invalid>"


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


def make_signing_key(home: Path, uid: str = RELEASE_KEY_UID) -> None:
    """Create a passphrase-less ed25519 signing key in a new GnuPG home directory."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "0")


def export_public_key(home: Path, destination: Path) -> None:
    destination.write_bytes(_gpg(home, "--armor", "--export"))


def sign_detached(home: Path, path: Path, signature: Path) -> None:
    """Write an armored detached signature of ``path`` (Gentoo's ``.asc`` / ``.gpgsig``)."""
    _gpg(home, "--armor", "--output", str(signature), "--detach-sign", str(path))


def clear_sign(home: Path, text: str) -> str:
    """Return ``text`` wrapped in an OpenPGP clear signature (like newer DIGESTS and pointer files)."""
    return _gpg(home, "--clearsign", stdin=text.encode()).decode()


def stop_agent(home: Path) -> None:
    """The agent gpg started for this home would otherwise outlive the build."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
    )
