"""Stop the farm's build master; running local workers are stopped with it."""

import argparse

from gentoo_farm.cli import CommandError
from gentoo_farm.commands.status import master_pid
from gentoo_farm.commands.up import buildbot
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    if master_pid(farm) is None:
        print("The master is not running.")
        return 0
    stopped = buildbot("stop", str(farm.master))
    if stopped.returncode != 0:
        raise CommandError(f"the master did not stop:\n{stopped.stdout}{stopped.stderr}")
    print("The master has stopped.")
    return 0
