"""Cold vs warm emerge of the image's package set, side by side in one run.

Cold: a fresh build root, an empty farm binhost and mirror; every package compiles from source and
every distfile comes from upstream. Warm: another fresh build root after the cold run's binary
packages and distfiles were pushed to the farm binhost and mirror. Both run the real
``farm-worker emerge`` (real Portage) against the stand-in world on 127.0.0.1. Prints each side's
wall time and warm/cold (goal: <= 0.10).

The world's synthetic libraries compile ``--compile-scale`` times the C the test suite's world does
(same packages, same dependencies): Portage costs about a second per package whether it compiles or
installs a binary package, so a binhost's win shows only against real compile work, as in a real image.
Beside wall time it prints the CPU time each side's processes used: on a shared machine the wall times
move with other people's load, the CPU times much less.

From the repository root:

    .venv/bin/python bench/bench_binhost.py [--jobs N] [--compile-scale N] [--keep DIR]
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.world import World, WorldServer, build_world
from tests.world.stages import StageRun, push_back, run_stage

GOAL = 0.10
DEFAULT_COMPILE_SCALE = 8


def unpack(world: World, root: Path) -> None:
    run = run_stage(
        "unpack-root",
        "--stage3",
        world.file(world.stage3_path),
        "--snapshot",
        world.file(world.snapshot_path),
        "--root",
        root,
    )
    if run.returncode != 0:
        sys.exit(f"chroot failed: {run.error or run.stderr}")


def upstream_distfiles(upstream: WorldServer) -> list[str]:
    """Distfiles the upstream mirror served (Portage also asks every mirror for its layout.conf)."""
    return [
        path
        for path in upstream.requested_paths()
        if path.startswith("/distfiles/") and path != "/distfiles/layout.conf"
    ]


def children_cpu_seconds() -> float:
    """User + system time of every finished child process, their descendants included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_emerge(
    world: World, root: Path, work: Path, farm: WorldServer, upstream: WorldServer, jobs: int
) -> tuple[float, float, StageRun]:
    started = time.monotonic()
    cpu_before = children_cpu_seconds()
    run = run_stage(
        "emerge",
        "--root", root, "--pkgdir", work / "pkgs", "--distdir", work / "distfiles",
        "--workdir", work / "scratch", "--profile", world.profile,
        "--binhost", f"{farm.url}/binpkgs", "--distfile-mirror", farm.url, "--upstream-mirror", upstream.url,
        "--jobs", jobs, *world.package_set,
        timeout=3600, log=work.with_suffix(".log"),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    cpu = children_cpu_seconds() - cpu_before
    if run.returncode != 0:
        sys.exit(f"emerge failed ({work.with_suffix('.log')}): {run.error}")
    return elapsed, cpu, run


def describe(side: str, wall: float, cpu: float, run: StageRun, upstream_fetches: list[str]) -> str:
    return (
        f"{side}: {wall:7.1f} s (CPU {cpu:6.1f} s)  compiled {len(run.result['packages_compiled'])}, "
        f"binary {len(run.result['packages_binary'])}, distfiles from upstream {len(upstream_fetches)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel make jobs (default: 2)")
    parser.add_argument(
        "--compile-scale",
        type=int,
        default=DEFAULT_COMPILE_SCALE,
        help="compile work per synthetic package, as a multiple of the test world's "
        f"(default: {DEFAULT_COMPILE_SCALE})",
    )
    parser.add_argument("--keep", type=Path, help="work in this (new) directory and keep it, logs included")
    args = parser.parse_args()
    if args.compile_scale < 1:
        parser.error(f"--compile-scale {args.compile_scale}: must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-binhost-") as scratch:
        base = args.keep or Path(scratch)
        base.mkdir(parents=True, exist_ok=args.keep is None)
        world = build_world(base / "world", compile_scale=args.compile_scale)
        store = base / "store"
        (store / "binpkgs").mkdir(parents=True)
        (store / "distfiles").mkdir()
        with WorldServer(world.mirror_dir) as upstream, WorldServer(store) as farm:
            unpack(world, base / "cold-root")
            cold_time, cold_cpu, cold = timed_emerge(
                world, base / "cold-root", base / "cold", farm, upstream, args.jobs
            )
            upstream_fetches = upstream_distfiles(upstream)
            push_back(base / "cold/pkgs", base / "cold/distfiles", store / "binpkgs", store / "distfiles")
            upstream.clear_log()

            unpack(world, base / "warm-root")
            warm_time, warm_cpu, warm = timed_emerge(
                world, base / "warm-root", base / "warm", farm, upstream, args.jobs
            )
            warm_upstream = upstream_distfiles(upstream)

    ratio = warm_time / cold_time
    print(
        f"package set: {' '.join(world.package_set)} ({len(cold.result['packages_compiled'])} packages, "
        f"compile scale {args.compile_scale}, {args.jobs} make jobs)"
    )
    print(describe("cold", cold_time, cold_cpu, cold, upstream_fetches))
    print(describe("warm", warm_time, warm_cpu, warm, warm_upstream))
    print(f"warm/cold: {ratio:.3f} (goal <= {GOAL:.2f}: {'met' if ratio <= GOAL else 'not met'})")
    print(f"warm/cold CPU time: {warm_cpu / cold_cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
