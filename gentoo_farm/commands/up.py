"""Start the farm's build master (its workers start on demand) and say where to find it; first bring the
master's database to the schema of the installed Buildbot when that may have changed."""

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from sqlalchemy.engine import make_url

from gentoo_farm.cli import CommandError
from gentoo_farm.commands.hook import install_local_hooks
from gentoo_farm.commands.status import master_pid
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.wheelhouse import WheelhouseError, needs_worker_wheels, prepare_worker_wheels

START_TIMEOUT = 120


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def buildbot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "buildbot"), *args],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT + 30,
    )


def schema_stamp(config: FarmConfig) -> str:
    """What the database's schema was last made for: the Buildbot version and the database (no password)."""
    database = make_url(config.master.db_url).render_as_string(hide_password=True)
    return f"buildbot {version('buildbot')}\n{database}\n"


def record_schema(config: FarmConfig) -> None:
    """Note that the database has the installed Buildbot's schema (after create-master or upgrade-master)."""
    FarmDir(config.basedir).schema_stamp_file.write_text(schema_stamp(config))


def upgrade_database(config: FarmConfig) -> None:
    """Run Buildbot's upgrade-master when Buildbot or db_url changed since the schema was last made.

    upgrade-master itself is safe on a current database but loads the whole configuration (2-3 s), so it
    runs only when the recorded Buildbot version or database differs: a new Buildbot, or a db_url pointing
    at a new (empty) database.
    """
    farm = FarmDir(config.basedir)
    stamp = farm.schema_stamp_file
    if stamp.is_file() and stamp.read_text() == schema_stamp(config):
        return
    print(f"farm up: upgrading the database schema (Buildbot {version('buildbot')}) ...", flush=True)
    upgraded = buildbot("upgrade-master", "--quiet", str(farm.master))
    # upgrade-master rewrites Buildbot's sample configuration; the farm's master.cfg is the one that counts
    (farm.master / "master.cfg.sample").unlink(missing_ok=True)
    if upgraded.returncode != 0:
        raise CommandError(
            f"buildbot upgrade-master could not bring the database "
            f"{make_url(config.master.db_url).render_as_string(hide_password=True)} to Buildbot's schema:\n"
            f"{upgraded.stdout}{upgraded.stderr}"
        )
    record_schema(config)


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    if master_pid(farm) is not None:
        print(f"The master is already running: {config.master.buildbot_url}")
        return 0
    install_local_hooks(config)
    if needs_worker_wheels(config):
        print("Preparing the wheels OpenStack workers install (the master's own and its wheelhouse) ...")
        try:
            wheels = prepare_worker_wheels(config)
        except WheelhouseError as error:
            raise CommandError(str(error)) from None
        print(
            f"Workers install gentoo-farm {wheels.version} and its dependencies on Python "
            f"{', '.join(wheels.pythons)} ({len(wheels.files)} wheel files)."
        )
    upgrade_database(config)
    print(f"Starting the build master in {farm.master} ...", flush=True)
    started = buildbot("start", f"--start_timeout={START_TIMEOUT}", str(farm.master))
    if started.returncode != 0:
        tail = "\n".join(farm.master_log.read_text().splitlines()[-25:]) if farm.master_log.exists() else ""
        raise CommandError(
            f"the master did not start:\n{started.stdout}{started.stderr}\n"
            f"last lines of {farm.master_log}:\n{tail}"
        )
    print(f"Web UI:  {config.master.buildbot_url}")
    if farm.saved_admin_password.exists():
        print(f"Log in as admin with the password in {farm.saved_admin_password}.")
    else:
        print("Log in as admin with the password `farm init` printed (`farm passwd admin` sets a new one).")
    print(f"Logs:    {farm.master_log}")
    print(f"Stop it: farm --farm {config.basedir} down")
    return 0
