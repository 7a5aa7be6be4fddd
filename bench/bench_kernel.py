"""Kernel from source: a cold build vs rebuilds after config changes, side by side.

All go through ``farm-worker kernel`` with the project's default config and Debian's Linux 6.1 source
served by a local distfile mirror. The cold build starts with an empty ccache and no build tree. Then,
as a worker does after a push: CONFIG_LOCALVERSION changed (what a user pushing a new config typically
does) and one driver enabled (``CONFIG_E1000=y``), each in the build tree the work directory kept; and
the CONFIG_LOCALVERSION change again from a fresh tree with the warm ccache (what a rebuild cost before
trees were kept, and what a worker without the tree pays). The source tarball is downloaded and
unpacked before the cold build is timed (all builds reuse it, as a worker does). Goal: a real config
change (the driver) costs at most 0.15 of the cold build.

Run, from the repository root: ``nice .venv/bin/python bench/bench_kernel.py`` (about 20 minutes on
2 shared cores).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gentoo_farm.gentoo_manifest import DistEntry
from gentoo_farm.stageprotocol import RESULT_MARKER
from gentoo_farm.workers.toolkit.distfiles import fetch_distfile
from gentoo_farm.workers.toolkit.stages.kernel import BUILD_TREES, unpack_source
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
                f"{'cold build (empty ccache, fresh tree):':<46} {cold['seconds']:7.1f} s  "
                f"kernel {cold['kernel_release']}"
            )
            local_version = with_line(
                scratch / "config-version", "CONFIG_LOCALVERSION=", 'CONFIG_LOCALVERSION="-bench"\n'
            )
            driver = with_line(scratch / "config-driver", "# CONFIG_E1000 is not set", "CONFIG_E1000=y\n")
            rebuilds = []
            for what, config in (
                ("CONFIG_LOCALVERSION, kept tree", local_version),
                ("CONFIG_E1000=y, kept tree", driver),
            ):
                rebuilds.append(
                    (what, build(server, source, config, work, ccache, scratch / "rebuild.tar.zst"))
                )
            shutil.rmtree(work / BUILD_TREES)
            fresh = build(server, source, local_version, work, ccache, scratch / "rebuild.tar.zst")
            rebuilds.append(("CONFIG_LOCALVERSION, fresh tree, warm ccache", fresh))
            for what, rebuild in rebuilds:
                print(
                    f"{what + ':':<46} {rebuild['seconds']:7.1f} s  ({rebuild['kernel_build_tree']} tree, "
                    f"{rebuild['kernel_ccache_hits']} ccache hits, "
                    f"{rebuild['kernel_ccache_misses']} misses)  "
                    f"ratio to cold {rebuild['seconds'] / cold['seconds']:.3f}"
                )


def with_line(path: Path, prefix: str, replacement: str) -> Path:
    """The default config written to ``path`` with its line starting with ``prefix`` replaced."""
    lines = CONFIG.read_text().splitlines(keepends=True)
    changed = [replacement if line.startswith(prefix) else line for line in lines]
    if changed == lines:
        sys.exit(f"{CONFIG}: no line starts with {prefix!r}")
    path.write_text("".join(changed))
    return path


if __name__ == "__main__":
    main()
