"""Print a build's step logs (the newest build by default); -f follows a running build as it goes."""

from __future__ import annotations

import argparse
import time

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.masterapi import MasterApi, MasterApiError, connect, result_name

POLL_SECONDS = 2.0
STREAM_LOG = "s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "build", nargs="?", default="image", help="BUILDER or BUILDER/NUMBER (default: image)"
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the build ends")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds -f follows (default 4 h)")
    parser.add_argument("--user", help="log in as this user (when the farm hides builds from visitors)")


def _text(log: dict, text: str) -> str:
    # Stream logs keep each line's stream (o, e, h) as its first character.
    if log["type"] != STREAM_LOG:
        return text
    return "".join(line[1:] for line in text.splitlines(keepends=True))


def print_new(api: MasterApi, build: dict, positions: dict[int, int], headed: set[int]) -> None:
    for step in api.steps(build["buildid"]):
        for log in api.logs(step["stepid"]):
            text, positions[log["logid"]] = api.log_text(log["logid"], positions.get(log["logid"], 0))
            if not text:
                continue
            if log["logid"] not in headed:
                headed.add(log["logid"])
                print(f"==> {step['name']} / {log['name']}", flush=True)
            print(_text(log, text), end="", flush=True)


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    builder, _, number = args.build.partition("/")
    if number and not number.isdigit():
        raise CommandError(f"{args.build!r}: expected BUILDER or BUILDER/NUMBER")
    try:
        api = connect(config.master.buildbot_url, args.user)
        build = api.build(builder, int(number) if number else None)
        print(f"{builder} #{build['number']}: {result_name(build['results'])} - {build['state_string']}")
        positions: dict[int, int] = {}
        headed: set[int] = set()
        deadline = time.monotonic() + args.timeout
        while True:
            print_new(api, build, positions, headed)
            if build["complete"] or not args.follow:
                break
            if time.monotonic() > deadline:
                raise CommandError(f"{builder} #{build['number']} still runs after {args.timeout:.0f} s")
            time.sleep(POLL_SECONDS)
            build = api.get(f"builds/{build['buildid']}")["builds"][0]
    except MasterApiError as error:
        raise CommandError(str(error)) from error
    if args.follow:
        print(f"{builder} #{build['number']}: {result_name(build['results'])} - {build['state_string']}")
    return 0
