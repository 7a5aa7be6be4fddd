"""Print a build's step logs (the newest build by default); -f follows a running build as it goes."""

from __future__ import annotations

import argparse
import time

from gentoo_farm.cli import CommandError
from gentoo_farm.config import FarmConfig
from gentoo_farm.masterapi import MasterApi, MasterApiError, connect, result_name

POLL_SECONDS = 2.0
STREAM_LOG = "s"
# Stream log lines start with their stream: o(ut), e(rr) or h(eader): the command, its directory and
# environment, and its exit status, written by Buildbot around the command's own output.
HEADER_STREAM = "h"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "build", nargs="?", default="image", help="BUILDER or BUILDER/NUMBER (default: image)"
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the build ends")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print each command's argv, environment and exit"
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds -f follows (default 4 h)")
    parser.add_argument("--user", help="log in as this user (when the farm hides builds from visitors)")


def _text(log: dict, text: str, verbose: bool) -> str:
    if log["type"] != STREAM_LOG:
        return text
    return "".join(
        line[1:] for line in text.splitlines(keepends=True) if verbose or not line.startswith(HEADER_STREAM)
    )


class LogPrinter:
    """Prints what is new in a build's step logs, each log under a heading the first time it has text."""

    def __init__(self, api: MasterApi, verbose: bool) -> None:
        self.api = api
        self.verbose = verbose
        self.positions: dict[int, int] = {}
        self.headed: set[int] = set()

    def print_new(self, build: dict) -> None:
        for step in self.api.steps(build["buildid"]):
            for log in self.api.logs(step["stepid"]):
                position = self.positions.get(log["logid"], 0)
                text, self.positions[log["logid"]] = self.api.log_text(log, position)
                text = _text(log, text, self.verbose)
                if not text:
                    continue
                if log["logid"] not in self.headed:
                    self.headed.add(log["logid"])
                    print(f"==> {step['name']} / {log['name']}", flush=True)
                print(text, end="", flush=True)


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    builder, _, number = args.build.partition("/")
    if number and not number.isdigit():
        raise CommandError(f"{args.build!r}: expected BUILDER or BUILDER/NUMBER")
    try:
        api = connect(config.master.buildbot_url, args.user)
        build = api.build(builder, int(number) if number else None)
        print(f"{builder} #{build['number']}: {result_name(build['results'])} - {build['state_string']}")
        printer = LogPrinter(api, args.verbose)
        deadline = time.monotonic() + args.timeout
        while True:
            printer.print_new(build)
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
