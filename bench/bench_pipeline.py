"""What a kernel config push costs on a warm farm, against the work that really had to happen (issue 13).

One real farm (master, local workers, Portage, kernel, qemu) against the stand-in Gentoo world, set up
as tests/test_pipeline.py's ``pipeline`` fixture does. After the first image (mirror, overlay and kernel
forced, then the image they trigger), it measures:

1. push -> published, SSH-verified image: a CONFIG_LOCALVERSION commit pushed to the kernel-config
   repository, until ``images/latest.json`` names a new set whose image build succeeded and whose boot
   test logged in over SSH. Beside it the bare parts, the work steps of the two builds read from the
   REST API (the kernel's incremental ``make``; the image's unpack-stage4, assemble, disk, boot test,
   upload and publish), their sum and the ratio (goal: farm / parts <= 1.25, and under 90 s); then what
   the farm spent outside the steps: the push scheduler's settle time (``[kernel] settle_seconds``,
   left at its default here), each build's wait from request to start (the latent worker's start-up),
   and each build's time between its steps.
2. a forced image build with nothing changed (it ends "up to date") against the first, cold image
   build, each from its request to its end (goal: <= 0.03 and under 10 s).
3. a real config change (a push that builds the dummy network driver as a module) against a cold
   kernel build, each the kernel build step (goal: <= 0.15). The cold side is the farm's first kernel
   build, cold only because the workers' caches (ccache and kernel build tree) start empty: the bench
   points ``GENTOO_FARM_TEST_CACHE`` at its own temporary root once the stand-in world (and Debian's
   packages) came from the shared test cache. A cold compile takes 10 to 20 minutes on 2 cores;
   ``--skip-cold-kernel`` lends the workers the tests' shared kernel ccache instead (the first kernel
   build compiles from it in a minute or two) and prints the config change alone.

Buildbot records times in whole seconds: each step's duration is good to a second. The machine's load
(``uptime``) is printed at the start and the end.

From the repository root, as root (local workers run builds in user namespaces):

    .venv/bin/python bench/bench_pipeline.py [--skip-cold-kernel]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gentoo_farm.config import load_config
from tests import cache
from tests.debian import kernel_source_tarball
from tests.farmtest import Farm
from tests.test_pipeline import (
    IMAGE_BUILD_TIMEOUT,
    KERNEL_BUILD_TIMEOUT,
    SUCCESS,
    Pipeline,
    running_pipeline,
    step_summary,
)
from tests.world import build_world

PUSH_GOAL_RATIO = 1.25
PUSH_GOAL_SECONDS = 90.0
UNCHANGED_GOAL_RATIO = 0.03
UNCHANGED_GOAL_SECONDS = 10.0
CONFIG_CHANGE_GOAL_RATIO = 0.15
KERNEL_WORK_STEPS = ("build-kernel",)
IMAGE_WORK_STEPS = (
    "unpack-stage4", "assemble-image", "build-disk", "boot-test", "upload-images", "publish-images",
)  # fmt: skip
"""The steps that do the work a kernel-only change needs; everything else is the farm's overhead."""
CHEAP_MODULE = "CONFIG_DUMMY"
"""Off in the default config, one source file (drivers/net/dummy.c) once built as a module."""
POLL_SECONDS = 0.2


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def build_seconds(build: dict[str, Any]) -> float:
    return build["complete_at"] - build["started_at"]


def request_of(farm: Farm, build: dict[str, Any]) -> dict[str, Any]:
    (request,) = farm.api(f"buildrequests?buildrequestid={build['buildrequestid']}")["buildrequests"]
    return request


def request_to_end_seconds(farm: Farm, build: dict[str, Any]) -> float:
    """From the build's request to its end: what the person who asked waited, worker start-up included."""
    return build["complete_at"] - request_of(farm, build)["submitted_at"]


def start_wait_seconds(farm: Farm, build: dict[str, Any]) -> float:
    """From the build's request to its start: the latent worker's start-up (and any queue)."""
    return build["started_at"] - request_of(farm, build)["submitted_at"]


def step_seconds(farm: Farm, build: dict[str, Any]) -> dict[str, float]:
    """Each step that ran (a skipped one takes 0 s) by name, in the build's order."""
    return {
        step["name"]: step["complete_at"] - step["started_at"]
        for step in farm.steps(build)
        if step["started_at"] is not None and step["complete_at"] is not None
    }


