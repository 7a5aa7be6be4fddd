"""Say whether the master runs, which workers are connected, the queue (and the requests an inactive master
still holds), what each running build is doing, how the last builds went and the newest image."""

import argparse
import json
import os

from gentoo_farm.catalog import find_image
from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.masterapi import MasterApi, MasterApiError, connect, result_name
from gentoo_farm.store import StoreError, open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--builds", type=int, default=5, help="how many recent builds to list")
    parser.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    parser.add_argument("--user", help="log in as this user (when the farm hides builds from visitors)")


def master_pid(farm: FarmDir) -> int | None:
    try:
        pid = int((farm.master / "twistd.pid").read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def current_step(api: MasterApi, build: dict) -> str:
    steps = api.steps(build["buildid"])
    running = [step["name"] for step in steps if step["started_at"] and not step["complete"]]
    return running[-1] if running else ""


def gather(api: MasterApi, config: FarmConfig, recent: int) -> dict[str, object]:
    builders = {builder["builderid"]: builder["name"] for builder in api.get("builders")["builders"]}
    queued = api.get("buildrequests?claimed=false&complete=false")["buildrequests"]
    inactive = {
        master["masterid"]: master["name"] for master in api.get("masters")["masters"] if not master["active"]
    }
    # Buildbot gives a dead master's claimed requests back only when a master of its name starts again
    stranded = [
        request
        for request in api.get("buildrequests?claimed=true&complete=false")["buildrequests"]
        if request["claimed_by_masterid"] in inactive
    ]
    builds = api.get(f"builds?order=-buildid&limit={recent}")["builds"]
    try:
        newest = find_image(open_store(config.store), "latest", config.store.url_expiry_seconds)
    except StoreError:
        newest = None
    return {
        "workers": [
            {"name": worker["name"], "connected": bool(worker["connected_to"])}
            for worker in api.get("workers")["workers"]
        ],
        "queue": [
            {"builder": builders.get(request["builderid"], "?"), "request": request["buildrequestid"]}
            for request in queued
        ],
        "stranded": [
            {
                "builder": builders.get(request["builderid"], "?"),
                "request": request["buildrequestid"],
                "master": inactive[request["claimed_by_masterid"]],
            }
            for request in stranded
        ],
        "builds": [
            {
                "builder": builders.get(build["builderid"], "?"),
                "number": build["number"],
                "result": result_name(build["results"] if build["complete"] else None),
                "state": build["state_string"],
                "step": "" if build["complete"] else current_step(api, build),
            }
            for build in builds
        ],
        "newest_image": {"name": newest.name, "date": newest.date, "url": newest.url} if newest else None,
    }


def print_status(status: dict) -> None:
    for worker in status["workers"]:
        state = "connected" if worker["connected"] else "idle (starts on demand)"
        print(f"worker   {worker['name']}: {state}")
    for request in status["queue"]:
        print(f"queued   {request['builder']} (request {request['request']})")
    for request in status["stranded"]:
        print(
            f"stranded {request['builder']} (request {request['request']}): claimed by the inactive master "
            f"{request['master']}; it runs when that master starts again (farm up in its directory)"
        )
    for build in status["builds"]:
        doing = f" [{build['step']}]" if build["step"] else ""
        print(f"build    {build['builder']} #{build['number']}: {build['result']}{doing} - {build['state']}")
    image = status["newest_image"]
    if image:
        print(f"image    {image['name']} ({image['date']}) {image['url']}")
    else:
        print("image    none published yet")


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    farm = FarmDir(config.basedir)
    pid = master_pid(farm)
    if pid is None:
        if args.json:
            print(json.dumps({"master": None}))
        else:
            print(f"master   stopped (start it with: farm --farm {config.basedir} up)")
        return 3
    try:
        status = gather(connect(config.master.buildbot_url, args.user), config, args.builds)
    except MasterApiError as error:
        print(json.dumps({"master": {"pid": pid}, "error": str(error)}) if args.json else f"web API  {error}")
        return 1
    master = {"pid": pid, "url": config.master.buildbot_url, "log": str(farm.master_log)}
    status = {"master": master, **status}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"master   running, pid {pid}, {config.master.buildbot_url}")
    print(f"logs     {farm.master_log}")
    print_status(status)
    return 0
