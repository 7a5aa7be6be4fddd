"""Emerge a package set into a build root with Portage, through the farm binhost and distfile mirror.

Portage runs with ``ROOT`` and ``SYSROOT`` set to the build root and the root's own ``/etc/portage``
as its configuration, so the image's settings apply. The farm's pieces come from the environment
and from a ``binrepos.conf`` entry that exists only while emerge runs (the root's own entries, such
as a stage3's gentoobinhost.conf, are set aside meanwhile): the farm binhost, the farm
distfile mirror first in ``GENTOO_MIRRORS`` (then upstream), ``--usepkg --getbinpkg --buildpkg``, and
the caller's ``PKGDIR``/``DISTDIR`` (the caller pushes what lands there back to the farm's store).
"""

import argparse
import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gentoo_farm.emergeoutput import EMERGING, FAILED
from gentoo_farm.portage_tools import INSTALL_HINT, portage_tool
from gentoo_farm.workers.toolkit import StageError, progress, report
from gentoo_farm.workers.toolkit.confined import resolve
from gentoo_farm.workers.toolkit.unpack_root import REPOSITORY_DIR

FARM_BINREPO = "farm-binhost.conf"


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


def emerge_command() -> str:
    """The emerge of the Portage this toolkit runs with (:func:`portage_tool`)."""
    found = portage_tool("emerge")
    if found is None:
        raise StageError(f"emerge not found: {INSTALL_HINT} on this worker")
    return found


def select_profile(root: Path, profile: str | None) -> Path:
    """Point the root's make.profile at ``profile`` (as eselect does) or check the stage3's own choice."""
    # The stage3's links (make.profile's own included) mean what they mean inside the image.
    link = resolve(root, "etc/portage/make.profile", follow_last=False)
    if profile is not None:
        target = resolve(root, f"{REPOSITORY_DIR}/profiles/{profile}")
        if not target.is_dir():
            raise StageError(f"profile {profile}: no such directory {target}")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))
    selected = resolve(root, "etc/portage/make.profile")
    if not selected.is_dir():
        raise StageError(f"{link}: missing or points nowhere; pass --profile to select one")
    return selected


@contextlib.contextmanager
def only_the_farm_binhost(root: Path, workdir: Path) -> Iterator[None]:
    """Set aside the root's own binhost entries while emerge runs, and put them back after.

    A stage3 ships /etc/portage/binrepos.conf/gentoobinhost.conf (Gentoo's official binhost): left in
    place, which binary packages an image gets would depend on an upstream index nobody chose. The
    image keeps the entries for its users; the build uses the farm's binhost alone.
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
    if moved:
        progress(f"the build uses the farm binhost only; set aside until it ends: {', '.join(moved)}")
    try:
        yield
    finally:
        for name in moved:
            (aside / name).rename(conf_dir / name)


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
        f"priority = 100\nsync-uri = {args.binhost.rstrip('/')}\n"
        f"location = {args.workdir.resolve() / 'binhost-cache'}\n"
        f"verify-signature = {'true' if args.binhost_key else 'false'}\n"
    )
    return entry


@contextlib.contextmanager
def trusted_keyring(key_file: Path) -> Iterator[Path]:
    """A GnuPG home holding only the keys of ``key_file``, each trusted ultimately, for Portage's binary
    package checks (during a key rotation the file holds the farm's new key and its old one, which signed
    the packages the binhost still serves).

    Portage accepts a gpkg signature only from a key GnuPG trusts fully or ultimately (what getuto
    sets up in /etc/portage/gnupg on a Gentoo machine). Running as root, it verifies as "nobody"
    (GPG_VERIFY_USER_DROP), so the home must be reachable by everyone: it lives in the system's temporary
    directory, not under a work directory whose parents may be private, for this emerge alone.
    """
    if not key_file.is_file():
        raise StageError(f"--binhost-key {key_file}: no such file")
    with tempfile.TemporaryDirectory(prefix="farm-binhost-keyring-") as scratch:
        home = Path(scratch)
        gpg = ["gpg", "--homedir", scratch, "--batch", "--no-tty"]
        imported = subprocess.run(
            [*gpg, "--import", str(key_file)], capture_output=True, text=True, check=False
        )
        listing = subprocess.run(
            [*gpg, "--with-colons", "--list-keys"], capture_output=True, text=True, check=False
        ).stdout
        lines = listing.splitlines()
        # Ownertrust is given to primary keys: the fpr line right after each pub line (not a subkey's).
        fingerprints = [
            line.split(":")[9]
            for previous, line in itertools.pairwise(lines)
            if previous.startswith("pub:") and line.startswith("fpr:")
        ]
        if imported.returncode != 0 or not fingerprints:
            raise StageError(
                f"--binhost-key {key_file}: not an OpenPGP public key ({imported.stderr.strip()})"
            )
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


def private_running_root(
    workdir: Path, profile: Path, binrepo: Path | None, settings: Mapping[str, str]
) -> dict[str, str]:
    """Give a Portage installed as a Python package a running root of its own.

    Installed that way (a venv on a non-Gentoo worker), Portage takes its install prefix as the running
    root and, even with ROOT elsewhere, refuses to run unless that prefix holds a valid profile. Rather
    than edit the toolkit's installation, point it at a private prefix in the work directory. On a
    Gentoo worker Portage's prefix is "" and the worker's own configuration serves as it always does.
    """
    from portage import const

    if not const.EPREFIX:
        return {}
    prefix = workdir.resolve() / "portage-prefix"
    config = prefix / "etc/portage"
    config.mkdir(parents=True, exist_ok=True)
    global_config = prefix / const.GLOBAL_CONFIG_PATH.lstrip("/")
    global_config.parent.mkdir(parents=True, exist_ok=True)
    for link, target in (
        (global_config, Path(const.EPREFIX) / const.GLOBAL_CONFIG_PATH.lstrip("/")),
        (config / "make.profile", profile),
    ):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    # The running root's config sees none of our environment (Portage passes it only PATH and a few
    # more), so it gets the same settings and binhost: its packages (BDEPEND) land in our PKGDIR too.
    (config / "make.conf").write_text("".join(f'{name}="{value}"\n' for name, value in settings.items()))
    running_binrepo = config / "binrepos.conf"
    running_binrepo.unlink(missing_ok=True)
    if binrepo is not None:
        shutil.copyfile(binrepo, running_binrepo)
    return {"PORTAGE_OVERRIDE_EPREFIX": str(prefix)}


def host_shims(workdir: Path) -> Path:
    """Portage unpacks with ``gtar``; hosts without that name get a link to tar."""
    shims = workdir.resolve() / "shims"
    shims.mkdir(parents=True, exist_ok=True)
    gtar = shims / "gtar"
    if shutil.which("gtar") is None and not gtar.exists():
        tar = shutil.which("tar")
        if tar is None:
            raise StageError("tar not found on this worker")
        gtar.symlink_to(tar)
    return shims


def worker_features() -> str:
    """FEATURES this worker can honour; Portage's defaults stay wherever the worker supports them."""
    # A build root is thrown away if the build dies, so syncing it to disk after every merge buys nothing.
    features = ["-news", "-merge-sync", "-qa-unresolved-soname-deps"]
    if shutil.which("sandbox") is None:
        features += ["-sandbox", "-usersandbox"]
    try:
        pwd.getpwnam("portage")
    except KeyError:
        features += ["-userpriv", "-userfetch", "-usersync"]
    return " ".join(features)


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


