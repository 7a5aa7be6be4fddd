"""The worker's code as the master hands it out: the master's own gentoo-farm wheel and a wheelhouse of
what ``buildbot-worker`` and ``farm-worker`` need, each file named by its sha256.

A worker that lacks the worker software installs exactly these files with ``pip install --no-index
--require-hashes`` (``workers/latent/bootstrap.py``): it runs the master's code, never what a public index
happens to hold under the same name. The master writes its wheel from the source tree it runs from
(:func:`build_master_wheel`); the dependency wheels come from a directory the operator names or are
downloaded with ``pip download`` from the master's own package index (pip's configuration), at the
versions the master itself runs (:func:`worker_requirements`). A worker image runs its own Python (Gentoo's,
not the master's), so the wheelhouse holds a wheel of each requirement for each of ``[workers]
python_versions``: a pure wheel serves them all, a binary one is fetched per Python, and the manifest
groups the files by Python version; the worker installs its own Python's group. Every file lands in the
store under ``worker-wheels/<sha256>/<file>``, so a file's key names its content and uploading it again
changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

import gentoo_farm
from gentoo_farm.config import FarmConfig
from gentoo_farm.store import open_store
from gentoo_farm.store.base import ArtifactStore, StoreSettings

PROJECT = "gentoo-farm"
# What a worker runs: buildbot-worker (at the master's Buildbot version: they speak one protocol) and
# portage, which the toolkit imports; gentoo-farm itself is installed without its dependencies (the
# master's: Buildbot, openstacksdk, boto3 ...), which the toolkit does not import.
WORKER_REQUIREMENT_ROOTS = ("buildbot-worker", "portage")
STORE_PREFIX = "worker-wheels/"
MANIFEST_NAME = "worker-wheels.json"
PIP_TIMEOUT = 1800
# The Pythons the toolkit and buildbot-worker run on: the Requires-Python of the master's wheel as workers
# install it. The master's own pyproject pins the master's venv to one Python (its requires-python, what
# the master is tested with); a worker runs the master's code on the worker image's Python instead
# (Gentoo's, 3.12 or 3.13 today), so the worker's wheel must not carry that pin.
WORKER_REQUIRES_PYTHON = ">=3.11"
# Binary wheels are fetched for CPython on x86_64 glibc Linux (the farm builds amd64 images only) as
# manylinux up to this glibc: older first, so the most widely installable wheel of a release wins. Gentoo's
# stage3s carry a newer glibc; a musl stage3 cannot install manylinux wheels.
WORKER_GLIBC_MINOR = 34
# Zip entries carry this date, the earliest a zip can hold: a wheel's bytes depend on the code alone.
_WHEEL_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


class WheelhouseError(Exception):
    """The worker's wheels cannot be made or published; the message says which and why."""


@dataclass(frozen=True)
class WheelFile:
    filename: str
    sha256: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._+\-]+\.whl", self.filename):
            raise WheelhouseError(f"wheel file name {self.filename!r}: expected NAME-VERSION-...-TAG.whl")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise WheelhouseError(f"{self.filename}: sha256 {self.sha256!r} is not 64 hex digits")

    @property
    def key(self) -> str:
        """The store key: the content's hash in the key, so one key never names two contents."""
        return f"{STORE_PREFIX}{self.sha256}/{self.filename}"


