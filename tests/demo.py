"""The README's main job: a farm that builds, boot-tests and publishes an image.

Gentoo's mirrors cannot be reached from a closed network, so the demo builds the signed stand-in
world (tests/world) and serves it on 127.0.0.1 as the farm's upstream; everything else is the
farm as a user runs it: `farm init`, `farm up`, builds forced through the REST API, `farm images`.

    .venv/bin/python -m tests.demo [--dir demo] [--keep-running]
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

from buildbot.process.results import Results

from gentoo_farm.config import load_config
from gentoo_farm.farmdir import FarmDir
from tests.debian import kernel_source_tarball
from tests.farmtest import FARM, Farm, configure_for_world, farm_command, init_farm
from tests.world import WorldServer, build_world

BUILD_TIMEOUT = 3600


def watch(farm: Farm, builder: str, number: int) -> dict:
    """Wait for a build, printing each step as it starts and ends, so a long kernel build shows life."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    shown: dict[int, str] = {}
    while time.monotonic() < deadline:
        build = next((b for b in farm.builds(builder) if b["number"] == number), None)
        if build is not None:
            for step in farm.steps(build):
                state = f"{step['name']}: {step['state_string']}"
                if step["started_at"] and shown.get(step["number"]) != state:
                    shown[step["number"]] = state
                    print(f"  {builder} #{number}  {state}", flush=True)
            if build["complete"]:
                print(f"{builder} #{number}: {Results[build['results']]} ({build['state_string']})")
                return build
        time.sleep(3)
    raise SystemExit(f"{builder} #{number} did not finish within {BUILD_TIMEOUT} s")


def force(farm: Farm, scheduler: str, builder: str) -> dict:
    number = len(farm.builds(builder)) + 1
    status, answer = farm.force(scheduler, builderNames=[builder], reason="run-demo")
    if status != 200:
        raise SystemExit(f"could not start {builder}: HTTP {status} {answer}")
    return watch(farm, builder, number)


def prepare_farm(root: Path, world_url: str) -> Farm:
    farm_dir = root / "farm"
    if farm_dir.exists():
        url = load_config(farm_dir).master.buildbot_url
        saved = FarmDir(farm_dir).saved_admin_password
        if not saved.exists():
            raise SystemExit(
                f"{saved}: missing (a demo farm from an older version?); remove {root} and rerun"
            )
        password = saved.read_text().strip()
        return Farm(root=farm_dir, admin_password=password, url=url)
    return init_farm(farm_dir, "--save-password")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="where the world and the farm live")
    parser.add_argument("--keep-running", action="store_true", help="keep the farm up until Ctrl-C")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)

    print(
        "Preparing the stand-in Gentoo world (signed stage3, snapshot, distfiles, Linux source) ...",
        flush=True,
    )
    source = kernel_source_tarball(root / "debs")
    world_dir = root / "world"
    shutil.rmtree(world_dir, ignore_errors=True)
    world = build_world(world_dir, extra_distfiles=[source])
    with WorldServer(world.mirror_dir) as upstream:
        print(f"Upstream Gentoo mirror (stand-in): {upstream.url}")
        farm = prepare_farm(root, upstream.url)
        configure_for_world(farm, world, upstream.url, source.name)
        print(farm_command("--farm", str(farm.root), "up").stdout, end="")
        farm.login()
        print(f"Admin password: {farm.admin_password} (also in {FarmDir(farm.root).saved_admin_password})")
        try:
            images_before = len(farm.builds("image"))
            results = [
                # The kernel's source is vouched for by the snapshot the mirror build publishes.
                force(farm, f"force-{builder}", builder)
                for builder in ("mirror", "overlay", "kernel")
            ]
            if any(build["results"] != 0 for build in results):
                raise SystemExit("an input build failed; see the web UI")
            if len(farm.builds("image")) == images_before:
                # Every input was already published: build the image directly.
                image = force(farm, "build-image", "image")
            else:
                image = watch(farm, "image", images_before + 1)
            if image["results"] != 0:
                raise SystemExit(f"the image build failed: {image['state_string']}")
            print(farm_command("--farm", str(farm.root), "images").stdout, end="")
            print(f"Web UI: {farm.url}  (Images page: {farm.url}#/images)")
            name = farm.properties(image).get("image_name", "latest")
            print(f"Boot it here and log in over SSH with your key: {FARM} --farm {farm.root} boot {name}")
            if args.keep_running:
                print("The farm keeps running until Ctrl-C (its stand-in upstream lives in this process).")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            farm_command("--farm", str(farm.root), "down", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
