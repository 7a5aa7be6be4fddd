"""User-data that turns a fresh Gentoo VM into a farm worker (a shell script cloud-init runs as root).

The script
- points the VM's Portage at the farm: a ``binrepos.conf`` entry for the farm binhost and the farm
  distfile mirror first in ``GENTOO_MIRRORS``;
- makes ``buildbot-worker`` and the toolkit (``farm-worker``) available in a venv: the master's own
  wheel and its wheelhouse (``gentoo_farm.wheelhouse``) for the image's own ``python3`` version (the
  master serves a group of files per Python version; an unserved version stops the script with a message
  naming it and the served ones), fetched from short-lived URLs the master hands out and installed with
  ``pip install --no-index --require-hashes`` against the sha256 the master lists, so nothing comes from
  a public index; an image whose venv already holds the master's gentoo-farm version keeps it.
  ``install_spec`` overrides this with one pip requirement (a wheel people host themselves), installed
  unless the image has both tools;
- creates and starts a buildbot-worker that connects to the master with the instance's one-time
  password.

The only secret in it is that password, which the master forgets when the instance is deleted.
Paths follow Portage's conventions: ``PORTAGE_CONFIGROOT`` (default ``/``) locates ``etc/portage``;
``FARM_WORKER_HOME`` (default ``/var/lib/gentoo-farm``) holds the venv and the worker's base directory.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from gentoo_farm.config import host_port
from gentoo_farm.wheelhouse import PROJECT, WorkerWheels

DEFAULT_WORKER_HOME = "/var/lib/gentoo-farm"
BINREPO_NAME = "gentoo-farm"

_SCRIPT = """\
#!/bin/sh
# gentoo-farm worker bootstrap for {worker_name}
set -eu
umask 022

configroot="${{PORTAGE_CONFIGROOT:-/}}"
portage_dir="${{configroot%/}}/etc/portage"
home="${{FARM_WORKER_HOME:-{default_home}}}"
venv="$home/venv"
basedir="$home/worker"

echo "gentoo-farm: configuring Portage in $portage_dir"
mkdir -p "$portage_dir"
binrepo_section={binrepo_section}
if [ -f "$portage_dir/binrepos.conf" ]; then
    grep -q '^\\[{binrepo_name}\\]' "$portage_dir/binrepos.conf" \\
        || printf '\\n%s\\n' "$binrepo_section" >> "$portage_dir/binrepos.conf"
else
    mkdir -p "$portage_dir/binrepos.conf"
    printf '%s\\n' "$binrepo_section" > "$portage_dir/binrepos.conf/{binrepo_name}.conf"
fi
mirrors_line={mirrors_line}
if [ -d "$portage_dir/make.conf" ]; then
    printf '%s\\n' "$mirrors_line" > "$portage_dir/make.conf/90-{binrepo_name}.conf"
elif ! grep -qxF "$mirrors_line" "$portage_dir/make.conf" 2>/dev/null; then
    printf '%s\\n' "$mirrors_line" >> "$portage_dir/make.conf"
fi

{install}

PATH="$venv/bin:$PATH"
export PATH
rm -rf "$basedir"
buildbot-worker create-worker --umask=0o022 --keepalive=60 \\
    "$basedir" {master_address} {worker_name} {password}
echo "gentoo-farm: starting buildbot-worker {worker_name} for master {master_address}"
# --quiet: start and return. Without it the command waits 10 s to see the worker connect and fails the
# script when it has not yet (a guest without KVM is slower); the master judges the connection itself.
buildbot-worker start --quiet "$basedir"
"""

# The operator's own pip requirement (``install`` in farm.toml), installed unless the image has both tools.
_INSTALL_SPEC = """\
if [ -x "$venv/bin/buildbot-worker" ] && [ -x "$venv/bin/farm-worker" ]; then
    echo "gentoo-farm: buildbot-worker and farm-worker already installed in $venv"
else
    echo "gentoo-farm: installing the worker into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet {install_spec}
fi"""

_VERSION_CHECK = f"import importlib.metadata as m; print(m.version({PROJECT!r}))"

# Fetches into the directory argv[1] the files its requirements.txt names ("./FILE --hash=..."), each
# from its "FILE URL" line on stdin; errors name the file, never the URL (it is a short-lived credential
# of sorts: it reads the master's store).
_FETCH = """\
import shutil, sys, urllib.error, urllib.request
wanted = {line.split()[0][2:] for line in open(sys.argv[1] + "/requirements.txt") if line.strip()}
for line in sys.stdin:
    name, url = line.split()
    if name not in wanted:
        continue
    path = sys.argv[1] + "/" + name
    try:
        with urllib.request.urlopen(url, timeout=300) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
    except urllib.error.HTTPError as error:
        sys.exit(f"gentoo-farm: could not fetch {name} from the master: HTTP {error.code}")
    except urllib.error.URLError as error:
        sys.exit(f"gentoo-farm: could not fetch {name} from the master: {error.reason}")
"""

# Only the files the master lists, each checked against its sha256 by pip (--require-hashes); no index
# (--no-index, and no pip configuration of the image's: PIP_CONFIG_FILE=/dev/null).
# The files of the image's python3 version: the master serves one group per [workers] python_versions.
_INSTALL_WHEELS = """\
installed=$("$venv/bin/python" -c {version_check} 2>/dev/null || true)
if [ -x "$venv/bin/buildbot-worker" ] && [ -x "$venv/bin/farm-worker" ] && [ "$installed" = {version} ]; then
    echo "gentoo-farm: the master's gentoo-farm "{version}" is already installed in $venv"
