"""farm.toml: the farm's one configuration file, validated when it is loaded.

Every section is a dataclass; the loader walks the dataclass fields, so the schema and the
documentation of defaults live in one place. Every mistake is reported, each with its line, the key,
the value and what was expected; unknown keys are errors (a typo must not silently become a
default), named with the nearest known key.
"""

import dataclasses
import difflib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gentoo_farm.artifacts import IMAGE_VARIANTS, WORKER_IMAGE

CONFIG_NAME = "farm.toml"
# Gentoo Linux Release Engineering (Automated Weekly Release Key) and the Gentoo ebuild repository
# signing key (Automated Signing Key): https://www.gentoo.org/downloads/signatures/
GENTOO_RELEASE_KEY = "13EBBDBEDE7A12775DFDB1BABB572E0E2D182910"
GENTOO_SNAPSHOT_KEY = "E1D6ABB63BFCFB4BA02FDF1CEC590EEAC9189250"
# The commits of one push, and pushes a script (or a quick "fix typo" push) makes in a row, arrive within
# a second or two of each other; waiting longer only delays every push's image.
SETTLE_SECONDS = 3
LATEST_FARM_WORKER_IMAGE = "farm-worker-latest"
"""An OpenStack pool's ``image`` (the default) that boots the newest worker image this farm published."""


class FarmConfigError(Exception):
    """farm.toml is missing, unreadable or wrong; the message says where and why."""


_HOST = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


