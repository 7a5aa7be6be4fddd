"""Start a build through the master's REST API, as the web UI's buttons do; --wait follows it to the end."""

from __future__ import annotations

import argparse
import time

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.master.builders import IMAGE, KERNEL, MIRROR, OVERLAY
from gentoo_farm.master.schedulers import force_scheduler
from gentoo_farm.masterapi import MasterApi, MasterApiError, connect, result_name

POLL_SECONDS = 2.0
SUCCESS, WARNINGS = 0, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("builder", choices=(IMAGE, KERNEL, OVERLAY, MIRROR), help="what to build")
    parser.add_argument("--reason", default="forced with farm build", help="shown with the build")
    parser.add_argument(
        "--no-publish", action="store_true", help="image only: build and boot-test, publish nothing"
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the build, print each step, exit with its result"
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds --wait waits (default 4 h)")
    parser.add_argument(
        "--user", default="admin", help="the login to force with (password: $FARM_PASSWORD or a prompt)"
    )


def follow(api: MasterApi, request_id: int, timeout: float) -> dict:
    """Print each step as it ends; the finished build."""
    deadline = time.monotonic() + timeout
    build = None
    printed: set[int] = set()
    while time.monotonic() < deadline:
        build = api.build_of_request(request_id) or build
        if build is not None:
            for step in api.steps(build["buildid"]):
                if step["complete"] and step["stepid"] not in printed:
                    printed.add(step["stepid"])
                    print(
                        f"  {step['name']}: {result_name(step['results'])} - {step['state_string']}",
                        flush=True,
                    )
            build = api.get(f"builds/{build['buildid']}")["builds"][0]
            if build["complete"]:
                return build
        time.sleep(POLL_SECONDS)
    where = f"build #{build['number']}" if build else f"build request {request_id}"
    raise CommandError(f"{where} did not finish within {timeout:.0f} s (it goes on; see `farm logs`)")


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    if args.no_publish and args.builder != IMAGE:
        raise CommandError("--no-publish applies to image builds only")
    params: dict[str, object] = {"builderNames": [args.builder], "reason": args.reason}
    if args.builder == IMAGE:
        params["publish"] = not args.no_publish
    try:
        api = connect(config.master.buildbot_url, args.user)
        requests = api.force(force_scheduler(args.builder), **params)
        (request_id,) = requests.values()
        print(f"{args.builder}: build request {request_id} queued ({args.reason})", flush=True)
        if not args.wait:
            return 0
        build = follow(api, request_id, args.timeout)
    except MasterApiError as error:
        raise CommandError(str(error)) from error
    outcome = result_name(build["results"])
    print(f"{args.builder} #{build['number']}: {outcome} - {build['state_string']}")
    return 0 if build["results"] in (SUCCESS, WARNINGS) else 1
