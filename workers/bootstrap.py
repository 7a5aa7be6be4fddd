"""User-data that turns a fresh Gentoo VM into a farm worker (a shell script cloud-init runs as root).

The script
- points the VM's Portage at the farm: a ``binrepos.conf`` entry for the farm binhost and the farm
  distfile mirror first in ``GENTOO_MIRRORS``;
- makes ``buildbot-worker`` and the toolkit (``farm-worker``) available in a venv, unless the image
  already carries them (images the farm builds for itself do), by ``pip install`` of one spec
  (a requirement or a wheel URL, typically a short-lived URL the master hands out);
- creates and starts a buildbot-worker that connects to the master with the instance's one-time
  password.

The only secret in it is that password, which the master forgets when the instance is deleted.
Paths follow Portage's conventions: ``PORTAGE_CONFIGROOT`` (default ``/``) locates ``etc/portage``;
``FARM_WORKER_HOME`` (default ``/var/lib/gentoo-farm``) holds the venv and the worker's base directory.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from gentoo_farm.config import host_port

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

if [ -x "$venv/bin/buildbot-worker" ] && [ -x "$venv/bin/farm-worker" ]; then
    echo "gentoo-farm: buildbot-worker and farm-worker already installed in $venv"
else
    echo "gentoo-farm: installing the worker into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet {install_spec}
fi

PATH="$venv/bin:$PATH"
export PATH
rm -rf "$basedir"
buildbot-worker create-worker --umask=0o022 --keepalive=60 \\
    "$basedir" {master_address} {worker_name} {password}
echo "gentoo-farm: starting buildbot-worker {worker_name} for master {master_address}"
buildbot-worker start "$basedir"
"""

_WORKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def check_worker_name(name: str) -> None:
    """Raise ValueError unless ``name`` is safe as a worker name, a file name and a shell word."""
    if not isinstance(name, str) or not _WORKER_NAME.match(name):
        raise ValueError(f"worker name {name!r}: letters, digits, '.', '_' and '-' only")


@dataclass(frozen=True)
class WorkerBootstrap:
    """What every VM of one ``[[workers.openstack]]`` entry needs to become a worker.

    ``master_address`` is ``host:port`` of the master's worker (PB) port as seen from the VM;
    ``install_spec`` is what ``pip install`` gets when the image lacks the worker (e.g.
    ``gentoo-farm==0.1.0`` or a wheel URL).
    """

    master_address: str
    binhost_url: str
    distfile_mirror_url: str
    install_spec: str

    def __post_init__(self) -> None:
        try:
            host_port(self.master_address)
        except ValueError as error:
            raise ValueError(f"master_address {self.master_address!r}: {error}") from None
        for key in ("binhost_url", "distfile_mirror_url"):
            value = getattr(self, key)
            if not re.match(r"^(https?|file)://\S+$", value):
                raise ValueError(f"{key} {value!r}: expected an http(s):// or file:// URL")
        if not self.install_spec.strip():
            raise ValueError("install_spec: expected a pip requirement or wheel URL, got nothing")

    def render(self, worker_name: str, password: str) -> str:
        """The user-data script for one instance of ``worker_name`` with its one-time password."""
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
            install_spec=shlex.quote(self.install_spec),
            master_address=shlex.quote(self.master_address),
            password=shlex.quote(password),
        )
