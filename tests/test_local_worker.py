"""Local workers through a real master: what a build on one can see of the master, and what is left
of a worker whose master crashed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from buildbot.config import BuilderConfig
from buildbot.plugins import schedulers, steps, util
from buildbot.process.factory import BuildFactory
from buildbot.process.results import SUCCESS
from buildbot.test.util.integration import RunMasterBase

from gentoo_farm.workers.latent.local import (
    PROCESS_RECORD,
    LocalLatentWorker,
    LocalWorkerSettings,
    _start_time,
    isolated,
    reap_leftover,
)
from tests.farmtest import free_port


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class LocalWorkerIsolation(RunMasterBase):
    timeout = 120

    def _environment(self, **values: str) -> None:
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update(values)

    async def test_a_build_sees_none_of_the_masters_secrets(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="farm-local-worker-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        # mkdtemp's 0700, as a home holding the farm often is: the worker gets a passage to its directory
        # (nothing else of this one), and the credentials beside the farm must stay hidden through it.
        farm, home = directory / "farm", directory / "home"
        secret_files = [
            _write(farm / "secrets" / "htpasswd", "admin:SECRET-htpasswd\n"),
            _write(farm / "store" / ".farm" / "upload-secret", "SECRET-upload\n"),
            _write(home / ".aws" / "credentials", "aws_secret_access_key = SECRET-aws-file\n"),
            _write(home / ".config" / "openstack" / "clouds.yaml", "password: SECRET-clouds\n"),
            _write(directory / "elsewhere" / "clouds.yaml", "password: SECRET-named-clouds\n"),
        ]
        for path in secret_files:
            path.chmod(0o600)
        visible = _write(farm / "visible.txt", "VISIBLE-TEXT\n")
        self._environment(
            HOME=str(home),
            AWS_SECRET_ACCESS_KEY="SECRET-aws-environment",
            OS_CLIENT_CONFIG_FILE=str(directory / "elsewhere" / "clouds.yaml"),
        )
        cache = farm / "cache" / "local-1"
        disks = [
            str(path) for pattern in ("sd?", "vd?", "xvd?", "nvme?n?") for path in Path("/dev").glob(pattern)
        ]
        port = free_port()
        await self.setup_master(
            {
                "workers": [
                    LocalLatentWorker(
                        "local-1",
                        settings=LocalWorkerSettings(
                            basedir=farm / "workers" / "local-1",
                            master_address=f"127.0.0.1:{port}",
                            hidden_paths=[farm / "secrets", farm / "store"],
                            build_ids=BUILD_IDS,
                            cache_dir=cache,
                        ),
                        build_wait_timeout=0,
                    )
                ],
                "protocols": {"pb": {"port": f"tcp:{port}:interface=127.0.0.1"}},
                "builders": [
                    BuilderConfig(
                        name="probe",
                        workernames=["local-1"],
                        factory=BuildFactory(
                            [
                                steps.ShellCommand(
                                    name="probe",
                                    command=["sh", "-c", PROBE, "probe", *map(str, [*secret_files, visible])],
                                    env={"DISKS": " ".join(disks), "CACHE": util.Property("cache_dir")},
                                )
                            ]
                        ),
                    )
                ],
                "schedulers": [schedulers.ForceScheduler(name="force", builderNames=["probe"])],
            },
            startWorker=False,
            basedir=str(directory / "master"),
        )

        build = await self.doForceBuild(wantSteps=True, wantLogs=True)

        self.assertEqual(build["results"], SUCCESS, build["state_string"])
        (probe_step,) = [step for step in build["steps"] if step["name"] == "probe"]
        # What the probe printed: the log's output lines, not its header (which quotes the probe).
        content = "".join(log["contents"]["content"] for log in probe_step["logs"])
        seen = "\n".join(line[1:] for line in content.splitlines() if line[:1] in ("o", "e"))
        self.assertIn("VISIBLE-TEXT", seen)  # the probe did read files
        self.assertIn(f"HOME={farm / 'workers' / 'local-1' / 'worker'}", seen)
        self.assertIn("build uid 0", seen)  # root of its own namespace...
        self.assertIn("tried: umount", seen)
        self.assertNotIn("ESCAPED", seen)
        self.assertNotIn("SECRET-", seen)
        made = cache / "made-by-build"
        # ...and an unprivileged uid on the host.
        self.assertEqual((made.stat().st_uid, made.stat().st_gid), (BUILD_IDS, BUILD_IDS))
        for path in secret_files:
            self.assertIn("SECRET-", path.read_text(), "hidden from the worker only")


BUILD_IDS = 1879048192 + 7 * 65536

# Everything a build could try: its environment, each file (as it is, through /proc/1/root and after
# undoing every mount it can see, in its namespace or a new one), every process's environment, and
# the host's disks and loop devices.
PROBE = r"""
env
echo "build uid $(id -u)"
touch "$CACHE/made-by-build"
for f; do echo "== $f"; cat "$f" "/proc/1/root$f"; done
echo "tried: umount"
UNDO='
for m in $(awk "{print \$2}" /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null && echo "ESCAPED: umount $m"
done
for f; do cat "$f"; done'
sh -c "$UNDO" sh "$@"
unshare --mount sh -c "$UNDO" sh "$@"
mkdir -p /tmp/probe-mnt
mount --bind / /tmp/probe-mnt 2>/dev/null && echo "ESCAPED: mount --bind /"
for d in $DISKS; do
    head -c 512 "$d" >/dev/null 2>&1 && echo "ESCAPED: read $d"
    mount -o ro "$d" /tmp/probe-mnt 2>/dev/null && echo "ESCAPED: mount $d"
done
losetup -f --show "$CACHE/made-by-build" 2>/dev/null && echo "ESCAPED: a loop device"
cat /proc/[0-9]*/environ | tr '\0' '\n'
true
"""


LEFT_RUNNING = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
subprocess.Popen(["sleep", "600"], process_group=0)
print("started", flush=True)
time.sleep(600)
"""


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [descendant for child in map(int, children) for descendant in [child, *_descendants(child)]]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def test_a_worker_a_crashed_master_left_running_goes_with_its_commands(tmp_path: Path) -> None:
    """What LocalLatentWorker does first when a master starts, and before each worker start."""
    # What the crashed master left: a worker (it stops on SIGTERM, as buildbot-worker does) that
    # runs a command in a process group of its own, as buildbot-worker runs commands.
    worker = subprocess.Popen(
        isolated([], [sys.executable, "-c", LEFT_RUNNING]), stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert worker.stdout.readline() == b"started\n"
        (command_pid,) = _descendants(worker.pid)[1:]
        (tmp_path / PROCESS_RECORD).write_text(f"{worker.pid} {_start_time(worker.pid)}\n")

        reap_leftover(tmp_path)

        assert worker.wait(timeout=10) == 0
        assert _start_time(command_pid) is None, "the worker's command outlived it"
    finally:
        _kill_group(worker.pid)
        worker.wait()
