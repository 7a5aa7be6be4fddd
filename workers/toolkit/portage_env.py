"""Running the worker's Portage on a build root: the emerge to run, the root's profile, and the
environment every Portage run of the toolkit gets (the build root as ROOT with its own configuration)."""

import os
import pwd
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from gentoo_farm.portage_tools import INSTALL_HINT, portage_tool
from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.build_root import REPOSITORY_DIR
from gentoo_farm.workers.toolkit.confined import resolve


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


def private_running_root(
    workdir: Path, profile: Path, binrepos: list[Path], settings: Mapping[str, str]
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
    if binrepos:
        running_binrepo.write_text("\n".join(binrepo.read_text() for binrepo in binrepos))
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
