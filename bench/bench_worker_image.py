"""The worker image OpenStack workers boot: its size, and how long a server of it takes from create to a
connected worker (issue 25).

The image is tests/workerimage.py's (the stand-in world's stage3 with the image's and the worker's
packages, Debian's kernel, the default overlay; built into the test cache first if it is not there). The
boot is tests/test_worker_image_build.py's: a real Buildbot master whose one OpenStack pool boots
"farm-worker-latest" from a real Glance behind a real Keystone, the Compute stand-in running the server
in qemu (TCG), the production bootstrap installing the master's wheels from its store server. A forced
build of that test's small builder makes the master create the server; the bench measures from the
stand-in's server create to the master's REST API first showing the worker connected (polled every
second, so good to a second or two), then lets the build run and the server go.

It prints the qcow2's size in bytes and MiB, the boot-to-connected time and the build's result. The
machine's load (``uptime``) is printed at the start and the end: the guest runs under TCG on the same cores.

From the repository root:

    .venv/bin/python bench/bench_worker_image.py
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildbot.process.results import Results

from tests.services.glance import start_glance
from tests.services.keystone import running_keystone
from tests.services.store import LocalStoreSettings, running_store_server
from tests.test_worker_image_build import (
    BUILD_TIMEOUT,
    BUILDER,
    running_master,
    served_overlay,
    wait_for_requests,
    worker_image_cloud,
)
from tests.workerimage import worker_image

SERVER_GONE_TIMEOUT = 120


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    print(f"load at start: {uptime()}")
    started = time.monotonic()
    image = worker_image()
    taken = time.monotonic() - started
    size = image.path.stat().st_size
    print(
        f"worker image: {size} bytes ({size / 2**20:.1f} MiB) qcow2, kernel {image.kernel_release};"
        f" built into the test cache in {image.build_seconds:.0f} s, got now in {taken:.1f} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-worker-image-") as scratch_name:
        scratch = Path(scratch_name)
        with running_keystone(scratch / "keystone") as keystone:
            glance = start_glance(keystone, scratch / "glance")
            try:
                with (
                    running_store_server(scratch / "store", scratch / "store-server.log") as store_url,
                    worker_image_cloud(keystone, glance, image, scratch) as (compute, _),
                    served_overlay(scratch) as (git_port, _),
                ):
                    store = LocalStoreSettings(path=scratch / "store", public_url=store_url)
                    with running_master(scratch, compute, store, git_port) as master:
                        request = master.force(BUILDER)
                        connected_at = wait_for_requests(master, [request], BUILD_TIMEOUT)
                        (build,) = master.builds(request)
                        compute.wait_for(lambda: not compute.servers, SERVER_GONE_TIMEOUT, "the server to go")
                    (server,) = compute.deleted.values()
            finally:
                glance.stop()
    if connected_at is None:
        raise SystemExit("the worker never showed as connected")
    boot = connected_at - server.created
    print(f"boot to connected: {boot:.0f} s (server create -> the master sees the worker connected)")
    print(f"the build on it: {Results[build['results']]}")
    print(f"load at end: {uptime()}")


if __name__ == "__main__":
    main()
