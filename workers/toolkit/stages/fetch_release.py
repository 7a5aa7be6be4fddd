"""Fetch the latest stage3 and a Portage snapshot from a Gentoo mirror and verify them.

The stage3 is found through ``releases/<arch>/autobuilds/latest-stage3-<variant>.txt``; it is checked
against its ``.DIGESTS`` (BLAKE2B and SHA512) and its detached ``.asc`` signature, the snapshot against its
``.gpgsig``. Signatures are verified with ``gpgv`` against the configured keyring, each against the key
that should sign it, as upstream signs: stages, DIGESTS and pointers with the release key, snapshots with
the snapshot key (both fingerprints are configuration: Gentoo has rotated its keys before). A pointer or
DIGESTS file without a clear signature is refused: an unsigned pointer would let a mirror roll a farm back
to an older (signed) release. Downloads resume (HTTP Range) after an interruption.

``--check-only`` learns what upstream offers without downloading a tarball: the verified pointer, the
stage3's signed DIGESTS (its SHA512) and the snapshot's published ``.md5sum`` — a few kilobytes. A later
full fetch given those values (``--expect-stage3-sha512``, ``--expect-snapshot-md5``) fails if upstream
changed in between, so what it verifies is exactly what the check saw.
"""

import argparse
import email.utils
import hashlib
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gentoo_farm.checksums import Digest, feed
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.downloads import download, fetch_text

CLEARSIGN_HEADER = "-----BEGIN PGP SIGNED MESSAGE-----"
DIGEST_ALGORITHMS: dict[str, Callable[[], Digest]] = {"BLAKE2B": hashlib.blake2b, "SHA512": hashlib.sha512}
# Gentoo publishes an MD5 (only) beside each snapshot; it identifies a snapshot, it does not vouch for it.
IDENTIFYING_ALGORITHMS: dict[str, Callable[[], Digest]] = {**DIGEST_ALGORITHMS, "MD5": hashlib.md5}
TIMESTAMP_MEMBER = re.compile(r"^(?:\./)?[^/]+/metadata/timestamp\.chk$")
MD5SUM_LINE = re.compile(r"([0-9a-fA-F]{32}) [ *](\S+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mirror", required=True, help="base URL of the Gentoo mirror (e.g. https://distfiles.gentoo.org)"
    )
    parser.add_argument(
        "--keyring", required=True, type=Path, help="OpenPGP public keys file holding both keys below"
    )
    parser.add_argument(
        "--release-key",
        required=True,
        metavar="FINGERPRINT",
        help="the key that signs stages, DIGESTS and latest-stage3 pointers",
    )
    parser.add_argument(
        "--snapshot-key", required=True, metavar="FINGERPRINT", help="the key that signs Portage snapshots"
    )
    parser.add_argument("--dest", required=True, type=Path, help="directory to download into")
    parser.add_argument("--arch", default="amd64", help="release architecture directory (default: amd64)")
    parser.add_argument("--variant", default="amd64-openrc", help="stage3 variant (default: amd64-openrc)")
    parser.add_argument("--snapshot", default="latest", help="snapshot date YYYYMMDD, or 'latest' (default)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the mirror per request"
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="download no tarball: report the latest stage3 (from its verified pointer and DIGESTS) "
        "and the snapshot's published MD5",
    )
    parser.add_argument(
        "--expect-stage3-sha512",
        metavar="HEX",
        help="fail unless the stage3 is this one (the SHA512 an earlier --check-only reported)",
    )
    parser.add_argument(
        "--expect-snapshot-md5",
        metavar="HEX",
        help="fail unless the snapshot is this one (the MD5 an earlier --check-only reported)",
    )


@dataclass(frozen=True)
class SigningKey:
    """A key that must have made a signature: its fingerprint and what it is called in messages."""

    role: str
    fingerprint: str