def work_seconds(farm: Farm, build: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    steps = step_seconds(farm, build)
    missing = set(names) - steps.keys()
    if missing:
        raise AssertionError(f"build {build['buildid']} ran none of {sorted(missing)}: {list(steps)}")
    return {name: steps[name] for name in names}


def print_steps(farm: Farm, label: str, build: dict[str, Any]) -> None:
    steps = step_seconds(farm, build)
    listing = ", ".join(f"{name} {seconds:.0f}" for name, seconds in steps.items() if seconds)
    between = build_seconds(build) - sum(steps.values())
    print(f"    {label} #{build['number']} steps (s, those over 0): {listing}")
    print(f"    {label} #{build['number']}: {build_seconds(build):.0f} s, between its steps {between:.0f} s")


@dataclass
class PushedBuilds:
    """A kernel-config push and what it made: the farm's time from the push to the published image."""

    pushed_at: float
    published_at: float
    kernel: dict[str, Any]
    image: dict[str, Any]

    @property
    def seconds(self) -> float:
        return self.published_at - self.pushed_at


def push_to_published(pipeline: Pipeline, message: str, change: Callable[[Path], None]) -> PushedBuilds:
    """Push ``change`` to the kernel-config repository; wait until the image it leads to is published."""
    farm = pipeline.farm
    kernels_before, images_before = len(farm.builds("kernel")), len(farm.builds("image"))
    latest_before = pipeline.latest("images")
    # The clock starts before the clone and commit Pipeline.push makes: a fraction of a second.
    pushed_at = time.time()
    revision = pipeline.push("kernel-config", message, change)
    deadline = time.monotonic() + KERNEL_BUILD_TIMEOUT + IMAGE_BUILD_TIMEOUT
    while pipeline.latest("images") == latest_before:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no new image published within {KERNEL_BUILD_TIMEOUT + IMAGE_BUILD_TIMEOUT} s"
            )
        time.sleep(POLL_SECONDS)
    published_at = time.time()
    kernel = farm.wait_for_build("kernel", kernels_before + 1, timeout=KERNEL_BUILD_TIMEOUT)
    image = farm.wait_for_build("image", images_before + 1, timeout=IMAGE_BUILD_TIMEOUT)
    assert kernel["results"] == SUCCESS, kernel["state_string"]
    assert farm.properties(kernel)["got_revision"] == revision
    assert image["results"] == SUCCESS, image["state_string"]
    assert farm.properties(image)["images_set_id"] == pipeline.latest("images")
    boot_test = farm.log(image, "boot-test")
    assert "checking an SSH login as ec2-user" in boot_test and "boot test passed" in boot_test, boot_test
    return PushedBuilds(pushed_at, published_at, kernel, image)


def force_and_wait(farm: Farm, builder: str, timeout: float) -> dict[str, Any]:
    before = len(farm.builds(builder))
    status, answer = farm.force(f"force-{builder}", builderNames=[builder])
    assert status == 200, answer
    build = farm.wait_for_build(builder, before + 1, timeout=timeout)
    assert build["results"] == SUCCESS, f"{builder}: {build['state_string']}"
    return build


def first_image(pipeline: Pipeline) -> tuple[dict[str, Any], dict[str, Any]]:
    """The farm's first kernel and image: mirror, overlay, then the kernel, whose success starts the image."""
    farm = pipeline.farm
    force_and_wait(farm, "mirror", IMAGE_BUILD_TIMEOUT)
    force_and_wait(farm, "overlay", IMAGE_BUILD_TIMEOUT)
    images_before = len(farm.builds("image"))
    kernel = force_and_wait(farm, "kernel", KERNEL_BUILD_TIMEOUT)
    image = farm.wait_for_build("image", images_before + 1, timeout=IMAGE_BUILD_TIMEOUT)
    assert image["results"] == SUCCESS, image["state_string"]
    return kernel, image


def measure_push(pipeline: Pipeline, settle_seconds: int) -> None:
    farm = pipeline.farm

    def new_local_version(clone: Path) -> None:
        with (clone / "config").open("a") as config:
            config.write('CONFIG_LOCALVERSION="-bench"\n')

    pushed = push_to_published(pipeline, "kernel: local version -bench", new_local_version)
    kernel_parts = work_seconds(farm, pushed.kernel, KERNEL_WORK_STEPS)
    image_parts = work_seconds(farm, pushed.image, IMAGE_WORK_STEPS)
    parts = sum(kernel_parts.values()) + sum(image_parts.values())
    ratio = pushed.seconds / parts
    met = ratio <= PUSH_GOAL_RATIO and pushed.seconds < PUSH_GOAL_SECONDS
    print("1. CONFIG_LOCALVERSION push -> published, SSH-verified image")
    print(f"  farm, push to published:  {pushed.seconds:6.1f} s")
    print(
        "  parts: "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in {**kernel_parts, **image_parts}.items())
    )
    print(f"  sum of the parts:         {parts:6.1f} s")
    goal = f"goal <= {PUSH_GOAL_RATIO} and under {PUSH_GOAL_SECONDS:.0f} s"
    print(f"  farm / parts: {ratio:.2f} ({goal}: {verdict(met)})")
    kernel_request = request_of(farm, pushed.kernel)
    image_request = request_of(farm, pushed.image)
    # The image is requested by the kernel build's last step, before that build ends: a timeline, not gaps.
    timeline = {
        "kernel requested": kernel_request["submitted_at"],
        "kernel started": pushed.kernel["started_at"],
        "image requested": image_request["submitted_at"],
        "kernel ended": pushed.kernel["complete_at"],
        "image started": pushed.image["started_at"],
        "image published": pushed.published_at,
    }
    print("  outside the steps, seconds after the push:")
    print("    " + ", ".join(f"{event} {at - pushed.pushed_at:.0f}" for event, at in timeline.items()))
    print(f"    the push scheduler's settle time: [kernel] settle_seconds = {settle_seconds} (the default)")
    waits = {
        label: start_wait_seconds(farm, build)
        for label, build in (("kernel", pushed.kernel), ("image", pushed.image))
    }
    print(
        "    request -> start (latent worker start-up): "
        + ", ".join(f"{label} {wait:.0f} s" for label, wait in waits.items())
    )
    print_steps(farm, "kernel", pushed.kernel)
    print_steps(farm, "image", pushed.image)
    print(f"    kernel build tree: {farm.properties(pushed.kernel)['kernel_build_tree']}")