def host_port(address: str, *, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` as its two parts; ValueError saying what is expected otherwise.

    The last colon separates the port (``[::1]:8010``). ``any_port`` admits port 0, which a server
    that listens reads as "any free port".
    """
    host, _, port = address.rpartition(":")
    lowest = 0 if any_port else 1
    if not _HOST.fullmatch(host) or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8010")
    return host, int(port)


def listen_endpoint(address: str) -> str:
    """The Twisted server endpoint that listens on ``HOST:PORT`` (the web UI's, the worker port's)."""
    host, port = host_port(address, any_port=True)
    return f"tcp:{port}:interface={host}"


def _address_or_empty(value: str) -> None:
    if value:
        host_port(value)


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("expected at least 1: retention never deletes the newest set")
    return value


def _not_negative(value: int) -> int:
    if value < 0:
        raise ValueError("expected 0 or more seconds")
    return value


def _clock_time(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError("expected a time of day HH:MM (24 h), e.g. 03:30")
    return value


_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{40}")


def _fingerprint(value: str) -> None:
    if not _FINGERPRINT.fullmatch(value):
        raise ValueError(
            "expected a key's full fingerprint, 40 hexadecimal digits without spaces "
            "(the key file itself is named by upstream.keyring)"
        )


# Architectures the stages build and boot: the kernel stage installs arch/x86's bzImage and the boot
# test runs qemu-system-x86_64.
SUPPORTED_ARCHITECTURES = ("amd64",)


def _supported_stage3(value: str) -> None:
    architecture = value.removeprefix("stage3-").split("-", 1)[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"the farm builds {', '.join(SUPPORTED_ARCHITECTURES)} images only so far, not {architecture} "
            "(the kernel stage installs an x86 bzImage and the boot test runs qemu-system-x86_64)"
        )


def _python_versions(value: list[str]) -> None:
    if not value or len(set(value)) != len(value):
        raise ValueError('expected one or more Python versions, each once, e.g. ["3.12", "3.13"]')
    for version in value:
        match = re.fullmatch(r"3\.(\d+)", version)
        if not match or int(match.group(1)) < 11:
            raise ValueError(f"{version!r}: expected a Python version MAJOR.MINOR, 3.11 or newer")


def _check(validator: typing.Callable[[Any], Any]) -> dict[str, Any]:
    return {"validator": validator}


# openstacksdk and the `openstack` CLI pick their clouds.yaml entry from OS_CLOUD; the farm does too when
# farm.toml names none.
_FROM_OS_CLOUD: dict[str, Any] = {"environment": "OS_CLOUD"}


@dataclass(frozen=True)
class FarmSection:
    id: str
    """Stable identity of this farm: tags its cloud servers and images, survives a master move."""
    title: str = "gentoo-farm"


@dataclass(frozen=True)
class UserSection:
    name: str
    roles: list[str] = field(default_factory=lambda: ["admin"])


Role = Literal["ui", "builds"]
MASTER_ROLES: tuple[Role, ...] = ("ui", "builds")


def _roles(value: list[str]) -> None:
    if not value or len(set(value)) != len(value):
        raise ValueError('expected "ui", "builds" or both, each once')


@dataclass(frozen=True)
class MqSection:
    """Buildbot's message queue (c['mq']): "simple" stays inside one master; several masters share
    their events through a WAMP router (crossbar)."""

    type: Literal["simple", "wamp"] = "simple"
    router_url: str = ""
    """The WAMP router's WebSocket URL, e.g. ws://mq.example.org:8080/ws (type = "wamp" only)."""
    realm: str = "realm1"
    wamp_debug_level: Literal["error", "warn", "info", "debug", "trace"] = "error"


@dataclass(frozen=True)
class MasterSection:
    web_address: str = field(default="127.0.0.1:8010", metadata=_check(host_port))
    public_url: str = ""
    """The URL people use to reach the web UI; defaults to http://web_address/."""
    worker_address: str = field(default="127.0.0.1:9989", metadata=_check(host_port))
    db_url: str = "sqlite:///state.sqlite"
    anonymous_view: bool = True
    users: list[UserSection] = field(default_factory=lambda: [UserSection(name="admin")])
    multi_master: bool = False
    """Several masters share this farm (Buildbot's multiMaster): one database, an S3 store, mq = "wamp"."""
    roles: list[Role] = field(default_factory=lambda: list(MASTER_ROLES), metadata=_check(_roles))
    """What this master runs: "ui" the web UI and REST API, "builds" the workers and their builds."""
    mq: MqSection = field(default_factory=MqSection)

    @property
    def buildbot_url(self) -> str:
        return (self.public_url or f"http://{self.web_address}/").rstrip("/") + "/"


@dataclass(frozen=True)
class LocalWorkersSection:
    count: int = 1
    max_builds: int = 1
    build_wait_timeout: int = 0
    """Seconds a started worker waits for another build before it stops (0: stop after each build)."""
    cache_dir: Path = Path("cache")
    """What workers keep between builds (ccache, kernel sources), one directory per worker."""
    build_ids: int = 1879048192
    """A root master runs local-N's builds as host uids and gids ``build_ids + (N-1) * 65536`` on (the
    build's root and its 65,535 users): no account may use them. The default lies above systemd's range
    for containers and below 2^31."""


@dataclass(frozen=True)
class OpenStackWorkersSection:
    name: str
    cloud: str = field(metadata=_FROM_OS_CLOUD)
    """The clouds.yaml entry; OS_CLOUD's when omitted."""
    flavor: str
    network: str
    image: str = LATEST_FARM_WORKER_IMAGE
    """A Glance image name or id; "farm-worker-latest": the newest worker image the farm built
    ([image.worker]); "farm-latest": its newest cloud image."""
    region: str = ""
    """The region to boot in; empty: the clouds.yaml entry's own region_name."""
    key_name: str = ""
    security_groups: list[str] = field(default_factory=list)
    volume_size: int = 0
    max_instances: int = 1
    max_builds: int = field(default=1, metadata=_check(_at_least_one))
    """Builds one server runs at once: a kernel build takes every vCPU, an image build its disk and memory."""
    build_wait_timeout: int = 0
    boot_timeout: int = 600
    builders: list[str] = field(default_factory=list)
    """Builders that may use these workers; empty means all."""
    master_address: str = field(default="", metadata=_check(_address_or_empty))
    """HOST:PORT the instances reach the master's worker port at (default: master.worker_address)."""
    install: str = ""
    """Empty: instances install the master's own wheel and wheelhouse, checked against their sha256. An
    override for people who host their own wheel: a pip requirement (a wheel URL) installed instead."""


@dataclass(frozen=True)
class WorkersSection:
    local: LocalWorkersSection = field(default_factory=LocalWorkersSection)
    openstack: list[OpenStackWorkersSection] = field(default_factory=list)
    wheelhouse: str = ""
    """A directory of wheels of what OpenStack workers install besides the master's wheel (buildbot-worker,
    Twisted ... at the master's versions); empty: `farm up` builds one with pip from its configured index."""
    python_versions: list[str] = field(
        default_factory=lambda: ["3.11", "3.12", "3.13"], metadata=_check(_python_versions)
    )
    """The Pythons (MAJOR.MINOR) of the worker images' ``python3``: OpenStack workers are served wheels for
    each (docs/workers.md); an instance whose Python is not listed refuses to install."""


@dataclass(frozen=True)
class UpstreamSection:
    mirror: str = "https://distfiles.gentoo.org"
    stage3: str = field(default="stage3-amd64-openrc", metadata=_check(_supported_stage3))
    profile: str = "default/linux/amd64/23.0"
    keyring: Path = Path("keys/gentoo-release.asc")
    """OpenPGP public keys holding both keys below (openpgp-keys-gentoo-release's gentoo-release.asc)."""
    release_key: str = field(default=GENTOO_RELEASE_KEY, metadata=_check(_fingerprint))
    """Fingerprint of the key that signs stages, DIGESTS and latest-stage3 pointers (Gentoo rotates it)."""
    snapshot_key: str = field(default=GENTOO_SNAPSHOT_KEY, metadata=_check(_fingerprint))
    """Fingerprint of the key that signs Portage snapshots."""

    @property
    def arch(self) -> str:
        """The architecture of the configured stage3 (``stage3-amd64-openrc`` -> ``amd64``): the mirror's
        ``releases/<arch>/`` directory and the last part of image names."""
        return self.stage3.removeprefix("stage3-").split("-", 1)[0]

    @property
    def variant(self) -> str:
        """``amd64-openrc`` for ``stage3-amd64-openrc``: the ``latest-stage3-<variant>.txt`` pointer."""
        return self.stage3.removeprefix("stage3-")


@dataclass(frozen=True)
class KernelSection:
    repository: str = "kernel-config.git"
    """The git repository holding the kernel config; a path is relative to the farm directory."""
    branch: str = "main"
    config_file: str = "config"
    source_package: str = "sys-kernel/vanilla-sources"
    """The package in the verified Portage snapshot whose Manifest vouches for ``source`` (or ``package``)."""
    source: str = "linux-6.1.tar.xz"
    """The kernel source distfile (a DIST entry of source_package), fetched through the farm's mirror."""
    package: str = ""
    """A binary kernel package distfile (gentoo-kernel-bin's ...), used instead of compiling; it must be a
    DIST entry of source_package's Manifest too."""
    shared_ccache: bool = True
    """Kernel builds with ccache misses share their ccache through the store, and a worker with an empty
    ccache (an OpenStack worker, a new local one) starts from it instead of compiling cold."""
    poll_interval: int = 3600
    """Seconds between polls; a push knocks the poller through the change hook at once."""
    settle_seconds: int = field(default=SETTLE_SECONDS, metadata=_check(_not_negative))
    """Seconds without a new push before a build starts, so pushes in a row make one build of the newest.
    Every second of it delays each push's image; a later push makes a build of its own (one that still
    waits for a worker when a newer push comes is skipped in the newer one's favour)."""


@dataclass(frozen=True)
class OverlaySection:
    repository: str = "overlay.git"
    """The git repository holding the overlay tree (root/ + overlay.toml); a push rebuilds it."""
    branch: str = "main"
    poll_interval: int = 3600
    settle_seconds: int = field(default=SETTLE_SECONDS, metadata=_check(_not_negative))
    """As [kernel] settle_seconds, for overlay pushes."""


# What each [image] admin way needs emerged besides the configured packages.
ADMIN_PACKAGES = {"sudo": ["app-admin/sudo"], "none": []}


# What every toolkit stage runs on a worker, besides what a stage3 and the cloud image's packages hold
# (docs/workers.md lists which stage needs which).
WORKER_PACKAGES = [
    "dev-lang/python", "dev-vcs/git", "app-crypt/gnupg", "app-arch/xz-utils", "app-arch/zstd",
    "sys-devel/gcc", "sys-devel/bc", "sys-devel/flex", "sys-devel/bison", "dev-util/ccache", "app-arch/cpio",
    "sys-apps/kmod", "sys-fs/e2fsprogs", "sys-boot/syslinux", "app-emulation/qemu", "app-cdr/cdrtools",
]  # fmt: skip


@dataclass(frozen=True)
class WorkerImageSection:
    """[image.worker]: the image OpenStack workers boot, built by the image's recipe with more packages."""

    enabled: bool | Literal["auto"] = "auto"
    """Build it (builder ``worker-image``); "auto": when an OpenStack pool boots "farm-worker-latest"."""
    packages: list[str] = field(default_factory=lambda: list(WORKER_PACKAGES))
    """Emerged besides [image] packages: what the toolkit's stages run."""
    keep: int = field(default=2, metadata=_check(_at_least_one))
    """Worker image sets the store keeps (a worker boots only the newest; [store] keep for the rest)."""


@dataclass(frozen=True)
class ImageSection:
    packages: list[str] = field(default_factory=lambda: ["net-misc/openssh", "net-misc/dhcpcd"])
    """Emerged into the stage3; sshd and a DHCP client (for netifrc's config_eth0="dhcp") are the minimum."""
    admin: Literal["sudo", "none"] = "sudo"
    """How the cloud user becomes root: "sudo" emerges app-admin/sudo too and lets the cloud user run any
    command as root without a password (/etc/sudoers.d/90-cloud-user), as cloud images do; "none" gives
    the cloud user no way to root. Root's own login is the overlay's either way."""
    disk_size: str = "4G"
    compress: bool = True
    compression: Literal["zstd", "zlib"] = "zstd"
    """The compressed qcow2's compression type: "zstd" needs QEMU 5.1 or newer wherever the image is read
    (compute nodes, the image service's conversion); "zlib" for clouds on an older QEMU (docs/image.md)."""
    boot_timeout: int = 300
    """Seconds the boot test may take, from power-on to the last check over SSH."""
    boot_test_commands: list[str] = field(default_factory=list)
    """Commands the boot test runs over SSH as the cloud user, in order; each must succeed."""
    keep_build_deps: bool = False
    """Keep packages only the build needed (depclean --with-bdeps=n removes them by default)."""
    keep_repository: bool = False
    """Keep the Portage repository (/var/db/repos/gentoo) in the image; instances sync it otherwise."""
    worker: WorkerImageSection = field(default_factory=WorkerImageSection)

    @property
    def emerged_packages(self) -> list[str]:
        """``packages`` and what ``admin`` needs in the image."""
        return [*self.packages, *(atom for atom in ADMIN_PACKAGES[self.admin] if atom not in self.packages)]


@dataclass(frozen=True)
class PackagesSection:
    upstream_binhost: Literal["off", "fallback", "first"] = "off"
    """The stage3's own binhost (Gentoo's, gentoobinhost.conf) during the image's emerge: "off" sets it aside
    and only the farm binhost is used; "fallback" uses it for what the farm binhost lacks, "first" before
    the farm binhost. Its packages must be signed by a key in [upstream] keyring."""


@dataclass(frozen=True)
class ScheduleSection:
    nightly: bool = True
    nightly_time: str = field(default="03:30", metadata=_check(_clock_time))


@dataclass(frozen=True)
class StoreSection:
    type: Literal["local", "s3"] = "local"
    path: Path = Path("store")
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    region: str = ""
    listen: str = field(default="127.0.0.1:8011", metadata=_check(host_port))
    """Where the master serves a local store over HTTP (binhost, distfile mirror, downloads)."""
    public_url: str = ""
    """Base URL workers, Portage and people read the store from; derived when empty."""
    part_size_mb: int = 64
    concurrency: int = 4
    keep: int = field(default=5, metadata=_check(_at_least_one))
    url_expiry_seconds: int = 3600
    checksums: Literal["when_supported", "when_required"] = "when_supported"
    """S3: when boto3 sends and checks CRC checksums; many MinIO and Ceph RGW versions refuse them unless
    "when_required"."""


@dataclass(frozen=True)
class GlanceTarget:
    cloud: str = field(metadata=_FROM_OS_CLOUD)
    """The clouds.yaml entry; OS_CLOUD's when omitted."""
    region: str = ""
    """The region to publish in; empty: the clouds.yaml entry's own region_name."""
    visibility: Literal["private", "shared", "community", "public"] = "private"
    disk_format: Literal["qcow2", "raw"] = "qcow2"
    keep: int = field(default=3, metadata=_check(_at_least_one))
    use_import: bool = True
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NotifySection:
    webhook: bool = False
    """POST a JSON message to the URL in secrets/notify-webhook-url (a URL that carries a token is a
    secret, so it is not kept here)."""
    mail_to: list[str] = field(default_factory=list)
    """Addresses mailed; empty: no mail."""
    mail_from: str = "gentoo-farm@localhost"
    smtp: str = field(default="localhost:25", metadata=_check(host_port))
    """HOST:PORT of the SMTP server that relays the mail."""
    smtp_user: str = ""
    """Log in to the SMTP server as this user, with the password in secrets/smtp-password; empty: no login."""
    smtp_tls: bool = False
    """STARTTLS before the login and the mail."""


@dataclass(frozen=True)
class FarmConfig:
    farm: FarmSection
    master: MasterSection = field(default_factory=MasterSection)
    workers: WorkersSection = field(default_factory=WorkersSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)
    kernel: KernelSection = field(default_factory=KernelSection)
    overlay: OverlaySection = field(default_factory=OverlaySection)
    image: ImageSection = field(default_factory=ImageSection)
    packages: PackagesSection = field(default_factory=PackagesSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    store: StoreSection = field(default_factory=StoreSection)
    glance: list[GlanceTarget] = field(default_factory=list)
    notify: NotifySection = field(default_factory=NotifySection)
    basedir: Path = field(default=Path("."), metadata={"internal": True})
    """The farm directory; relative paths in farm.toml are resolved against it at load."""

    @property
    def builds_worker_image(self) -> bool:
        """Whether the farm builds the worker image ([image.worker] enabled, "auto" by the pools)."""
        enabled = self.image.worker.enabled
        if enabled == "auto":
            return any(pool.image == LATEST_FARM_WORKER_IMAGE for pool in self.workers.openstack)
        return enabled is True

    @property
    def kept_sets_by_kind(self) -> dict[str, int]:
        """Retention's numbers for the kinds that do not keep [store] keep sets: the worker image's."""
        return {IMAGE_VARIANTS[WORKER_IMAGE].images_kind: self.image.worker.keep}

    @property
    def worker_image_packages(self) -> list[str]:
        """What the worker image emerges: the cloud image's packages, then the worker's."""
        cloud = self.image.emerged_packages
        return [*cloud, *(atom for atom in self.image.worker.packages if atom not in cloud)]


HOST_CONFIG_NAME = "master.toml"


@dataclass(frozen=True)
class HostMasterSection:
    """master.toml's [master]: what differs between the masters sharing one farm.toml. A key left
    out is farm.toml's."""

    web_address: str = field(default="", metadata=_check(host_port))
    public_url: str = ""
    worker_address: str = field(default="", metadata=_check(host_port))
    roles: list[Role] = field(default_factory=list, metadata=_check(_roles))


@dataclass(frozen=True)
class HostFile:
    master: HostMasterSection = field(default_factory=HostMasterSection)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(alternative) for alternative in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return f"a list of {_describe(item)}s" if not dataclasses.is_dataclass(item) else "an array of tables"
    if origin is dict:
        return "a table of strings"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return {str: "a string", int: "an integer", bool: "true or false", Path: "a path (string)"}[hint]


def _show(value: Any) -> str:
    """A value as it was written in TOML (true, "text"), not as Python prints it."""
    return json.dumps(value, default=str)


class _Problem(Exception):
    """One mistake in farm.toml, at the dotted key path ``where`` (``glance[0].keep``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def _convert(value: Any, hint: Any, where: str, problems: list[_Problem]) -> Any:
    wrong = _Problem(where, f"{where} = {_show(value)}: expected {_describe(hint)}")
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise wrong
        return value
    if origin in (typing.Union, types.UnionType):
        for alternative in typing.get_args(hint):
            try:
                return _convert(value, alternative, where, problems)
            except _Problem:
                continue
        raise wrong
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise wrong
        return [_convert(element, item, f"{where}[{index}]", problems) for index, element in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise wrong
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise wrong
        return _build(hint, value, where, problems)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise wrong
        return Path(value)
    # bool is an int in Python; a TOML `true` must not pass as a number (or the reverse).
    if type(value) is not hint:
        raise wrong
    return value


def _build(cls: type, table: dict[str, Any], where: str, problems: list[_Problem]) -> Any:
    """``cls`` made from ``table``; every mistake found is added to ``problems`` (then the result
    is None): one run of `farm check` names them all."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    prefix = f"{where}." if where else ""
    found_before = len(problems)
    for name in sorted(set(table) - set(fields)):
        nearest = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        problems.append(
            _Problem(
                f"{prefix}{name}",
                f"unknown key {prefix}{name}{hint}; known keys here: {', '.join(sorted(fields))}",
            )
        )
    values = {}
    for name, spec in fields.items():
        environment = spec.metadata.get("environment")
        if name not in table and not (environment and os.environ.get(environment)):
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                alternative = f" (or set {environment})" if environment else ""
                problems.append(
                    _Problem(
                        where, f"missing key {prefix}{name}{alternative}: expected {_describe(hints[name])}"
                    )
                )
            continue
        try:
            # Not in the table: the environment variable is set (checked above).
            written = table[name] if name in table else os.environ[typing.cast(str, environment)]
            value = _convert(written, hints[name], f"{prefix}{name}", problems)
            if validator := spec.metadata.get("validator"):
                try:
                    validator(value)
                except ValueError as error:
                    raise _Problem(f"{prefix}{name}", f"{prefix}{name} = {_show(value)}: {error}") from None
        except _Problem as problem:
            problems.append(problem)
            continue
        values[name] = value
    return cls(**values) if len(problems) == found_before else None


_TABLE_ARRAY = re.compile(r"\[\[\s*([^\]]+?)\s*\]\]")
_TABLE = re.compile(r"\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(
    r"""((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


_LAST_COMPONENT = re.compile(r"(\[\d+\]|\.?[^.\[]+)$")


def _dotted(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))


def _key_lines(text: str) -> dict[str, int]:
    """The line each table and key of ``text`` is on, by dotted path (``glance[1].keep``)."""
    lines: dict[str, int] = {}
    table = ""
    tables_seen: dict[str, int] = {}
    in_multiline_string = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_multiline_string:
            in_multiline_string = quotes % 2 == 0
            continue
        in_multiline_string = quotes % 2 == 1
        if match := _TABLE_ARRAY.match(stripped):
            name = _dotted(match.group(1))
            tables_seen[name] = tables_seen.get(name, -1) + 1
            table = f"{name}[{tables_seen[name]}]"
            lines.setdefault(table, number)
        elif match := _TABLE.match(stripped):
            table = _dotted(match.group(1))
            lines.setdefault(table, number)
        elif match := _KEY.match(stripped):
            key = _dotted(match.group(1))
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


def _line_of(where: str, lines: dict[str, int]) -> int | None:
    """The line of ``where`` or, failing that, of the nearest enclosing key or table."""
    while where:
        if where in lines:
            return lines[where]
        where = _LAST_COMPONENT.sub("", where)
    return None


def _farm_problems(config: FarmConfig) -> list[_Problem]:
    """What is wrong between keys, each reported at the key to change."""
    master = config.master
    problems: list[_Problem] = []
    if config.image.worker.enabled is False:
        problems.extend(
            _Problem(
                f"workers.openstack[{index}].image",
                f"workers.openstack[{index}].image = {_show(LATEST_FARM_WORKER_IMAGE)} with "
                "image.worker.enabled = false: the farm builds no worker image for the pool to boot; "
                "enable it or name another image",
            )
            for index, pool in enumerate(config.workers.openstack)
            if pool.image == LATEST_FARM_WORKER_IMAGE
        )
    if set(master.roles) != set(MASTER_ROLES) and not master.multi_master:
        problems.append(
            _Problem(
                "master.roles",
                f"master.roles = {_show(master.roles)}: a single master runs both the UI and the builds; "
                "other roles need master.multi_master = true",
            )
        )
    if master.mq.type == "wamp" and not master.mq.router_url:
        problems.append(
            _Problem(
                "master.mq.type",
                'master.mq.type = "wamp" needs master.mq.router_url (ws://HOST:PORT/ws)',
            )
        )
    if not master.multi_master:
        return problems
    if config.store.type == "local":
        problems.append(
            _Problem(
                "store.type",
                'store.type = "local" with master.multi_master = true: a local store is one master\'s '
                "directory, served by that master alone, so builds of the other masters could not publish "
                'to it; use type = "s3", which every master and worker reaches',
            )
        )
    if master.db_url.startswith("sqlite"):
        problems.append(
            _Problem(
                "master.db_url",
                f"master.db_url = {_show(master.db_url)} with master.multi_master = true: SQLite is a file "
                "on one machine; every master must use the same database server (PostgreSQL)",
            )
        )
    if master.mq.type != "wamp":
        problems.append(
            _Problem(
                "master.mq.type",
                f"master.mq.type = {_show(master.mq.type)} with master.multi_master = true: the simple queue "
                'stays inside one master, so masters would not hear of each other\'s builds; use "wamp"',
            )
        )
    return problems


def _report(problems: list[_Problem], text: str, source: str) -> FarmConfigError:
    lines = _key_lines(text)
    located = sorted(((_line_of(problem.where, lines), str(problem)) for problem in problems),
                     key=lambda found: found[0] or 0)  # fmt: skip
    reports = [f"{source}{f':{line}' if line else ''}: {message}" for line, message in located]
    if len(reports) > 1:
        reports.insert(0, f"{source}: {len(reports)} mistakes")
    return FarmConfigError("\n".join(reports))


def _load_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FarmConfigError(f"{source}: not valid TOML: {error}") from None
    except RecursionError:
        # tomllib parses arrays and inline tables recursively, so deep nesting exhausts the stack
        # instead of raising TOMLDecodeError.
        raise FarmConfigError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None


def apply_host_file(config: FarmConfig, text: str, source: str = HOST_CONFIG_NAME) -> FarmConfig:
    """``config`` with what master.toml's [master] sets: this master's addresses and roles."""
    table = _load_toml(text, source)
    problems: list[_Problem] = []
    written_master = table.get("master")
    if isinstance(written_master, dict):
        host_keys = {spec.name for spec in dataclasses.fields(HostMasterSection)}
        for name in sorted(
            set(written_master) - host_keys & {spec.name for spec in dataclasses.fields(MasterSection)}
        ):
            problems.append(
                _Problem(
                    f"master.{name}", f"master.{name} is the same for every master: set it in {CONFIG_NAME}"
                )
            )
            del written_master[name]
    host = _build(HostFile, table, "", problems)
    if not problems:
        written = {name: getattr(host.master, name) for name in table.get("master", {})}
        config = dataclasses.replace(config, master=dataclasses.replace(config.master, **written))
        problems = _farm_problems(config)
    if problems:
        raise _report(problems, text, source)
    return config


def parse_config(text: str, basedir: Path, source: str = CONFIG_NAME) -> FarmConfig:
    table = _load_toml(text, source)
    problems: list[_Problem] = []
    config = _build(FarmConfig, table, "", problems)
    if not problems:
        problems = _farm_problems(config)
    if problems:
        raise _report(problems, text, source)
    return _resolve_paths(dataclasses.replace(config, basedir=basedir.resolve()), basedir.resolve())


def _resolve_paths(section: Any, basedir: Path) -> Any:
    changes: dict[str, object] = {}
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        if spec.metadata.get("internal"):
            continue
        if isinstance(value, Path):
            changes[spec.name] = (basedir / value).resolve()
        elif dataclasses.is_dataclass(value):
            changes[spec.name] = _resolve_paths(value, basedir)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            changes[spec.name] = [_resolve_paths(item, basedir) for item in value]
    return dataclasses.replace(section, **changes)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise FarmConfigError(f"{path}: cannot read: {error}") from None


def load_config(basedir: Path) -> FarmConfig:
    """farm.toml, with this master's own keys from master.toml beside it when there is one."""
    path = basedir / CONFIG_NAME
    if not path.exists():
        raise FarmConfigError(f"{path}: no such file (create a farm with `farm init DIR`)")
    config = parse_config(_read(path), basedir, str(path))
    host_path = basedir / HOST_CONFIG_NAME
    if host_path.exists():
        config = apply_host_file(config, _read(host_path), str(host_path))
    return config


__all__ = ["CONFIG_NAME", "HOST_CONFIG_NAME", "FarmConfig", "FarmConfigError", "load_config", "parse_config"]
