"""Kernel from source: a cold build vs a rebuild after a config change, with ccache, side by side.

Both go through ``farm-worker kernel`` with the project's default config and Debian's Linux 6.1
source served by a local distfile mirror. The cold build starts with an empty ccache; the rebuild
changes CONFIG_LOCALVERSION (what a user pushing a new config typically does) and starts, like every
farm build, from a fresh build directory, so whatever it saves comes from ccache. The source tarball
is downloaded and unpacked before the cold build is timed (both builds reuse it, as a worker does).

Run, from the repository root: ``nice .venv/bin/python bench/bench_kernel.py`` (measured: 17 minutes on
2 shared cores).
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gentoo_farm.stageprotocol import RESULT_MARKER
from gentoo_farm.workers.toolkit.distfiles import DistEntry, fetch_distfile
from gentoo_farm.workers.toolkit.kernel import unpack_source
from tests import debian
from tests.world.repository import manifest_line
from tests.world.server import WorldServer

FARM_WORKER = str(Path(sys.executable).parent / "farm-worker")
CONFIG = Path(__file__).resolve().parent.parent / "gentoo_farm" / "defaults" / "kernel-config" / "config"


def build(server: WorldServer, source: Path, config: Path, work: Path, ccache: Path, output: Path) -> dict:
    started = time.perf_counter()
    process = subprocess.run(
        [
            FARM_WORKER,
            "kernel",
            "--mirror",
            server.url,
            "--source-dist",
            manifest_line(source),
            "--config",
            str(config),
            "--output",
            str(output),
            "--work-dir",
            str(work),
            "--ccache-dir",
            str(ccache),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"kernel build failed:\n{process.stdout[-3000:]}{process.stderr}")
    values = {"seconds": elapsed}
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            values.update(json.loads(line[len(RESULT_MARKER) :]))
    return values


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-kernel-", dir="/var/tmp") as scratch_name:
        scratch = Path(scratch_name)
        mirror = scratch / "mirror"
        source = debian.kernel_source_tarball(mirror / "distfiles")
        work, ccache = scratch / "work", scratch / "ccache"
        with WorldServer(mirror) as server:
            # Download and unpack once, outside the timings, with the stage's own functions.
            entry = DistEntry.parse(manifest_line(source))
            tarball = fetch_distfile([server.url], entry, work / "distfiles", "kernel source")
            unpack_source(tarball, work / "sources")
            cold = build(server, source, CONFIG, work, ccache, scratch / "cold.tar.zst")
            print(
                f"cold build (empty ccache):      {cold['seconds']:7.1f} s  kernel {cold['kernel_release']}"
            )
            changed = scratch / "config-changed"
            changed.write_text(
                "".join(
                    'CONFIG_LOCALVERSION="-farm-bench"\n' if line.startswith("CONFIG_LOCALVERSION=") else line
                    for line in CONFIG.read_text().splitlines(keepends=True)
                )
            )
            rebuild = build(server, source, changed, work, ccache, scratch / "rebuild.tar.zst")
            print(
                f"config change rebuild (ccache): {rebuild['seconds']:7.1f} s  "
                f"kernel {rebuild['kernel_release']}"
                f"  ({rebuild['kernel_ccache_hits']} hits, {rebuild['kernel_ccache_misses']} misses)"
            )
            print(f"ratio cold / rebuild: {cold['seconds'] / rebuild['seconds']:.1f}x")


if __name__ == "__main__":
    main()