@dataclass(frozen=True)
class WorkerWheels:
    """Everything a worker installs: ``version`` is the master's gentoo-farm version (an image with this
    version installed skips the install); ``pythons`` maps each Python version served ("3.12") to the
    files a worker with that Python installs: the master's wheel and its dependency wheels."""

    version: str
    pythons: Mapping[str, tuple[WheelFile, ...]]

    @property
    def files(self) -> tuple[WheelFile, ...]:
        """Every file of every Python once (a pure wheel serves several)."""
        unique: dict[str, WheelFile] = {}
        for group in self.pythons.values():
            for wheel in group:
                unique.setdefault(wheel.key, wheel)
        return tuple(unique.values())

    def to_json(self) -> str:
        pythons = {
            python: [{"filename": wheel.filename, "sha256": wheel.sha256} for wheel in group]
            for python, group in self.pythons.items()
        }
        return json.dumps({"version": self.version, "pythons": pythons}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorkerWheels:
        try:
            data = json.loads(text)
            if "pythons" not in data and "files" in data:
                raise WheelhouseError(
                    f"{MANIFEST_NAME} was written by an older gentoo-farm (one Python only): `farm up` "
                    "writes it anew"
                )
            pythons = {
                str(python): tuple(WheelFile(**entry) for entry in group)
                for python, group in data["pythons"].items()
            }
            return cls(data["version"], pythons)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise WheelhouseError(f"{MANIFEST_NAME}: not a worker wheel manifest ({error})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def master_version() -> str:
    return importlib.metadata.version(PROJECT)


def _is_project_tree(directory: Path) -> bool:
    pyproject = directory / "pyproject.toml"
    return (
        pyproject.is_file() and tomllib.loads(pyproject.read_text()).get("project", {}).get("name") == PROJECT
    )


def master_source_dir() -> Path:
    """The source tree of the running gentoo-farm: the checkout its modules are imported from (an
    editable install, a checkout on the path), else the tree pip installed it from (PEP 610's record)."""
    running = Path(gentoo_farm.__file__).resolve().parent.parent
    if _is_project_tree(running):
        return running
    for distribution in importlib.metadata.distributions(name=PROJECT):
        origin = json.loads(distribution.read_text("direct_url.json") or "{}")
        url = urlparse(origin.get("url", ""))
        if url.scheme == "file" and "dir_info" in origin and _is_project_tree(Path(url2pathname(url.path))):
            return Path(url2pathname(url.path))
    raise WheelhouseError(
        f"{PROJECT} was not installed from a source tree, so the master cannot build the wheel its "
        "workers install; host a wheel yourself and name it in [[workers.openstack]] install"
    )


def _pip(*args: str) -> None:
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
        )
    except subprocess.CalledProcessError as error:
        tail = "\n".join((error.stdout + error.stderr).splitlines()[-15:])
        raise WheelhouseError(f"pip {args[0]} failed:\n{tail}") from None
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"pip {args[0]} took longer than {PIP_TIMEOUT} s") from None


