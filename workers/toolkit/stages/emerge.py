"""Emerge a package set into a build root with Portage, through the farm binhost and distfile mirror.

Portage runs with ``ROOT`` and ``SYSROOT`` set to the build root and the root's own ``/etc/portage``
as its configuration, so the image's settings apply. The farm's pieces come from the environment
and from a ``binrepos.conf`` entry that exists only while emerge runs: the farm binhost, the farm
distfile mirror first in ``GENTOO_MIRRORS`` (then upstream), ``--usepkg --getbinpkg --buildpkg``, and
the caller's ``PKGDIR``/``DISTDIR`` (the caller pushes what lands there back to the farm's store).
The root's own binhost entries (a stage3's gentoobinhost.conf) are set aside meanwhile; with
``--upstream-binhost fallback`` or ``first`` they are used too, after or before the farm binhost, with
every package's signature checked against ``--upstream-binhost-key``.
"""

import argparse
import configparser
import contextlib
import itertools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gentoo_farm.emergeoutput import EMERGING, FAILED
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.build_root import REPOSITORY_DIR
from gentoo_farm.workers.toolkit.confined import resolve
from gentoo_farm.workers.toolkit.portage_env import (
    emerge_command,
    portage_environment,
    private_running_root,
    select_profile,
    worker_features,
)
from gentoo_farm.workers.toolkit.tools import run_echoed

