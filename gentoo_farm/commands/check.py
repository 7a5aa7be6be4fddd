"""Validate farm.toml, then check what it names: Gentoo's keyring, the clouds, the recipe repositories,
the store, the master's database, the ids local builds run as and the composed Buildbot configuration; say
what the farm will do.

The clouds', the database's and Buildbot's libraries are imported by the checks that use them: `--config-only`
(what an editor hook or a test runs on each change) answers without loading them, in a tenth of the time."""

from __future__ import annotations

import argparse
import grp
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.recipes import KERNEL_POLLER, recipe_repositories
from gentoo_farm.signing import SigningError, key_fingerprints
from gentoo_farm.store import StoreError, open_store
from gentoo_farm.workers.latent.userns import ID_COUNT

CHECK_TIMEOUT = 120
# Seconds to wait for the database server: a host that drops packets must not stall the check.
DATABASE_TIMEOUT = 5


class Problem(Exception):
    """One thing farm.toml names that is not as the farm needs it; the message says what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-only", action="store_true", help="validate farm.toml alone, not what it names"
    )


def _run(command: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False)
    except FileNotFoundError as error:
        raise Problem(f"{what}: {command[0]} is not installed") from error
    except subprocess.TimeoutExpired as error:
        raise Problem(f"{what}: no answer within {CHECK_TIMEOUT} s") from error


def check_keyring(config: FarmConfig) -> str:
    upstream = config.upstream
    if not upstream.keyring.is_file():
        raise Problem(
            f"upstream.keyring {upstream.keyring}: no such file (put Gentoo's gentoo-release.asc there, "
            "from sec-keys/openpgp-keys-gentoo-release)"
        )
    try:
        fingerprints = set(key_fingerprints(upstream.keyring.read_bytes()))
    except SigningError as error:
        raise Problem(f"upstream.keyring: {error}") from error
    if not fingerprints:
        raise Problem(f"upstream.keyring {upstream.keyring}: holds no OpenPGP key")
    missing = [
        f"{name} {fingerprint}"
        for name, fingerprint in (
            ("release_key", upstream.release_key),
            ("snapshot_key", upstream.snapshot_key),
        )
        if fingerprint.upper() not in fingerprints
    ]
    if missing:
        raise Problem(f"upstream.keyring {upstream.keyring} lacks {' and '.join(missing)}")
    return f"{upstream.keyring} holds the release and the snapshot key"


def check_clouds(config: FarmConfig) -> str:
    named = [(pool.cloud, pool.region) for pool in config.workers.openstack] + [
        (target.cloud, target.region) for target in config.glance
    ]
    if not named:
        return "no cloud named (no OpenStack workers, no Glance targets)"
    import openstack.config
    from openstack import exceptions as sdk_exceptions

    clouds = openstack.config.OpenStackConfig()
    unknown = []
    wrong_regions = []
    for cloud, region in dict.fromkeys(named):
        try:
            clouds.get_one(cloud=cloud)
        except sdk_exceptions.ConfigException:
            unknown.append(cloud)
            continue
        try:
            # clouds.yaml may list a cloud's regions; one farm.toml names must be among them
            clouds.get_one(cloud=cloud, region_name=region or None)
        except sdk_exceptions.ConfigException as error:
            wrong_regions.append(f"clouds.yaml's {cloud!r} has no region {region!r}: {error}")
    if unknown:
        wrong_regions.insert(
            0,
            f"clouds.yaml has no {', '.join(repr(cloud) for cloud in dict.fromkeys(unknown))} (named in "
            "farm.toml; openstacksdk reads $OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack, "
            "/etc/openstack)",
        )
    if wrong_regions:
        raise Problem("; ".join(wrong_regions))
    found = [f"{cloud} (region {region})" if region else cloud for cloud, region in dict.fromkeys(named)]
    return f"clouds.yaml has {', '.join(found)}"


def check_recipes(config: FarmConfig) -> str:
    found = []
    for repository in recipe_repositories(config):
        if not Path(repository.url).is_dir():
            found.append(f"{repository.poller} at {repository.url} (remote, not read)")
            continue
        wanted = config.kernel.config_file if repository.poller == KERNEL_POLLER else ""
        spec = f"{repository.branch}:{wanted}"
        listed = _run(["git", "--git-dir", repository.url, "cat-file", "-e", spec], repository.poller)
        if listed.returncode != 0:
            what = f"no {wanted!r} on" if wanted else "no"
            raise Problem(
                f"{repository.poller} repository {repository.url}: {what} branch {repository.branch}"
            )
        found.append(f"{repository.poller} ({repository.branch})")
    return ", ".join(found)


def check_store(config: FarmConfig) -> str:
    try:
        store = open_store(config.store)
        store.exists("images/latest.json")
    except StoreError as error:
        raise Problem(f"store: {error}") from error
    return f"{store.location} answers"


def check_database(config: FarmConfig) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    db_url = config.master.db_url
    try:
        url = make_url(db_url)
    except ArgumentError as error:
        raise Problem(f"master.db_url: {error}") from error
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() != "postgresql":
        return f"{shown} (Buildbot's schema is made and upgraded by `farm init` and `farm up`)"
    if url.get_driver_name() != "psycopg":
        raise Problem(
            f"master.db_url {shown} names the {url.get_driver_name()} driver; the farm installs psycopg 3: "
            "write postgresql+psycopg://"
        )
    try:
        import psycopg
    except ImportError as error:
        raise Problem(
            "master.db_url is PostgreSQL but the psycopg driver is not installed: "
            "pip install 'gentoo-farm[postgresql]' (or 'psycopg[binary]')"
        ) from error
    where = f"{url.host or 'the local socket'}:{url.port or 5432}/{url.database or url.username}"
    # libpq takes the URL without SQLAlchemy's driver name; a password missing from it comes from ~/.pgpass
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, connect_timeout=DATABASE_TIMEOUT) as connection:
            server = connection.info.server_version
            tables = connection.execute("SELECT to_regclass('alembic_version')").fetchone()
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Problem(
            f"master.db_url: PostgreSQL at {where} does not let the master in: {first_line}"
        ) from error
    schema = "holds Buildbot's tables" if tables and tables[0] else "has no tables yet (`farm up` makes them)"
    return f"PostgreSQL {server // 10000}.{server % 10000} at {where} answers and {schema}"


def check_build_ids(config: FarmConfig) -> str:
    """Local builds are root of their own ids: an account among them would be theirs to act as."""
    from gentoo_farm.master.workers import local_build_ids, local_worker_names

    names = local_worker_names(config)
    first = local_build_ids(config, 0)
    if not names:
        return "no local workers"
    if first is None:
        return "local builds run as the master's user (the master is not root)"
    last = first + len(names) * ID_COUNT - 1
    taken = [
        f"user {entry.pw_name} ({entry.pw_uid})" for entry in pwd.getpwall() if first <= entry.pw_uid <= last
    ]
    taken += [
        f"group {entry.gr_name} ({entry.gr_gid})" for entry in grp.getgrall() if first <= entry.gr_gid <= last
    ]
    if taken:
        raise Problem(
            f"workers.local.build_ids: local builds run as host ids {first}-{last}, which "
            f"{', '.join(taken)} use; choose a range no account uses"
        )
    return f"local builds run as host ids {first}-{last}, which no account uses"


def check_buildbot(config: FarmConfig) -> str:
    master = FarmDir(config.basedir).master
    if not (master / "master.cfg").is_file():
        raise Problem(f"{master}/master.cfg: missing (a farm directory is made by `farm init`)")
    checked = _run([str(Path(sys.executable).parent / "buildbot"), "checkconfig", str(master)], "buildbot")
    if checked.returncode != 0:
        raise Problem(
            f"Buildbot's checkconfig refuses the composed configuration:\n{checked.stdout}{checked.stderr}"
        )
    return "Buildbot's checkconfig accepts the composed configuration"


CHECKS: tuple[tuple[str, Callable[[FarmConfig], str]], ...] = (
    ("keyring", check_keyring),
    ("clouds", check_clouds),
    ("recipes", check_recipes),
    ("store", check_store),
    ("database", check_database),
    ("build ids", check_build_ids),
    ("buildbot", check_buildbot),
)


def _in_region(region: str) -> str:
    return f", region {region}" if region else ""


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    print(f"{config.basedir / 'farm.toml'}: OK")
    print(f"  web UI        {config.master.buildbot_url}")
    print(f"  local workers {config.workers.local.count}")
    for pool in config.workers.openstack:
        print(
            f"  openstack     {pool.name}: cloud {pool.cloud}{_in_region(pool.region)}, "
            f"up to {pool.max_instances} instances"
        )
    print(f"  store         {config.store.type} ({config.store.bucket or config.store.path})")
    for target in config.glance:
        where = f"{target.visibility}, keep {target.keep}{_in_region(target.region)}"
        print(f"  glance        {target.cloud} ({where})")
    if args.config_only:
        return 0
    problems = 0
    for name, check in CHECKS:
        try:
            print(f"  ok   {name:<9} {check(config)}", flush=True)
        except Problem as problem:
            problems += 1
            print(f"  FAIL {name:<9} {problem}", flush=True)
    if problems:
        print(f"{problems} problem(s): the farm would not work as configured", file=sys.stderr)
        return 1
    return 0