else
    python_version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \\
        || python_version="no python3"
    case "$python_version" in
{cases}
    *)
        echo "gentoo-farm: the master serves the worker's wheels for Python "{served}" only;" \\
            "this image's python3 is: $python_version (the master's [workers] python_versions)" >&2
        exit 1
        ;;
    esac
    echo "gentoo-farm: installing the master's gentoo-farm "{version}" for Python $python_version into $venv"
    wheels="$home/wheels"
    rm -rf "$wheels"
    mkdir -p "$wheels"
    printf '%s\\n' "$requirements" > "$wheels/requirements.txt"
    python3 -c {fetch} "$wheels" <<'EOF_FETCH'
{fetch_list}
EOF_FETCH
    python3 -m venv --clear "$venv"
    if ! (cd "$wheels" && PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip install --quiet \\
            --no-index --no-deps --require-hashes --disable-pip-version-check -r requirements.txt); then
        echo "gentoo-farm: refusing the worker's wheels: pip did not install them as the master listed" \\
            "them (a file whose sha256 differs from the master's is refused; pip says which above)" >&2
        exit 1
    fi
    rm -rf "$wheels"
fi"""

_WORKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def check_worker_name(name: str) -> None:
    """Raise ValueError unless ``name`` is safe as a worker name, a file name and a shell word."""
    if not isinstance(name, str) or not _WORKER_NAME.match(name):
        raise ValueError(f"worker name {name!r}: letters, digits, '.', '_' and '-' only")


@dataclass(frozen=True)
class WorkerBootstrap:
    """What every VM of one ``[[workers.openstack]]`` entry needs to become a worker.

    ``master_address`` is ``host:port`` of the master's worker (PB) port as seen from the VM;
    ``wheels`` are what the master serves its workers; ``install_spec``, instead of them, is what
    ``pip install`` gets when the image lacks the worker (a wheel URL people host themselves).
    """

    master_address: str
    binhost_url: str
    distfile_mirror_url: str
    install_spec: str = ""
    wheels: WorkerWheels | None = None

    def __post_init__(self) -> None:
        try:
            host_port(self.master_address)
        except ValueError as error:
            raise ValueError(f"master_address {self.master_address!r}: {error}") from None
        for key in ("binhost_url", "distfile_mirror_url"):
            value = getattr(self, key)
            if not re.match(r"^(https?|file)://\S+$", value):
                raise ValueError(f"{key} {value!r}: expected an http(s):// or file:// URL")
        if self.install_spec.strip() and self.wheels is not None:
            raise ValueError(
                "install_spec: a pip requirement (a wheel you host) replaces the master's worker wheels; "
                "got both"
            )

    def render(self, worker_name: str, password: str, wheel_urls: Mapping[str, str] | None = None) -> str:
        """The user-data script for one instance of ``worker_name`` with its one-time password;
        ``wheel_urls`` maps each of the master's wheel files to a URL the instance fetches it from."""
        check_worker_name(worker_name)
        if not password:
            raise ValueError("the worker password must not be empty")
        binrepo_section = (
            f"[{BINREPO_NAME}]\npriority = 10\nsync-uri = {self.binhost_url.rstrip('/')}\n"
            "# written by the gentoo-farm worker bootstrap"
        )
        # ${GENTOO_MIRRORS} keeps whatever the image configured as the fallback after the farm mirror.
        mirrors_line = f'GENTOO_MIRRORS="{self.distfile_mirror_url.rstrip("/")} ${{GENTOO_MIRRORS}}"'
        return _SCRIPT.format(
            worker_name=shlex.quote(worker_name),
            default_home=DEFAULT_WORKER_HOME,
            binrepo_name=BINREPO_NAME,
            binrepo_section=shlex.quote(binrepo_section),
            mirrors_line=shlex.quote(mirrors_line),
            install=self.install_commands(wheel_urls or {}),
            master_address=shlex.quote(self.master_address),
            password=shlex.quote(password),
        )

    def install_commands(self, wheel_urls: Mapping[str, str]) -> str:
        """The shell commands that make ``$venv`` hold the worker (``$venv`` and ``$home`` are set)."""
        if self.wheels is None:
            if not self.install_spec.strip():
                raise ValueError("nothing to install the worker from: no install_spec and no worker wheels")
            return _INSTALL_SPEC.format(install_spec=shlex.quote(self.install_spec))
        fetch_list = []
        for wheel in self.wheels.files:
            url = wheel_urls.get(wheel.filename, "")
            if not re.fullmatch(r"https?://\S+", url):
                raise ValueError(f"no http(s) URL to fetch the worker's {wheel.filename} from")
            fetch_list.append(f"{wheel.filename} {url}")
        cases = []
        for python, group in self.wheels.pythons.items():
            if not re.fullmatch(r"\d+\.\d+", python):
                raise ValueError(f"worker wheels for Python {python!r}: expected a version MAJOR.MINOR")
            requirements = "\n".join(f"./{wheel.filename} --hash=sha256:{wheel.sha256}" for wheel in group)
            cases.append(f"    {python})\n        requirements={shlex.quote(requirements)}\n        ;;")
        if not cases:
            raise ValueError("the master's worker wheels serve no Python version")
        return _INSTALL_WHEELS.format(
            version=shlex.quote(self.wheels.version),
            version_check=shlex.quote(_VERSION_CHECK),
            cases="\n".join(cases),
            served=shlex.quote(", ".join(self.wheels.pythons)),
            fetch=shlex.quote(_FETCH),
            fetch_list="\n".join(fetch_list),
        )
