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
from buildbot.plugins import schedulers, steps
from buildbot.process.factory import BuildFactory
from buildbot.process.results import SUCCESS
from buildbot.test.util.integration import RunMasterBase

from gentoo_farm.workers.local import PROCESS_RECORD, LocalLatentWorker, _start_time, isolated, reap_leftover
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
        farm, home = directory / "farm", directory / "home"
        secret_files = [
            _write(farm / "secrets" / "htpasswd", "admin:SECRET-htpasswd\n"),
            _write(farm / "store" / ".farm" / "upload-secret", "SECRET-upload\n"),
            _write(home / ".aws" / "credentials", "aws_secret_access_key = SECRET-aws-file\n"),
            _write(home / ".config" / "openstack" / "clouds.yaml", "password: SECRET-clouds\n"),
            _write(directory / "elsewhere" / "clouds.yaml", "password: SECRET-named-clouds\n"),
        ]
        visible = _write(farm / "visible.txt", "VISIBLE-TEXT\n")
        self._environment(
            HOME=str(home),
            AWS_SECRET_ACCESS_KEY="SECRET-aws-environment",
            OS_CLIENT_CONFIG_FILE=str(directory / "elsewhere" / "clouds.yaml"),
        )
        # Everything a build could try: its environment, each file, and every process's environment.
        probe = (
            "env; for f; do echo \"== $f\"; cat \"$f\"; done; cat /proc/[0-9]*/environ | tr '\\0' '\\n'; true"
        )
        port = free_port()
        await self.setup_master(
            {
                "workers": [
                    LocalLatentWorker(
                        "local-1",
                        basedir=farm / "workers" / "local-1",
                        master_address=f"127.0.0.1:{port}",
                        hidden_paths=[farm / "secrets", farm / "store"],
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
                                    command=["sh", "-c", probe, "probe", *map(str, [*secret_files, visible])],
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
        seen = "".join(log["contents"]["content"] for log in probe_step["logs"])
        self.assertIn("VISIBLE-TEXT", seen)  # the probe did read files
        self.assertIn(f"HOME={farm / 'workers' / 'local-1'}", seen)
        self.assertNotIn("SECRET-", seen)
        for path in secret_files:
            self.assertIn("SECRET-", path.read_text(), "hidden from the worker only")


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
