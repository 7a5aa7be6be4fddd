"""Start the farm's build master (its workers start on demand) and say where to find it."""

import argparse
import subprocess
import sys
from pathlib import Path

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
        print(f"Workers install gentoo-farm {wheels.version} and {len(wheels.files) - 1} dependency wheels.")
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
