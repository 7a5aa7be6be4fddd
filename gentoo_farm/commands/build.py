"""Start a build through the master's REST API, as the web UI's buttons do; --wait follows it to the end."""

from __future__ import annotations

import argparse
import sys
import time

from gentoo_farm.artifacts import (
    IMAGE,
    KERNEL,
    MIRROR,
    OVERLAY,
    REBUILD_PROPERTY,
    UP_TO_DATE_PROPERTY,
    WORKER_IMAGE,
    force_scheduler,
)
from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.masterapi import MasterApi, MasterApiError, connect, result_name

POLL_SECONDS = 2.0
# How often a step that runs long says it still runs, when the output is not a terminal.
STILL_RUNNING_SECONDS = 60.0
SUCCESS, WARNINGS = 0, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "builder", choices=(IMAGE, KERNEL, OVERLAY, MIRROR, WORKER_IMAGE), help="what to build"
    )
    parser.add_argument("--reason", default="forced with farm build", help="shown with the build")
    parser.add_argument(
        "--force", action="store_true", help="build even when the store holds this input's build already"
    )
    parser.add_argument(
        "--extra-packages",
        default="",
        metavar="ATOMS",
        help="image only: package atoms to add, space-separated",
    )
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


def _elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class StepPrinter:
    """Prints each step of a build as it ends and, while one runs, how long it has been running: on a
    terminal as one line rewritten in place, otherwise a line every :data:`STILL_RUNNING_SECONDS`."""

    def __init__(self) -> None:
        self.printed: set[int] = set()
        self.interactive = sys.stdout.isatty()
        self.progress_shown = False
        self.last_said: dict[int, float] = {}

    def clear_progress(self) -> None:
        if self.progress_shown:
            print("\r\033[K", end="", flush=True)
            self.progress_shown = False

    def say(self, text: str) -> None:
        self.clear_progress()
        print(text, flush=True)

    def update(self, steps: list[dict]) -> None:
        now = time.time()
        for step in steps:
            if step["stepid"] in self.printed or step["hidden"]:
                continue
            if step["complete"]:
                self.printed.add(step["stepid"])
                self.say(f"  {step['name']}: {result_name(step['results'])} - {step['state_string']}")
            elif step["started_at"]:
                running_for = now - step["started_at"]
                if self.interactive:
                    print(f"\r\033[K  {step['name']}: running {_elapsed(running_for)}", end="", flush=True)
                    self.progress_shown = True
                elif (
                    now - self.last_said.setdefault(step["stepid"], step["started_at"])
                    >= STILL_RUNNING_SECONDS
                ):
                    self.last_said[step["stepid"]] = now
                    self.say(f"  {step['name']}: still running after {_elapsed(running_for)}")


def follow(api: MasterApi, builder: str, request_id: int, timeout: float) -> dict:
    """Print each step as it ends; the finished build."""
    deadline = time.monotonic() + timeout
    build = None
    printer = StepPrinter()
    try:
        while time.monotonic() < deadline:
            started = api.build_of_request(request_id)
            if started is not None and (build is None or started["buildid"] != build["buildid"]):
                printer.say(f"{builder} build #{started['number']} started")
            build = started or build
            if build is not None:
                printer.update(api.steps(build["buildid"]))
                build = api.get(f"builds/{build['buildid']}")["builds"][0]
                if build["complete"]:
                    return build
            time.sleep(POLL_SECONDS)
    finally:
        printer.clear_progress()
    where = f"build #{build['number']}" if build else f"build request {request_id}"
    raise CommandError(f"{where} did not finish within {timeout:.0f} s (it goes on; see `farm logs`)")


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    if args.builder != IMAGE and (args.no_publish or args.extra_packages):
        raise CommandError("--no-publish and --extra-packages apply to image builds only")
    if args.builder == WORKER_IMAGE and not config.builds_worker_image:
        raise CommandError(
            "this farm builds no worker image: set [image.worker] enabled = true, or let a "
            '[[workers.openstack]] pool boot image = "farm-worker-latest"'
        )
    params: dict[str, object] = {"builderNames": [args.builder], "reason": args.reason}
    if args.force:
        params[REBUILD_PROPERTY] = True
    if args.builder == IMAGE:
        params["publish"] = not args.no_publish
        params["extra_packages"] = args.extra_packages
    try:
        api = connect(config.master.buildbot_url, args.user)
        requests = api.force(force_scheduler(args.builder), **params)
        (request_id,) = requests.values()
        print(f"{args.builder}: queued as build request {request_id} ({args.reason})", flush=True)
        if not args.wait:
            return 0
        build = follow(api, args.builder, request_id, args.timeout)
        up_to_date = api.get(f"builds/{build['buildid']}/properties")["properties"][0].get(
            UP_TO_DATE_PROPERTY
        )
    except MasterApiError as error:
        raise CommandError(str(error)) from error
    if up_to_date and up_to_date[0]:
        print(f"{args.builder} build #{build['number']}: up to date: nothing to build (use --force)")
        return 0
    outcome = result_name(build["results"])
    print(f"{args.builder} build #{build['number']}: {outcome} - {build['state_string']}")
    return 0 if build["results"] in (SUCCESS, WARNINGS) else 1
