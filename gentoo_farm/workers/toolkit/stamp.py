"""Write a small stamp file naming a builder's input key (the spine's placeholder artifact)."""

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

from gentoo_farm.workers.toolkit import progress, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--builder", required=True, help="the builder this stamp stands in for")
    parser.add_argument("--input-key", required=True, help="the build's input key")
    parser.add_argument("--output", required=True, type=Path, help="where to write the stamp (JSON)")


def run(args: argparse.Namespace) -> None:
    stamp = {
        "builder": args.builder,
        "input_key": args.input_key,
        "worker_host": platform.node(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(stamp, indent=2, sort_keys=True).encode() + b"\n"
    args.output.write_bytes(data)
    progress(f"wrote {args.output} for {args.builder} input key {args.input_key}")
    report(stamp_path=str(args.output), stamp_sha512=hashlib.sha512(data).hexdigest())