class Verifier:
    """Verifies OpenPGP signatures with ``gpgv`` against a keyring made from the configured key file.

    Every check names the key that must have signed: a good signature by another key of the keyring
    (the snapshot key on a stage3, say) is refused.
    """

    def __init__(self, key_file: Path, workdir: Path, release_key: str, snapshot_key: str) -> None:
        self.release = SigningKey("release key", release_key)
        self.snapshot = SigningKey("snapshot key", snapshot_key)
        if not key_file.is_file():
            raise StageError(f"keyring {key_file}: no such file")
        home = workdir / "gnupg"
        home.mkdir(mode=0o700)
        imported = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--import", str(key_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        exported = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--export"], capture_output=True, check=False
        )
        listed = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys"],
            capture_output=True,
            text=True,
            check=False,
        )
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
        if imported.returncode != 0 or not exported.stdout:
            raise StageError(f"keyring {key_file}: contains no usable OpenPGP public key")
        held = {line.split(":")[9].upper() for line in listed.stdout.splitlines() if line.startswith("fpr:")}
        for key in (self.release, self.snapshot):
            if key.fingerprint.upper() not in held:
                raise StageError(
                    f"keyring {key_file} does not hold the {key.role} {key.fingerprint} "
                    "(Gentoo's gentoo-release.asc holds both its release and its snapshot key)"
                )
        self.key_file = key_file
        self.keyring = workdir / "release-keyring.gpg"
        self.keyring.write_bytes(exported.stdout)

    def verify(self, signed: Path, signer: SigningKey, signature: Path | None = None) -> bytes:
        """Check that ``signer`` made a detached ``signature`` of ``signed`` (or clear-signed ``signed``).

        Returns the signed text of a clear-signed file. Raises StageError naming the file and why.
        """
        with tempfile.TemporaryDirectory(prefix="farm-gpgv-") as scratch:
            output = Path(scratch) / "signed-text"
            command = ["gpgv", "--status-fd", "1", "--keyring", str(self.keyring)]
            if signature is None:
                command += ["--output", str(output), str(signed)]
            else:
                command += [str(signature), str(signed)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            statuses = [
                line.split()[1:] for line in result.stdout.splitlines() if line.startswith("[GNUPG:] ")
            ]
            keywords = {status[0]: status[1:] for status in statuses if status}
            if result.returncode == 0 and "GOODSIG" in keywords and "VALIDSIG" in keywords:
                # VALIDSIG names the signing (sub)key and, last, its primary key: Gentoo signs with subkeys.
                made_by = {keywords["VALIDSIG"][0].upper(), keywords["VALIDSIG"][-1].upper()}
                if signer.fingerprint.upper() not in made_by:
                    raise StageError(
                        f"{signed.name}: signed by key {keywords['VALIDSIG'][-1]}, not by the {signer.role} "
                        f"{signer.fingerprint} that signs it upstream"
                    )
                return output.read_bytes() if output.exists() else b""
        raise StageError(self._explain(signed.name, signature.name if signature else None, keywords))

    def _explain(self, name: str, signature_name: str | None, keywords: dict[str, list[str]]) -> str:
        if "BADSIG" in keywords:
            mismatch = (
                f"{signature_name} does not match" if signature_name else "its clear signature does not match"
            )
            return f"{name}: BAD signature ({mismatch}: the file was altered or corrupted)"
        if "EXPKEYSIG" in keywords:
            return f"{name}: signed with an expired key ({keywords['EXPKEYSIG'][0]})"
        if "REVKEYSIG" in keywords:
            return f"{name}: signed with a revoked key ({keywords['REVKEYSIG'][0]})"
        if "NO_PUBKEY" in keywords or "ERRSIG" in keywords:
            key_id = (keywords.get("NO_PUBKEY") or keywords.get("ERRSIG") or ["?"])[0]
            return f"{name}: signed by key {key_id}, which is not in the configured keyring {self.key_file}"
        return f"{signature_name or name}: no valid OpenPGP signature found"


def parse_pointer(text: str, source: str) -> tuple[str, str]:
    """``(timestamp, tarball path relative to autobuilds/)`` from a latest-stage3 pointer's signed text."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = line.split()[0]
        timestamp, _, file_name = path.partition("/")
        if not file_name:
            break
        return timestamp, path
    raise StageError(f"{source}: no '<timestamp>/<stage3 tarball> <size>' line found")


def parse_digests(text: str, file_name: str, source: str) -> dict[str, str]:
    """The ``{algorithm: hex digest}`` a Gentoo ``.DIGESTS`` file lists for ``file_name``."""
    digests: dict[str, str] = {}
    algorithm = None
    for line in text.splitlines():
        header = re.fullmatch(r"#\s*(\S+)\s+HASH\s*", line.strip())
        if header:
            algorithm = header.group(1).upper()
        elif algorithm in DIGEST_ALGORITHMS and line.strip():
            digest, _, listed = line.strip().partition(" ")
            if Path(listed.strip()).name == file_name:
                digests[algorithm] = digest.lower()
    if not digests:
        raise StageError(f"{source}: no BLAKE2B or SHA512 line for {file_name}")
    return digests


def file_digests(path: Path, algorithms: list[str]) -> dict[str, str]:
    hashers = {name: IDENTIFYING_ALGORITHMS[name]() for name in algorithms}
    with path.open("rb") as stream:
        feed(stream, *hashers.values())
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _signed_text(path: Path, verifier: Verifier, signer: SigningKey) -> str:
    """The verified text of a clear-signed pointer or DIGESTS file (as Gentoo publishes them).

    An unsigned one is refused: anyone who can serve the mirror could point it at an older release,
    whose own files are still validly signed.
    """
    if not path.read_text().lstrip().startswith(CLEARSIGN_HEADER):
        raise StageError(
            f"{path.name}: not signed (no OpenPGP clear signature by the {signer.role} "
            f"{signer.fingerprint}): refusing it, since an unsigned pointer or DIGESTS file could roll "
            "the farm back to an older release"
        )
    return verifier.verify(path, signer).decode()


@dataclass(frozen=True)
class Stage3Release:
    """The stage3 a mirror's latest pointer names, with its verified DIGESTS."""

    autobuilds: str
    timestamp: str
    relative_path: str
    tarball: Path
    digests_file: Path
    digests: dict[str, str]

    @property
    def sha512(self) -> str:
        return self.digests["SHA512"]


def read_latest_stage3(args: argparse.Namespace, verifier: Verifier) -> Stage3Release:
    """Read and verify the latest-stage3 pointer and the DIGESTS of the tarball it names (no tarball yet)."""
    autobuilds = f"{args.mirror.rstrip('/')}/releases/{args.arch}/autobuilds"
    pointer = args.dest / f"latest-stage3-{args.variant}.txt"
    pointer_url = f"{autobuilds}/{pointer.name}"
    progress(f"reading {pointer_url}")
    pointer.write_text(fetch_text(pointer_url, timeout=args.timeout))
    timestamp, relative_path = parse_pointer(_signed_text(pointer, verifier, verifier.release), pointer.name)
    tarball = args.dest / Path(relative_path).name
    progress(f"latest stage3: {relative_path}")
    digests_file = tarball.with_name(tarball.name + ".DIGESTS")
    download(f"{autobuilds}/{timestamp}/{digests_file.name}", digests_file, timeout=args.timeout)
    digests = parse_digests(
        _signed_text(digests_file, verifier, verifier.release), tarball.name, digests_file.name
    )
    if "SHA512" not in digests:
        raise StageError(f"{digests_file.name}: lists no SHA512 for {tarball.name}")
    return Stage3Release(autobuilds, timestamp, relative_path, tarball, digests_file, digests)


def _unchanged_since_check(what: str, checked: str | None, now: str) -> None:
    if checked is not None and checked.lower() != now:
        raise StageError(
            f"{what} changed upstream since the check (the check saw {checked[:16]}..., the mirror now has "
            f"{now[:16]}...): check again to build from the new one"
        )


def fetch_stage3(args: argparse.Namespace, verifier: Verifier) -> dict[str, str]:
    release = read_latest_stage3(args, verifier)
    tarball = release.tarball
    _unchanged_since_check(f"{tarball.name} (SHA512)", args.expect_stage3_sha512, release.sha512)
    signature = tarball.with_name(tarball.name + ".asc")
    download(f"{release.autobuilds}/{release.timestamp}/{signature.name}", signature, timeout=args.timeout)
    download(f"{release.autobuilds}/{release.relative_path}", tarball, timeout=args.timeout)

    actual = file_digests(tarball, sorted(release.digests))
    for algorithm, digest in sorted(release.digests.items()):
        if actual[algorithm] != digest:
            raise StageError(
                f"{tarball.name}: {algorithm} checksum mismatch (DIGESTS lists {digest[:16]}..., "
                f"the download has {actual[algorithm][:16]}...): the file is corrupt or was tampered with"
            )
    progress(f"{tarball.name}: {' and '.join(sorted(release.digests))} match {release.digests_file.name}")
    verifier.verify(tarball, verifier.release, signature)
    progress(f"{tarball.name}: good signature from the release key {verifier.release.fingerprint}")
    return {
        "stage3_timestamp": release.timestamp,
        "stage3_file": tarball.name,
        "stage3_path": str(tarball.resolve()),
        "stage3_sha512": actual["SHA512"],
    }


def parse_md5sum(text: str, file_name: str, source: str) -> str:
    """The MD5 an ``md5sum``-format file (Gentoo's ``portage-*.tar.xz.md5sum``) lists for ``file_name``."""
    for line in text.splitlines():
        match = MD5SUM_LINE.fullmatch(line.strip())
        if match and Path(match.group(2)).name == file_name:
            return match.group(1).lower()
    raise StageError(f"{source}: no '<md5>  {file_name}' line found")


def _snapshot_name(args: argparse.Namespace) -> str:
    if args.snapshot != "latest" and not re.fullmatch(r"\d{8}", args.snapshot):
        raise StageError(f"--snapshot {args.snapshot!r}: expected a date YYYYMMDD or 'latest'")
    return f"portage-{args.snapshot}.tar.xz"


def read_snapshot_md5(args: argparse.Namespace) -> str:
    """The MD5 the mirror publishes beside the snapshot: changes whenever the snapshot does.

    The ``.md5sum`` is unsigned; it only tells whether a fetch is needed. What gets used is the tarball
    the full fetch verifies against its ``.gpgsig`` (and finds to have this MD5).
    """
    name = _snapshot_name(args)
    url = f"{args.mirror.rstrip('/')}/snapshots/{name}.md5sum"
    progress(f"reading {url}")
    return parse_md5sum(fetch_text(url, timeout=args.timeout), name, f"{name}.md5sum")


def snapshot_date_of(tarball: Path) -> str:
    """The date (YYYYMMDD) in a snapshot's ``metadata/timestamp.chk``."""
    try:
        with tarfile.open(tarball, "r|*") as archive:
            for member in archive:
                if member.isfile() and TIMESTAMP_MEMBER.match(member.name):
                    stamp = archive.extractfile(member)
                    if stamp is not None:
                        text = stamp.read().decode().strip()
                        return email.utils.parsedate_to_datetime(text).strftime("%Y%m%d")
    except (tarfile.TarError, ValueError, TypeError) as error:
        raise StageError(f"{tarball.name}: cannot read its metadata/timestamp.chk: {error}") from error
    raise StageError(f"{tarball.name}: has no metadata/timestamp.chk to date it by")


def fetch_snapshot(args: argparse.Namespace, verifier: Verifier) -> dict[str, str]:
    snapshots = f"{args.mirror.rstrip('/')}/snapshots"
    tarball = args.dest / _snapshot_name(args)
    signature = tarball.with_name(tarball.name + ".gpgsig")
    download(f"{snapshots}/{signature.name}", signature, timeout=args.timeout)
    download(f"{snapshots}/{tarball.name}", tarball, timeout=args.timeout)
    verifier.verify(tarball, verifier.snapshot, signature)
    progress(f"{tarball.name}: good signature from the snapshot key {verifier.snapshot.fingerprint}")
    digests = file_digests(tarball, ["MD5", "SHA512"])
    # The mirror may have replaced the snapshot between reading its .md5sum and the download.
    _unchanged_since_check(f"{tarball.name} (MD5)", args.expect_snapshot_md5, digests["MD5"])
    date = snapshot_date_of(tarball) if args.snapshot == "latest" else args.snapshot
    dated = tarball.with_name(f"portage-{date}.tar.xz")
    if dated != tarball:
        tarball.replace(dated)
        signature.replace(dated.with_name(dated.name + ".gpgsig"))
    return {
        "snapshot_date": date,
        "snapshot_file": dated.name,
        "snapshot_path": str(dated.resolve()),
        "snapshot_sha512": digests["SHA512"],
        "snapshot_md5": digests["MD5"],
    }


def check_upstream(args: argparse.Namespace, verifier: Verifier) -> dict[str, str]:
    """What upstream offers now, from files of a few kilobytes: the values a build's input key is made of."""
    release = read_latest_stage3(args, verifier)
    snapshot_md5 = read_snapshot_md5(args)
    progress(f"upstream offers {release.tarball.name} and {_snapshot_name(args)} (MD5 {snapshot_md5})")
    return {
        "stage3_timestamp": release.timestamp,
        "stage3_file": release.tarball.name,
        "stage3_sha512": release.sha512,
        "snapshot_md5": snapshot_md5,
    }


def run(args: argparse.Namespace) -> None:
    if args.check_only and (args.expect_stage3_sha512 or args.expect_snapshot_md5):
        raise StageError("--check-only reports what to expect; it takes no --expect-* option")
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="farm-fetch-") as scratch:
        verifier = Verifier(args.keyring, Path(scratch), args.release_key, args.snapshot_key)
        if args.check_only:
            report(**check_upstream(args, verifier))
            return
        if args.expect_snapshot_md5 is not None:
            # Cheap: spares downloading a stage3 and a snapshot only to refuse the snapshot afterwards.
            name = _snapshot_name(args)
            _unchanged_since_check(f"{name} (MD5)", args.expect_snapshot_md5, read_snapshot_md5(args))
        stage3 = fetch_stage3(args, verifier)
        snapshot = fetch_snapshot(args, verifier)
    report(**stage3, **snapshot)