def measure_unchanged_image(pipeline: Pipeline, cold_image: dict[str, Any]) -> None:
    farm = pipeline.farm
    before = len(farm.builds("image"))
    status, answer = farm.force("build-image", builderNames=["image"])
    assert status == 200, answer
    unchanged = farm.wait_for_build("image", before + 1, timeout=IMAGE_BUILD_TIMEOUT)
    assert unchanged["results"] == SUCCESS, unchanged["state_string"]
    assert "up to date" in step_summary(farm, unchanged, "up-to-date")
    unchanged_seconds = request_to_end_seconds(farm, unchanged)
    cold_seconds = request_to_end_seconds(farm, cold_image)
    ratio = unchanged_seconds / cold_seconds
    met = ratio <= UNCHANGED_GOAL_RATIO and unchanged_seconds < UNCHANGED_GOAL_SECONDS
    print("2. forced image build, nothing changed, vs the first (cold) image build (request to end)")
    worker_start = start_wait_seconds(farm, unchanged)
    print(f"  nothing changed: {unchanged_seconds:6.0f} s (worker start-up {worker_start:.0f} s)")
    print(f"  first image:     {cold_seconds:6.0f} s")
    ratio_line = f"goal <= {UNCHANGED_GOAL_RATIO} and under {UNCHANGED_GOAL_SECONDS:.0f} s: {verdict(met)}"
    print(f"  ratio: {ratio:.3f} ({ratio_line})")
    print_steps(farm, "image", unchanged)


def measure_config_change(pipeline: Pipeline, first_kernel: dict[str, Any], first_is_cold: bool) -> None:
    farm = pipeline.farm

    def enable_module(clone: Path) -> None:
        config = clone / "config"
        off = f"# {CHEAP_MODULE} is not set\n"
        text = config.read_text()
        assert off in text, f"the default kernel config no longer has {off.strip()!r}"
        config.write_text(text.replace(off, f"{CHEAP_MODULE}=m\n"))

    pushed = push_to_published(pipeline, f"kernel: {CHEAP_MODULE}=m", enable_module)
    (change_seconds,) = work_seconds(farm, pushed.kernel, KERNEL_WORK_STEPS).values()
    print(f"3. a real config change ({CHEAP_MODULE}=m) vs a cold kernel build (the build-kernel step)")
    build_tree = farm.properties(pushed.kernel)["kernel_build_tree"]
    print(f"  config change: {change_seconds:6.0f} s (kernel build tree {build_tree})")
    print(f"  (that push -> published image: {pushed.seconds:.1f} s)")
    if first_is_cold:
        (cold_seconds,) = work_seconds(farm, first_kernel, KERNEL_WORK_STEPS).values()
        ratio = change_seconds / cold_seconds
        print(f"  cold kernel:   {cold_seconds:6.0f} s")
        met = ratio <= CONFIG_CHANGE_GOAL_RATIO
        print(f"  ratio: {ratio:.3f} (goal <= {CONFIG_CHANGE_GOAL_RATIO}: {verdict(met)})")
    else:
        print("  cold kernel: skipped (--skip-cold-kernel: the first kernel compiled from the shared ccache)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--skip-cold-kernel",
        action="store_true",
        help="lend the workers the tests' shared kernel ccache (minutes, not 10-20) and skip the cold ratio",
    )
    args = parser.parse_args()
    print(f"load at start: {uptime()}")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch_name:
        scratch = Path(scratch_name)
        source = kernel_source_tarball(scratch / "debs")
        world = build_world(scratch / "world", extra_distfiles=[source])
        shared_kernel_ccache = cache.directory(cache.KERNEL_CCACHE)
        # From here on the tests' cache is the bench's own: the workers' caches start empty.
        bench_cache = scratch / "cache"
        bench_cache.mkdir()
        os.environ[cache.ROOT_VARIABLE] = str(bench_cache)
        if args.skip_cold_kernel:
            (bench_cache / cache.KERNEL_CCACHE).symlink_to(shared_kernel_ccache, target_is_directory=True)
        with running_pipeline(scratch, world, source.name) as pipeline:
            first_kernel, cold_image = first_image(pipeline)
            measure_push(pipeline, load_config(pipeline.farm.root).kernel.settle_seconds)
            measure_unchanged_image(pipeline, cold_image)
            measure_config_change(pipeline, first_kernel, first_is_cold=not args.skip_cold_kernel)
    print(f"load at end: {uptime()}")


if __name__ == "__main__":
    main()