def portage_environment(
    root: Path,
    running_root: dict[str, str],
    *,
    workdir: Path,
    pkgdir: Path,
    distdir: Path,
    mirrors: list[str],
    jobs: int,
) -> dict[str, str]:
    """The environment every Portage run of the toolkit gets: the build root is ROOT and its own config."""
    repository = resolve(root, str(REPOSITORY_DIR))
    environment = {
        **os.environ,
        **running_root,
        "PATH": os.pathsep.join(
            [str(host_shims(workdir)), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "EPREFIX": "",
        "ROOT": str(root),
        "SYSROOT": str(root),
        "PORTAGE_CONFIGROOT": str(root),
        # The repository lives in the build root, not at the worker's /var/db/repos/gentoo.
        "PORTAGE_REPOSITORIES": f"[DEFAULT]\nmain-repo = gentoo\n\n[gentoo]\nlocation = {repository}\n",
        "PKGDIR": str(pkgdir),
        "DISTDIR": str(distdir),
        "PORTAGE_TMPDIR": str(workdir / "tmp"),
        "PORT_LOGDIR": str(workdir / "logs"),
        "GENTOO_MIRRORS": " ".join(mirrors),
        "FEATURES": worker_features(),
        "MAKEOPTS": f"-j{jobs}",
        "BINPKG_FORMAT": "gpkg",
        "NOCOLOR": "true",
        "PYTHONUNBUFFERED": "1",
    }
    if "-userpriv" in environment["FEATURES"]:
        environment |= {"PORTAGE_USERNAME": "root", "PORTAGE_GRPNAME": "root"}
    return environment


def run(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    if not resolve(root, f"{REPOSITORY_DIR}/profiles").is_dir():
        raise StageError(f"{root}: no Portage repository at /{REPOSITORY_DIR}; run the chroot stage first")
    for directory in (args.pkgdir, args.distdir, args.workdir / "tmp", args.workdir / "logs"):
        directory.mkdir(parents=True, exist_ok=True)
    profile = select_profile(root, args.profile)
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(only_the_farm_binhost(root, args.workdir))
        binrepo = write_binrepo(root, args) if args.binhost else None
        if binrepo is not None:
            cleanup.callback(binrepo.unlink, missing_ok=True)
        settings = {"FEATURES": worker_features(), "PKGDIR": str(args.pkgdir.resolve())}
        if args.binhost_key:
            keyring = cleanup.enter_context(trusted_keyring(args.binhost_key))
            settings["BINPKG_GPG_VERIFY_GPG_HOME"] = str(keyring)
        running_root = private_running_root(args.workdir, profile, binrepo, settings)
        environment = build_environment(args, root, running_root) | settings
        distfiles_before = {path.name for path in args.distdir.iterdir()}
        command = [emerge_command(), "--usepkg", "--buildpkg", "--color=n", "--nospinner", "--verbose"]
        if args.binhost:
            command.append("--getbinpkg")
        command += args.atoms
        progress(f"running: {' '.join(command)}")
        progress(f"  ROOT={root} PKGDIR={environment['PKGDIR']} DISTDIR={environment['DISTDIR']}")
        progress(f"  GENTOO_MIRRORS={environment['GENTOO_MIRRORS']}")
        outcome = EmergeOutcome()
        with subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                print(line, end="", flush=True)
                outcome.consume(line)
            returncode = process.wait()
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
    progress(
        f"compiled {len(outcome.compiled)} package(s), installed {len(outcome.binary)} from binary packages, "
        f"fetched {len(fetched)} distfile(s)"
    )
    report(
        packages_compiled=outcome.compiled,
        packages_binary=outcome.binary,
        distfiles_fetched=fetched,
        pkgdir=str(args.pkgdir.resolve()),
        distdir=str(args.distdir.resolve()),
    )