FARM_BINREPO = "farm-binhost.conf"
FARM_BINHOST_PRIORITY = 100
# Portage takes a package both binhosts have from the one with the higher priority.
UPSTREAM_BINHOST_PRIORITY = {"fallback": FARM_BINHOST_PRIORITY - 50, "first": FARM_BINHOST_PRIORITY + 100}
UPSTREAM_BINHOST_POLICIES = ("off", *UPSTREAM_BINHOST_PRIORITY)
# The stand-ins for the root's own entries while emerge runs; never left behind in the image.
UPSTREAM_BINREPO_PREFIX = "farm-upstream-"
UPSTREAM_DOWNLOADS = "upstream-binhost-cache"
BINARY_PACKAGE_SUFFIXES = (".gpkg.tar", ".xpak", ".tbz2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("atoms", nargs="+", metavar="ATOM", help="packages or sets to emerge")
    parser.add_argument("--root", required=True, type=Path, help="the build root (made by the chroot stage)")
    parser.add_argument("--pkgdir", required=True, type=Path, help="where new binary packages are written")
    parser.add_argument("--distdir", required=True, type=Path, help="where fetched distfiles are written")
    parser.add_argument("--workdir", required=True, type=Path, help="scratch space for builds and logs")
    parser.add_argument("--profile", help="profile to select, relative to the repository's profiles/")
    parser.add_argument("--binhost", help="URL of the farm binhost (a PKGDIR with a Packages index)")
    parser.add_argument(
        "--binhost-key",
        type=Path,
        help="the farm's public signing key: a binary package from the binhost must carry its signature",
    )
    parser.add_argument(
        "--upstream-binhost",
        choices=UPSTREAM_BINHOST_POLICIES,
        default="off",
        help="the root's own binhost entries (a stage3's gentoobinhost.conf): off (set aside while emerge "
        "runs), or used after (fallback) or before (first) the farm binhost, with signatures checked",
    )
    parser.add_argument(
        "--upstream-binhost-key",
        type=Path,
        help="the keys that sign the upstream binhost's packages (Gentoo's gentoo-release.asc)",
    )
    parser.add_argument("--distfile-mirror", help="URL of the farm distfile mirror, tried first")
    parser.add_argument(
        "--upstream-mirror",
        action="append",
        default=[],
        help="upstream Gentoo mirror, tried after the farm mirror (repeatable)",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel make jobs (MAKEOPTS -j)"
    )


# Portage's words when a binary package's signature (or what it signs) does not verify.
SIGNATURE_REFUSED = re.compile(
    r"^!!! (?:Error extracting|Invalid binary package:) '(?P<path>[^']+)', GnuPG verification failed"
)


@dataclass
class EmergeOutcome:
    """What Portage's own output says happened."""

    compiled: list[str] = field(default_factory=list)
    binary: list[str] = field(default_factory=list)
    failure: str | None = None

    def consume(self, line: str) -> None:
        if match := EMERGING.match(line):
            (self.binary if match["binary"] else self.compiled).append(match["cpv"])
        elif match := FAILED.match(line):
            self.failure = f"{match['cpv']} failed in its {match['phase']} phase"
        elif match := SIGNATURE_REFUSED.match(line):
            self.failure = (
                f"the binary package {Path(match['path']).name} was refused: its signature does not verify "
                "(GnuPG verification failed)"
            )


@contextlib.contextmanager
def the_roots_own_binhosts(root: Path, workdir: Path, policy: str) -> Iterator[list[Path]]:
    """Set aside the root's own binhost entries while emerge runs, and put them back after; with a
    policy other than "off", stand in for them with entries that use them on the farm's terms.

    A stage3 ships /etc/portage/binrepos.conf/gentoobinhost.conf (Gentoo's official binhost): left as it
    is, which binary packages an image gets would depend on an upstream index nobody chose, and with a
    priority nobody chose. The image keeps the entries for its users. Yields the stand-in entries.
    """
    conf_dir = resolve(root, "etc/portage/binrepos.conf")
    aside = workdir.resolve() / "binrepos-set-aside"
    moved: list[str] = []
    if conf_dir.is_dir():
        aside.mkdir(parents=True, exist_ok=True)
        for entry in sorted(conf_dir.iterdir()):
            if entry.name != FARM_BINREPO and not entry.is_dir():
                entry.rename(aside / entry.name)
                moved.append(entry.name)
    stand_ins: list[Path] = []
    try:
        if moved and policy == "off":
            progress(f"the build uses the farm binhost only; set aside until it ends: {', '.join(moved)}")
        for name in moved if policy != "off" else []:
            stand_ins.append(upstream_stand_in(aside / name, conf_dir, workdir, policy))
        if stand_ins:
            order = "after" if policy == "fallback" else "before"
            progress(
                f"the root's own binhosts ({', '.join(moved)}) are used {order} the farm binhost; "
                "their packages must be signed by --upstream-binhost-key"
            )
        yield stand_ins
    finally:
        for stand_in in stand_ins:
            stand_in.unlink(missing_ok=True)
        for name in moved:
            (aside / name).rename(conf_dir / name)


def upstream_stand_in(entry: Path, conf_dir: Path, workdir: Path, policy: str) -> Path:
    """Write a copy of the binrepos.conf file ``entry`` with the policy's priority, signatures checked
    and downloads in the work directory; return its path."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(entry.read_text(), source=str(entry))
    except (configparser.Error, UnicodeDecodeError) as error:
        raise StageError(
            f"{entry.name} (the root's binrepos.conf): not a binrepos.conf file: {error}"
        ) from error
    for name in parser.sections():
        if not parser.get(name, "sync-uri", fallback=""):
            raise StageError(f"{entry.name} (the root's binrepos.conf): [{name}] has no sync-uri")
        parser[name]["priority"] = str(UPSTREAM_BINHOST_PRIORITY[policy])
        parser[name]["location"] = str(upstream_download_dir(workdir, name))
        parser[name]["verify-signature"] = "true"
    stand_in = conf_dir / f"{UPSTREAM_BINREPO_PREFIX}{entry.name}"
    with stand_in.open("w") as output:
        parser.write(output)
    return stand_in


def upstream_download_dir(workdir: Path, section: str) -> Path:
    """Where Portage keeps what it downloads from the upstream binhost ``section``."""
    return workdir.resolve() / UPSTREAM_DOWNLOADS / section


def binary_packages_in(directory: Path) -> set[str]:
    """The CPVs of the binary packages Portage downloaded into a binrepo's ``location``.

    Portage keeps each at the path the remote index gives it: ``CAT/PF.gpkg.tar``, or with
    binpkg-multi-instance (as Gentoo's binhost has it) ``CAT/PN/PF-BUILD_ID.gpkg.tar``.
    """
    found: set[str] = set()
    for path in directory.rglob("*") if directory.is_dir() else ():
        suffix = next((suffix for suffix in BINARY_PACKAGE_SUFFIXES if path.name.endswith(suffix)), None)
        if suffix is None or not path.is_file():
            continue
        parts = path.relative_to(directory).parts
        package = path.name.removesuffix(suffix)
        if len(parts) == 3:
            package = package.rsplit("-", 1)[0]
        found.add(f"{parts[0]}/{package}")
    return found


def write_binrepo(root: Path, args: argparse.Namespace) -> Path:
    conf_dir = resolve(root, "etc/portage/binrepos.conf")
    if conf_dir.exists() and not conf_dir.is_dir():
        raise StageError(
            f"{conf_dir} is a file; make it a directory (as current stage3s ship it) to add the farm binhost"
        )
    conf_dir.mkdir(parents=True, exist_ok=True)
    entry = conf_dir / FARM_BINREPO
    entry.write_text(
        "[farm]\n"
        f"priority = {FARM_BINHOST_PRIORITY}\nsync-uri = {args.binhost.rstrip('/')}\n"
        f"location = {args.workdir.resolve() / 'binhost-cache'}\n"
        f"verify-signature = {'true' if args.binhost_key else 'false'}\n"
    )
    return entry


@contextlib.contextmanager
def trusted_keyring(key_files: Mapping[str, Path]) -> Iterator[Path]:
    """A GnuPG home holding only the keys of ``key_files`` (``{option: file}``), each trusted ultimately,
    for Portage's binary package checks (during a key rotation the farm's file holds its new key and its
    old one, which signed the packages the binhost still serves).

    Portage accepts a gpkg signature only from a key GnuPG trusts fully or ultimately (what getuto
    sets up in /etc/portage/gnupg on a Gentoo machine). It has one such home for every binhost, so a
    package from either binhost may carry either's signature. Running as root, it verifies as "nobody"
    (GPG_VERIFY_USER_DROP), so the home must be reachable by everyone: it lives in the system's temporary
    directory, not under a work directory whose parents may be private, for this emerge alone.
    """
    for option, key_file in key_files.items():
        if not key_file.is_file():
            raise StageError(f"{option} {key_file}: no such file")
    with tempfile.TemporaryDirectory(prefix="farm-binhost-keyring-") as scratch:
        home = Path(scratch)
        gpg = ["gpg", "--homedir", scratch, "--batch", "--no-tty"]
        fingerprints: list[str] = []
        for option, key_file in key_files.items():
            imported = subprocess.run(
                [*gpg, "--import", str(key_file)], capture_output=True, text=True, check=False
            )
            listing = subprocess.run(
                [*gpg, "--with-colons", "--list-keys"], capture_output=True, text=True, check=False
            ).stdout
            lines = listing.splitlines()
            # Ownertrust is given to primary keys: the fpr line right after each pub line (not a subkey's).
            known = [
                line.split(":")[9]
                for previous, line in itertools.pairwise(lines)
                if previous.startswith("pub:") and line.startswith("fpr:")
            ]
            if imported.returncode != 0 or len(known) == len(fingerprints):
                raise StageError(
                    f"{option} {key_file}: not an OpenPGP public key ({imported.stderr.strip()})"
                )
            fingerprints = known
        trust = "".join(f"{fingerprint}:6:\n" for fingerprint in fingerprints)
        subprocess.run([*gpg, "--import-ownertrust"], input=trust, capture_output=True, text=True, check=True)
        # Portage verifies with --no-auto-check-trustdb, so the trust must be computed now.
        subprocess.run([*gpg, "--check-trustdb"], capture_output=True, text=True, check=True)
        for directory, _, files in os.walk(home):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        progress(f"binary packages from the binhost must be signed by {' or '.join(fingerprints)}")
        yield home


def build_environment(args: argparse.Namespace, root: Path, running_root: dict[str, str]) -> dict[str, str]:
    mirrors = [url.rstrip("/") for url in [args.distfile_mirror, *args.upstream_mirror] if url]
    return portage_environment(
        root,
        running_root,
        workdir=args.workdir.resolve(),
        pkgdir=args.pkgdir.resolve(),
        distdir=args.distdir.resolve(),
        mirrors=mirrors,
        jobs=args.jobs,
    )


def run(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    if not resolve(root, f"{REPOSITORY_DIR}/profiles").is_dir():
        raise StageError(f"{root}: no Portage repository at /{REPOSITORY_DIR}; run the chroot stage first")
    for directory in (args.pkgdir, args.distdir, args.workdir / "tmp", args.workdir / "logs"):
        directory.mkdir(parents=True, exist_ok=True)
    if args.upstream_binhost != "off" and args.upstream_binhost_key is None:
        raise StageError(
            f"--upstream-binhost {args.upstream_binhost} needs --upstream-binhost-key: "
            "the upstream binhost's packages are used only with their signatures checked"
        )
    profile = select_profile(root, args.profile)
    with contextlib.ExitStack() as cleanup:
        upstream_binrepos = cleanup.enter_context(
            the_roots_own_binhosts(root, args.workdir, args.upstream_binhost)
        )
        binrepo = write_binrepo(root, args) if args.binhost else None
        if binrepo is not None:
            cleanup.callback(binrepo.unlink, missing_ok=True)
        binrepos = [*([binrepo] if binrepo else []), *upstream_binrepos]
        settings = {"FEATURES": worker_features(), "PKGDIR": str(args.pkgdir.resolve())}
        keys = {"--binhost-key": args.binhost_key} if args.binhost_key else {}
        if upstream_binrepos:
            keys["--upstream-binhost-key"] = args.upstream_binhost_key
        if keys:
            keyring = cleanup.enter_context(trusted_keyring(keys))
            settings["BINPKG_GPG_VERIFY_GPG_HOME"] = str(keyring)
        running_root = private_running_root(args.workdir, profile, binrepos, settings)
        environment = build_environment(args, root, running_root) | settings
        distfiles_before = {path.name for path in args.distdir.iterdir()}
        command = [emerge_command(), "--usepkg", "--buildpkg", "--color=n", "--nospinner", "--verbose"]
        if binrepos:
            command.append("--getbinpkg")
        command += args.atoms
        progress(f"running: {' '.join(command)}")
        progress(f"  ROOT={root} PKGDIR={environment['PKGDIR']} DISTDIR={environment['DISTDIR']}")
        progress(f"  GENTOO_MIRRORS={environment['GENTOO_MIRRORS']}")
        outcome = EmergeOutcome()
        returncode = run_echoed(command, env=environment, on_line=outcome.consume)
    if returncode != 0:
        why = outcome.failure or f"emerge exited with status {returncode}"
        raise StageError(f"emerge {' '.join(args.atoms)}: {why} (see the log above)")
    fetched = sorted(
        path.name
        for path in args.distdir.iterdir()
        # Portage keeps its mirror bookkeeping in dot-files and half-done downloads under .__download__.
        if path.is_file()
        and path.name not in distfiles_before
        and not path.name.startswith(".")
        and not path.name.endswith(".__download__")
    )
    downloads = args.workdir.resolve() / UPSTREAM_DOWNLOADS
    downloaded_upstream = set().union(
        *(binary_packages_in(location) for location in (downloads.iterdir() if downloads.is_dir() else ()))
    )
    from_upstream = [cpv for cpv in outcome.binary if cpv in downloaded_upstream]
    progress(
        f"compiled {len(outcome.compiled)} package(s), installed {len(outcome.binary)} from binary packages "
        f"({len(from_upstream)} of them from the upstream binhost), fetched {len(fetched)} distfile(s)"
    )
    report(
        packages_compiled=outcome.compiled,
        packages_binary=outcome.binary,
        packages_upstream_binary=from_upstream,
        distfiles_fetched=fetched,
        pkgdir=str(args.pkgdir.resolve()),
        distdir=str(args.distdir.resolve()),
    )
