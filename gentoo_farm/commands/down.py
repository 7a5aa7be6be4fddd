"""Stop the farm's build master; running local workers and the farm key's gpg-agent stop with it."""

import argparse
import time

from gentoo_farm.cli import CommandError
from gentoo_farm.commands.status import master_pid
from gentoo_farm.commands.up import buildbot
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.signing import FarmKey

STOP_TIMEOUT = 180.0
STOP_POLL_SECONDS = 0.5
STILL_STOPPING_SECONDS = 10.0
"""After this long, `farm down` says why it is still waiting."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    pid = master_pid(farm)
    if pid is None:
        FarmKey(farm.signing_key).stop_agent()
        print("The master is not running.")
        return 0
    # Buildbot's own wait gives up after 10 s; a master stopping its workers on a loaded machine takes longer.
    stopped = buildbot("stop", "--no-wait", str(farm.master))
    if stopped.returncode != 0:
        raise CommandError(f"the master did not stop:\n{stopped.stdout}{stopped.stderr}")
    started = time.monotonic()
    said = False
    while master_pid(farm) is not None:
        if time.monotonic() - started > STOP_TIMEOUT:
            raise CommandError(
                f"the master (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM; its log: "
                f"{farm.master_log}"
            )
        if not said and time.monotonic() - started > STILL_STOPPING_SECONDS:
            print(
                f"The master (pid {pid}) is still stopping its workers; waiting up to {STOP_TIMEOUT:.0f} s."
            )
            said = True
        time.sleep(STOP_POLL_SECONDS)
    # The master's binhost merges sign with the farm key; their gpg-agent would outlive it.
    FarmKey(farm.signing_key).stop_agent()
    print("The master has stopped.")
    return 0
