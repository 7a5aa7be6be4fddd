"""Stop the farm's build master; running local workers and the farm key's gpg-agent stop with it."""

import argparse

from gentoo_farm.cli import CommandError
from gentoo_farm.commands.status import master_pid
from gentoo_farm.commands.up import buildbot
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.signing import FarmKey


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    if master_pid(farm) is None:
        FarmKey(farm.signing_key).stop_agent()
        print("The master is not running.")
        return 0
    stopped = buildbot("stop", str(farm.master))
    if stopped.returncode != 0:
        raise CommandError(f"the master did not stop:\n{stopped.stdout}{stopped.stderr}")
    # The master's binhost merges sign with the farm key; their gpg-agent would outlive it.
    FarmKey(farm.signing_key).stop_agent()
    print("The master has stopped.")
    return 0
