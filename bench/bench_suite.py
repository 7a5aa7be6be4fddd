"""The test suite twice, cold cache then warm: where the time goes, side by side.

Both runs use the same fresh test cache directory (``GENTOO_FARM_TEST_CACHE``, tests/cache.py): the first
starts it empty, as on a fresh machine (Debian packages, the stand-in world and the kernel's ccache are
built), the second finds it full. Prints each run's wall time and result line, the warm/cold ratio and
each run's ten slowest tests. Arguments after ``--`` go to pytest (e.g. ``-- --quick`` for the
quick tier, ``-- tests/test_config.py`` for a trial).

Run from the repository root after scripts/setup: ``.venv/bin/python bench/bench_suite.py [--keep-cache]
[-- PYTEST ARGS]``, on two xdist workers as ./run-tests runs it (``-- -n 0`` for a serial run).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SLOWEST = 10
RUN_TESTS_WORKERS = ("-n", "2", "--dist", "loadscope", "--no-loadscope-reorder")
"""The pytest-xdist options ./run-tests runs the suite with (pytest arguments after them win: ``-n 0``)."""
DURATION_LINE = re.compile(r"^\s*(\d+\.\d+)s (call|setup|teardown)\s+(\S+)")
RESULT_LINE = re.compile(r"^=*\s*(\d+ (passed|failed).*?) in [\d.]+s")


def run_suite(cache: Path, pytest_args: list[str]) -> tuple[float, str, list[str]]:
    """Wall seconds, pytest's result line and its slowest durations for one run of the suite."""
    environment = {**os.environ, "GENTOO_FARM_TEST_CACHE": str(cache)}
    pytest = [sys.executable, "-m", "pytest", "-q", f"--durations={SLOWEST}"]
    command = [*pytest, *RUN_TESTS_WORKERS, *pytest_args]
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    lines = process.stdout.splitlines()
    result = next((match.group(1) for line in lines if (match := RESULT_LINE.match(line))), "no result line")
    slowest = [line.strip() for line in lines if DURATION_LINE.match(line)][:SLOWEST]
    if process.returncode not in (0, 1):
        sys.exit(f"pytest exited {process.returncode}:\n{process.stdout[-3000:]}{process.stderr[-3000:]}")
    return elapsed, result, slowest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep-cache", action="store_true", help="leave the cache directory for a look")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="gentoo-farm-test-cache-", dir="/var/tmp"))
    try:
        runs = {"cold": run_suite(cache, args.pytest_args), "warm": run_suite(cache, args.pytest_args)}
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
    for name, (seconds, result, _) in runs.items():
        print(f"{name}: {seconds / 60:6.1f} min  ({result})")
    print(f"warm / cold: {runs['warm'][0] / runs['cold'][0]:.2f}")
    for name, (_, _, slowest) in runs.items():
        print(f"\n{name}, slowest {SLOWEST}:")
        for line in slowest:
            print(f"  {line}")
    if args.keep_cache:
        print(f"\ncache kept in {cache}")


if __name__ == "__main__":
    main()
