"""Local latent workers: a real buildbot-worker process per start, in a fresh directory.

The embedded default, for a laptop or a single build host. Each start gets a new random
password and an empty directory, so no state leaks from one build into the next, just as
with an ephemeral cloud instance.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from buildbot import config
from buildbot.worker.latent import AbstractLatentWorker
from twisted.internet import threads
from twisted.python import log

from gentoo_farm.config import host_port
from gentoo_farm.workers.instance_password import InstancePasswordMixin

STOP_TIMEOUT = 30


def _venv_bin() -> Path:
    return Path(sys.executable).parent


class LocalLatentWorker(InstancePasswordMixin, AbstractLatentWorker):
    """``master_address`` is ``HOST:PORT`` of the master's worker (PB) port."""

    def checkConfig(self, name: str, *, basedir: Path, master_address: str, **kwargs: object) -> None:
        try:
            host_port(master_address)
        except ValueError as error:
            config.error(f"local worker {name!r}: master_address {master_address!r}: {error}")
        super().checkConfig(name, None, **kwargs)

    def reconfigService(self, name: str, *, basedir: Path, master_address: str, **kwargs: object):
        # Not "worker_basedir": AbstractWorker keeps the base directory the worker reports there.
        self.instance_dir = Path(basedir)
        self.master_address = master_address
        self.process: subprocess.Popen[bytes] | None = None
        return super().reconfigService(name, None, **kwargs)

    async def start_instance(self, build: object) -> bool:
        password = self.instance_password.issue()
        self.process = await threads.deferToThread(self._create_and_start, password)
        return True

    def _create_and_start(self, password: str) -> subprocess.Popen[bytes]:
        shutil.rmtree(self.instance_dir, ignore_errors=True)
        self.instance_dir.mkdir(parents=True)
        subprocess.run(
            [
                str(_venv_bin() / "buildbot-worker"),
                "create-worker",
                "--umask=0o022",
                str(self.instance_dir),
                self.master_address,
                self.workername,
                password,
            ],
            check=True,
            capture_output=True,
        )
        # The password is in buildbot.tac; it is good for this start only, but keep it private.
        (self.instance_dir / "buildbot.tac").chmod(0o600)
        environment = dict(os.environ, PATH=f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}")
        with (self.instance_dir / "worker.log").open("ab") as log_file:
            return subprocess.Popen(
                [str(_venv_bin() / "buildbot-worker"), "start", "--nodaemon", str(self.instance_dir)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )

    def check_instance(self) -> tuple[bool, str]:
        if self.process is not None and self.process.poll() is not None:
            return False, (
                f"worker process exited with status {self.process.returncode}; "
                f"see {self.instance_dir / 'worker.log'}"
            )
        return True, ""

    async def stop_instance(self, fast: bool = False) -> bool:
        self.instance_password.revoke()
        process, self.process = self.process, None
        if process is not None:
            await threads.deferToThread(self._stop, process)
        return True

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.msg(f"{self.workername}: worker did not stop in {STOP_TIMEOUT} s, killing it")
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.instance_dir, ignore_errors=True)