def _wheel_metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        # not project["requires-python"]: that pins the master's venv (see WORKER_REQUIRES_PYTHON)
        f"Requires-Python: {WORKER_REQUIRES_PYTHON}",
    ]
    lines += [f"Requires-Dist: {requirement}" for requirement in project.get("dependencies", [])]
    return "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_master_wheel(dest: Path, source: Path | None = None) -> Path:
    """The wheel of the code the master runs (``source``: its source tree), in ``dest``.

    Written here rather than by ``pip wheel``: the project's build backend needs setuptools >= 77 and its
    ``bdist_wheel``, which the master's venv need not have, and fetching them would reach an index. The
    wheel holds what setuptools would put in it (the package directories ``[tool.setuptools.package-dir]``
    maps, data files included; ``[project]``'s metadata and scripts; Requires-Python is the toolkit's
    :data:`WORKER_REQUIRES_PYTHON`, not the master's pin), in a fixed order with fixed
    timestamps: the same code always makes the same file, so its sha256 (and store key) only changes
    with the code.
    """
    source = source or master_source_dir()
    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    project = pyproject["project"]
    package_dirs = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    contents: dict[str, bytes] = {}
    for package, directory in sorted(package_dirs.items()):
        root = source / directory
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.relative_to(root).parts:
                archive_name = "/".join((*package.split("."), *path.relative_to(root).parts))
                contents[archive_name] = path.read_bytes()
    name, version = project["name"].replace("-", "_"), project["version"]
    info = f"{name}-{version}.dist-info"
    contents[f"{info}/METADATA"] = _wheel_metadata(project).encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: gentoo-farm\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    scripts = project.get("scripts", {})
    if scripts:
        entry_points = "".join(f"{script} = {target}\n" for script, target in sorted(scripts.items()))
        contents[f"{info}/entry_points.txt"] = f"[console_scripts]\n{entry_points}".encode()
    record = [_record_line(archive_name, data) for archive_name, data in contents.items()]
    contents[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()

    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for archive_name, data in contents.items():
            entry = zipfile.ZipInfo(archive_name, date_time=_WHEEL_TIMESTAMP)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return wheel


def worker_requirements(
    roots: Iterable[str] = WORKER_REQUIREMENT_ROOTS, python_version: str | None = None
) -> list[str]:
    """``name==version`` of every distribution the roots need on ``python_version`` (default: the
    master's), at the version the master has installed (so buildbot-worker is at the master's Buildbot
    version), in name order."""
    environment = {"extra": ""}
    if python_version:
        environment |= {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    pinned: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in pinned:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise WheelhouseError(
                f"the worker needs {name}"
                + (f" on Python {python_version}" if python_version else "")
                + ", which the master does not have installed"
            ) from None
        pinned[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def worker_platforms() -> list[str]:
    """The platform tags of binary wheels a worker installs (see WORKER_GLIBC_MINOR), most portable first."""
    legacy = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    return [*legacy, *(f"manylinux_2_{minor}_x86_64" for minor in range(5, WORKER_GLIBC_MINOR + 1))]


def _python_tags(python_version: str) -> list[Tag]:
    """The wheel tags a CPython ``python_version`` worker installs, best first."""
    version = tuple(int(part) for part in python_version.split("."))
    platforms = worker_platforms()
    # packaging prefers the first platform; the most portable wheel first, as pip download picks
    return [
        *cpython_tags(version, platforms=platforms),
        *compatible_tags(version, f"cp{version[0]}{version[1]}", platforms=platforms),
    ]


def _missing(wheelhouse: Path, requirements: list[str], python_version: str) -> list[str]:
    best = _best(wheelhouse, requirements, python_version)
    return [pin for pin in requirements if pin not in best]


def _download(dest: Path, pins: list[str], python_version: str) -> None:
    platforms = [argument for platform in worker_platforms() for argument in ("--platform", platform)]
    _pip(
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        "--dest",
        str(dest),
        *pins,
    )


def build_dependency_wheelhouse(dest: Path, requirements: Mapping[str, list[str]]) -> None:
    """Fill ``dest`` with a wheel of each requirement for each Python version (``requirements`` maps
    "3.12" to its ``name==version`` pins), from the index pip is configured with: ``pip download`` of the
    published wheels for that Python (binary ones for CPython on manylinux x86_64), and for a release
    published as source only, ``pip wheel`` with the master's Python, which serves other Pythons only if
    the wheel it makes is pure. Wheels already in ``dest`` are kept."""
    dest.mkdir(parents=True, exist_ok=True)
    built: set[str] = set()
    for python_version, pins in requirements.items():
        missing = _missing(dest, pins, python_version)
        if not missing:
            continue
        try:
            _download(dest, missing, python_version)
        except WheelhouseError:
            # one release without a wheel fails the whole download: fetch the others one by one
            for pin in missing:
                with contextlib.suppress(WheelhouseError):
                    _download(dest, [pin], python_version)
        for pin in _missing(dest, pins, python_version):
            if pin not in built:
                built.add(pin)
                _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), pin)
        unserved = _missing(dest, pins, python_version)
        if unserved:
            raise WheelhouseError(
                f"no wheel serves Python {python_version} for: {', '.join(unserved)} (the index has no wheel "
                f"for it, and the one the master built from source with Python {running_python()} is not "
                "pure Python); drop that version from [workers] python_versions or provide the wheel in "
                "[workers] wheelhouse"
            )


def _best(wheelhouse: Path, requirements: list[str], python_version: str) -> dict[str, Path]:
    priority = {tag: rank for rank, tag in enumerate(_python_tags(python_version))}
    best: dict[str, tuple[int, Path]] = {}
    for path in wheelhouse.glob("*.whl"):
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        rank = min((priority[tag] for tag in tags if tag in priority), default=None)
        pin = f"{name}=={version}"
        if rank is not None and pin in requirements and (pin not in best or rank < best[pin][0]):
            best[pin] = (rank, path)
    return {pin: path for pin, (_, path) in best.items()}


def select_wheels(wheelhouse: Path, requirements: list[str], python_version: str | None = None) -> list[Path]:
    """One wheel in ``wheelhouse`` per requirement (``name==version``), the best one a CPython
    ``python_version`` (default: the master's) on x86_64 Linux installs."""
    python_version = python_version or running_python()
    best = _best(wheelhouse, requirements, python_version)
    missing = [pin for pin in requirements if pin not in best]
    if missing:
        raise WheelhouseError(
            f"the worker wheelhouse {wheelhouse} has no wheel for Python {python_version} of: "
            f"{', '.join(missing)}"
        )
    return [best[pin] for pin in requirements]


def describe_wheels(version: str, pythons: Mapping[str, Iterable[Path]]) -> WorkerWheels:
    """The manifest of the files each Python version installs (``pythons``: "3.12" to its files)."""
    listed = {python: list(paths) for python, paths in pythons.items()}
    hashes = {path: file_sha256(path) for paths in listed.values() for path in set(paths)}
    groups = {
        python: tuple(WheelFile(path.name, hashes[path]) for path in paths)
        for python, paths in listed.items()
    }
    return WorkerWheels(version, groups)


def publish_wheels(store: ArtifactStore, wheels: WorkerWheels, paths: Iterable[Path]) -> None:
    """Upload each file of ``wheels`` (found among ``paths``) unless the store has it: its key is its
    hash, so an existing object is that very file."""
    by_name = {path.name: path for path in paths}
    for wheel in wheels.files:
        if not store.exists(wheel.key):
            store.put_file(wheel.key, by_name[wheel.filename])


def worker_wheels_dir(basedir: Path) -> Path:
    """Where `farm up` keeps the master's wheel, the wheelhouse it builds and the manifest of both."""
    return basedir / "worker-wheels"


def needs_worker_wheels(config: FarmConfig) -> bool:
    """Whether any OpenStack pool installs the master's wheels (rather than its own ``install``)."""
    return any(not pool.install for pool in config.workers.openstack)


def prepare_worker_wheels(config: FarmConfig) -> WorkerWheels:
    """Write the master's wheel, fill the wheelhouse with what it lacks, publish both to the store and
    record them in the manifest the master's OpenStack workers read (`farm up` runs this)."""
    directory = worker_wheels_dir(config.basedir)
    requirements = {
        python: worker_requirements(python_version=python) for python in config.workers.python_versions
    }
    if config.workers.wheelhouse:
        wheelhouse = config.basedir / config.workers.wheelhouse
        if not wheelhouse.is_dir():
            raise WheelhouseError(f"[workers] wheelhouse {str(wheelhouse)!r}: no such directory")
    else:
        wheelhouse = directory / "wheelhouse"
        build_dependency_wheelhouse(wheelhouse, requirements)
    master_wheel = build_master_wheel(directory)
    pythons = {
        python: [master_wheel, *select_wheels(wheelhouse, pins, python)]
        for python, pins in requirements.items()
    }
    wheels = describe_wheels(master_version(), pythons)
    publish_wheels(open_store(config.store), wheels, {path for paths in pythons.values() for path in paths})
    manifest = directory / MANIFEST_NAME
    manifest.with_suffix(".tmp").write_text(wheels.to_json())
    manifest.with_suffix(".tmp").replace(manifest)
    return wheels


@dataclass(frozen=True)
class ServedWheels:
    """How an OpenStack instance gets the master's wheels: the manifest `farm up` wrote and the store that
    holds the files, read at each instance start (a `farm up` after an upgrade needs no reconfig)."""

    manifest: Path
    store: StoreSettings
    url_expiry_seconds: int

    def for_instance(self) -> tuple[WorkerWheels, dict[str, str]]:
        """The wheels and a fresh short-lived URL for each."""
        try:
            wheels = WorkerWheels.from_json(self.manifest.read_text())
        except FileNotFoundError:
            raise WheelhouseError(
                f"the master's worker wheels are not prepared ({self.manifest} is missing): `farm up` "
                "prepares them"
            ) from None
        store = open_store(self.store)
        urls = {
            wheel.filename: store.download_url(wheel.key, self.url_expiry_seconds) for wheel in wheels.files
        }
        return wheels, urls
