"""Say whether the master runs, which workers are connected and how the last builds went."""

import argparse
import json
import os
import urllib.error
import urllib.request

from buildbot.process.results import Results

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--builds", type=int, default=5, help="how many recent builds to list")


def master_pid(farm: FarmDir) -> int | None:
    try:
        pid = int((farm.master / "twistd.pid").read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _api(config: FarmConfig, path: str) -> dict:
    with urllib.request.urlopen(f"{config.master.buildbot_url}api/v2/{path}", timeout=10) as response:
        return json.load(response)


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    pid = master_pid(farm)
    if pid is None:
        print(f"master   stopped (start it with: farm --farm {config.basedir} up)")
        return 3
    print(f"master   running, pid {pid}, {config.master.buildbot_url}")
    print(f"logs     {farm.master_log}")
    try:
        workers = _api(config, "workers")["workers"]
        builders = {b["builderid"]: b["name"] for b in _api(config, "builders")["builders"]}
        builds = _api(config, f"builds?order=-buildid&limit={args.builds}")["builds"]
    except (urllib.error.URLError, OSError) as error:
        print(f"web API  not answering: {error}")
        return 1
    for worker in workers:
        state = "connected" if worker["connected_to"] else "idle (starts on demand)"
        print(f"worker   {worker['name']}: {state}")
    for build in builds:
        outcome = "running" if not build["complete"] else Results[build["results"]]
        builder = builders.get(build["builderid"], "?")
        print(f"build    {builder} #{build['number']}: {outcome} - {build['state_string']}")
    return 0
