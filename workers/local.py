"""Local latent workers: a real buildbot-worker process per start, in a fresh directory.

The embedded default, for a laptop or a single build host. Each start gets a new random
password and an empty directory, so no state leaks from one build into the next, just as
with an ephemeral cloud instance.

A build runs whatever its packages' build systems do, as the master's user, so the worker is
walled off from the master: a clean environment (none of the master's variables, AWS keys
included), its own PID namespace (the master's processes, their environments and memory are out
of sight) and its own mount namespace, in which the farm's secrets, the store's private files and
the user's cloud credentials are covered by empty mounts.
"""

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from buildbot import config
from buildbot.worker.latent import AbstractLatentWorker
from twisted.internet import threads
from twisted.python import log

from gentoo_farm.config import host_port
from gentoo_farm.workers.instance_password import InstancePasswordMixin

STOP_TIMEOUT = 30
# Where a started worker's process is recorded, so a master that crashed can stop it at its next start.
PROCESS_RECORD = "worker.process"
# What the worker keeps of the master's environment: where programs are and how text is encoded.
KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")
# Variables naming credential files elsewhere: those files are hidden too.
CREDENTIAL_FILE_VARIABLES = ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "OS_CLIENT_CONFIG_FILE")


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def cloud_credential_paths() -> list[Path]:
    """Where the AWS chain and openstacksdk look for the user's credentials (clouds.yaml, ~/.aws)."""
    home = Path.home()
    paths = [home / ".aws", home / ".config" / "openstack", Path("/etc/openstack")]
    paths += [Path(os.environ[name]) for name in CREDENTIAL_FILE_VARIABLES if os.environ.get(name)]
    return paths


def worker_environment(home: Path) -> dict[str, str]:
    kept = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    path = os.pathsep.join([str(_venv_bin()), kept.get("PATH", os.defpath)])
    return {**kept, "PATH": path, "HOME": str(home)}


def hiding_script(hidden: Sequence[Path], command: Sequence[str]) -> str:
    """The shell script that covers ``hidden`` in the new mount namespace, then becomes ``command``.

    ``set -e``: a path that cannot be covered stops the worker before it connects, so a build
    never runs with a secret in sight.
    """
    lines = ["set -e"]
    for path in hidden:
        if path.is_dir():
            lines.append(f"mount -t tmpfs -o mode=0700,size=16k gentoo-farm-hidden {shlex.quote(str(path))}")
        elif path.exists():
            lines.append(f"mount --bind /dev/null {shlex.quote(str(path))}")
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines)


def isolated(hidden: Sequence[Path], command: Sequence[str]) -> list[str]:
    """``command`` in new PID and mount namespaces with ``hidden`` covered.

    As root the namespaces need no more; anyone else also gets a user namespace mapping them to
    themselves. The forked namespace init dies with ``unshare`` (``--kill-child``), and the kernel
    ends every process of a PID namespace when its init exits, so no build outlives the worker.
    """
    user = [] if os.geteuid() == 0 else ["--user", "--map-current-user"]
    return [
        "unshare", *user, "--mount", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM",
        "--", "sh", "-c", hiding_script(hidden, command),
    ]  # fmt: skip


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (with the pid, it names one process for good)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else fields[19]


def _wait_gone(pid: int, started: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _start_time(pid) == started:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def reap_leftover(instance_dir: Path) -> None:
    """Stop the worker a crashed master left running in ``instance_dir``, with every build it runs."""
    try:
        pid_text, started = (instance_dir / PROCESS_RECORD).read_text().split()
    except (FileNotFoundError, ValueError):
        return
    pid = int(pid_text)
    if _start_time(pid) != started:
        return  # gone already; the pid may name another process by now
    log.msg(f"stopping the worker a previous master left running in {instance_dir} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        if not _wait_gone(pid, started, STOP_TIMEOUT):
            os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, started, STOP_TIMEOUT)


class LocalLatentWorker(InstancePasswordMixin, AbstractLatentWorker):
    """``master_address`` is ``HOST:PORT`` of the master's worker (PB) port.

    ``hidden_paths``: what of the master builds must not see (the farm's secrets, the store's
    private files); the user's cloud credentials (:func:`cloud_credential_paths`) are always hidden.
    """

    def checkConfig(
        self,
        name: str,
        *,
        basedir: Path,
        master_address: str,
        hidden_paths: Sequence[Path] = (),
        **kwargs: object,
    ) -> None:
        try:
            host_port(master_address)
        except ValueError as error:
            config.error(f"local worker {name!r}: master_address {master_address!r}: {error}")
        super().checkConfig(name, None, **kwargs)

    async def reconfigService(
        self,
        name: str,
        *,
        basedir: Path,
        master_address: str,
        hidden_paths: Sequence[Path] = (),
        **kwargs: object,
    ) -> None:
        # Not "worker_basedir": AbstractWorker keeps the base directory the worker reports there.
        self.instance_dir = Path(basedir)
        self.master_address = master_address
        self.hidden_paths = list(hidden_paths)
        if not hasattr(self, "process"):
            # The first configuration of this master: a worker its crashed predecessor started goes.
            self.process: subprocess.Popen[bytes] | None = None
            await threads.deferToThread(reap_leftover, self.instance_dir)
        await super().reconfigService(name, None, **kwargs)

    async def start_instance(self, build: object) -> bool:
        password = self.instance_password.issue()
        self.process = await threads.deferToThread(self._create_and_start, password)
        return True

    def _create_and_start(self, password: str) -> subprocess.Popen[bytes]:
        reap_leftover(self.instance_dir)
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
        command = [str(_venv_bin() / "buildbot-worker"), "start", "--nodaemon", str(self.instance_dir)]
        with (self.instance_dir / "worker.log").open("ab") as log_file:
            process = subprocess.Popen(
                isolated([*self.hidden_paths, *cloud_credential_paths()], command),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=worker_environment(self.instance_dir),
                start_new_session=True,
            )
        (self.instance_dir / PROCESS_RECORD).write_text(f"{process.pid} {_start_time(process.pid)}\n")
        return process

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
