"""The demo's upstream: ``python -m tests.world build DIR``, then ``... serve DIR [--port N]``."""

import argparse
import contextlib
import sys
import threading
from pathlib import Path

from tests.world import build_world
from tests.world.server import WorldServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.world", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="lay out a stand-in Gentoo world in DIR (must not exist)")
    build.add_argument("directory", type=Path)
    serve = commands.add_parser("serve", help="serve DIR/mirror on 127.0.0.1 like an upstream Gentoo mirror")
    serve.add_argument("directory", type=Path)
    serve.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    args = parser.parse_args(argv)

    if args.command == "build":
        if args.directory.exists():
            parser.error(f"{args.directory} already exists")
        world = build_world(args.directory)
        print(f"world built in {world.root}")
        print(f"keyring:       {world.keyring}")
        print(f"release key:   {world.release_fingerprint}")
        print(f"snapshot key:  {world.snapshot_fingerprint}")
        print(f"profile:       {world.profile}")
        print(f"package set:   {' '.join(world.package_set)}")
        return 0

    mirror = args.directory / "mirror"
    if not mirror.is_dir():
        parser.error(f"{mirror} is not a directory: run 'python -m tests.world build {args.directory}' first")
    with WorldServer(mirror, port=args.port) as server:
        print(f"serving {mirror} at {server.url}/ (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
