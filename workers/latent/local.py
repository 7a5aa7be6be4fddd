"""Local latent workers: a real buildbot-worker process per start, in a fresh directory.

The embedded default, for a laptop or a single build host. Each start gets a new random
password and an empty directory, so no state leaks from one build into the next, just as
with an ephemeral cloud instance.

A build runs whatever its packages' build systems do, so the worker is walled off from the master:
a clean environment (none of the master's variables, AWS keys included), its own PID namespace (the
master's processes, their environments and memory are out of sight) and its own mount namespace, in
which the farm's secrets, the store's private files and the user's cloud credentials are covered by
empty mounts. A root master runs the worker as root of a user namespace whose ids are an unprivileged
host range (:mod:`gentoo_farm.workers.latent.userns`): the covering mounts are locked to it, and root's
files, the host's devices and loop devices are out of its reach.

``basedir`` (the master's) keeps the worker's log and process record; the worker itself lives in
``basedir/worker``, which belongs to the build's ids.
"""

import contextlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildbot import config
from buildbot.worker.latent import AbstractLatentWorker
from twisted.internet import threads
from twisted.python import log

from gentoo_farm.config import host_port
from gentoo_farm.workers.latent.instance_password import InstancePasswordMixin
from gentoo_farm.workers.latent.userns import ID_COUNT

# The directory the buildbot-worker lives in, inside the master's instance directory.
WORKER_DIR = "worker"

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


def passage_lines(paths: Sequence[Path]) -> list[str]:
    """Shell lines that let any user reach ``paths``: each directory on the way that others may not
    search (a home at 0700, say) is covered by an empty tmpfs they may search, holding only the way
    on, bind-mounted from the directory itself; everything else in it stays out of sight."""
    ways_on: dict[Path, set[str]] = {}
    for path in paths:
        path = path.absolute()
        for directory in reversed(path.parents):
            if not directory.stat().st_mode & stat.S_IXOTH:
                ways_on.setdefault(directory, set()).add(path.relative_to(directory).parts[0])
    lines = []
    for directory in sorted(ways_on, key=lambda path: len(path.parts)):
        quoted = shlex.quote(str(directory))
        lines += [
            'stash="$(mktemp -d)"',
            f'mount --bind {quoted} "$stash"',
            f"mount -t tmpfs -o mode=0711,size=16k gentoo-farm-passage {quoted}",
        ]
        for name in sorted(ways_on[directory]):
            way, stashed = shlex.quote(str(directory / name)), shlex.quote(name)
            if (directory / name).is_symlink():
                lines.append(f"ln -s {shlex.quote(os.readlink(directory / name))} {way}")
                continue
            make = "mkdir" if (directory / name).is_dir() else "touch"
            lines += [f"{make} {way}", f'mount --bind "$stash"/{stashed} {way}']
        lines += ['umount "$stash"', 'rmdir "$stash"']
    return lines


def hiding_script(hidden: Sequence[Path], command: Sequence[str], passages: Sequence[Path] = ()) -> str:
    """The shell script that covers ``hidden`` in the new mount namespace, then becomes ``command``.

    ``passages`` (see :func:`passage_lines`): what the command must reach, for a build whose ids are
    not the master's. ``set -e``: a path that cannot be covered stops the worker before it connects,
    so a build never runs with a secret in sight.
    """
    lines = ["set -e", *passage_lines(passages)]
    for path in hidden:
        # Tested in the namespace: a path in a directory the passages replaced is gone from sight already.
        quoted = shlex.quote(str(path))
        lines.append(
            f"if [ -d {quoted} ]; then mount -t tmpfs -o mode=0700,size=16k gentoo-farm-hidden {quoted}; "
            f"elif [ -e {quoted} ]; then mount --bind /dev/null {quoted}; fi"
        )
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines)


def as_build_root(build_ids: int, command: Sequence[str]) -> list[str]:
    """``command`` as root of a user namespace mapped to the host's ids from ``build_ids`` on."""
    return [
        sys.executable,
        "-m",
        "gentoo_farm.workers.latent.userns",
        "--ids",
        str(build_ids),
        "--",
        *command,
    ]


def isolated(
    hidden: Sequence[Path],
    command: Sequence[str],
    build_ids: int | None = None,
    passages: Sequence[Path] = (),
) -> list[str]:
    """``command`` in new PID and mount namespaces with ``hidden`` covered.

    With ``build_ids`` (a root master) the command runs as root of a user namespace of those ids,
    entered after the covering mounts are made so that they are locked to it; it reaches
    ``passages`` (:func:`passage_lines`). A master that is not
    root gets a user namespace mapping it to itself, which the namespaces need. The forked namespace
    init dies with ``unshare`` (``--kill-child``), and the kernel ends every process of a PID
    namespace when its init exits, so no build outlives the worker.
    """
    user = [] if os.geteuid() == 0 else ["--user", "--map-current-user"]
    if build_ids is not None:
        command = as_build_root(build_ids, command)
    return [
        "unshare", *user, "--mount", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM",
        "--", "sh", "-c", hiding_script(hidden, command, passages if build_ids is not None else ()),
    ]  # fmt: skip


def hand_over(path: Path, owner: int) -> None:
    """Make ``path`` and everything below it belong to host uid and gid ``owner`` (links not followed)."""
    os.lchown(path, owner, owner)
    for directory, names, files in os.walk(path):
        for name in names + files:
            os.lchown(os.path.join(directory, name), owner, owner)


def git_safe_directories(home: Path, repositories: Sequence[str]) -> None:
    """Let git read the master's recipe repositories: they belong to the master's user, not the build's."""
    lines = [f"\tdirectory = {repository}\n" for repository in repositories]
    (home / ".gitconfig").write_text("[safe]\n" + "".join(lines))


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


@dataclass(frozen=True)
class LocalWorkerSettings:
    """Where a local worker runs and what its builds may see.

    ``basedir``: the worker's instance directory, made anew for each start. ``master_address`` is
    ``HOST:PORT`` of the master's worker (PB) port. ``hidden_paths``: what of the master builds must not
    see (the farm's secrets, the store's private files); the user's cloud credentials
    (:func:`cloud_credential_paths`) are always hidden. ``build_ids``: the first of the 65,536 host ids
    builds run as (a root master only; ``None``: as the master's user). ``cache_dir``: kept across builds
    (ccache, kernel sources), the ``cache_dir`` property. ``shared_repositories``: the master's local git
    repositories builds check out.
    """

    basedir: Path
    master_address: str
    hidden_paths: Sequence[Path] = ()
    build_ids: int | None = None
    cache_dir: Path | None = None
    shared_repositories: Sequence[str] = ()

    def problems(self) -> list[str]:
        """What is wrong with these settings, one message naming the key per problem."""
        found = []
        try:
            host_port(self.master_address)
        except ValueError as error:
            found.append(f"master_address {self.master_address!r}: {error}")
        if self.build_ids is not None and os.geteuid() != 0:
            found.append("build_ids needs a root master (it writes the id maps)")
        if self.build_ids is not None and not 0 < self.build_ids <= 2**32 - 1 - ID_COUNT:
            found.append(f"build_ids {self.build_ids} leaves no room for {ID_COUNT} ids")
        return found


class LocalLatentWorker(InstancePasswordMixin, AbstractLatentWorker):
    """A worker the master starts on its own machine, kept from what ``settings`` hides."""

    def checkConfig(
        self,
        name: str,
        *,
        settings: LocalWorkerSettings,
        **kwargs: Any,  # Buildbot's own worker options (untyped)
    ) -> None:
        for problem in settings.problems():
            config.error(f"local worker {name!r}: {problem}")
        super().checkConfig(name, None, **kwargs)

    async def reconfigService(
        self,
        name: str,
        *,
        settings: LocalWorkerSettings,
        **kwargs: Any,  # Buildbot's own worker options (untyped)
    ) -> None:
        # Not "worker_basedir": AbstractWorker keeps the base directory the worker reports there.
        self.instance_dir = Path(settings.basedir)
        self.settings = settings
        if settings.cache_dir is not None:
            kwargs["properties"] = {**(kwargs.get("properties") or {}), "cache_dir": str(settings.cache_dir)}
        if not hasattr(self, "process"):
            # The first configuration of this master: a worker its crashed predecessor started goes.
            self.process: subprocess.Popen[bytes] | None = None
            await threads.deferToThread(reap_leftover, self.instance_dir)
        await super().reconfigService(name, None, **kwargs)

    async def start_instance(self, build: object) -> bool:
        password = self.instance_password.issue()
        self.process = await threads.deferToThread(self._create_and_start, password)
        return True

    def _prepare_for_builds(self, worker_dir: Path) -> list[Path]:
        """Give the build's ids what the worker writes (its directory, the cache); what it must reach."""
        git_safe_directories(worker_dir, self.settings.shared_repositories)
        written = [worker_dir]
        if self.settings.cache_dir is not None:
            self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
            written.append(self.settings.cache_dir)
        if self.settings.build_ids is None:
            return []
        for path in written:
            if path.stat().st_uid != self.settings.build_ids:
                hand_over(path, self.settings.build_ids)
        # The venv, the interpreter and standard library it was made from, and this package's code.
        programs = [_venv_bin().parent, Path(sys.base_prefix).resolve(), Path(__file__).resolve().parents[1]]
        return [*written, *programs]

    def _create_and_start(self, password: str) -> subprocess.Popen[bytes]:
        reap_leftover(self.instance_dir)
        shutil.rmtree(self.instance_dir, ignore_errors=True)
        self.instance_dir.mkdir(parents=True)
        worker_dir = self.instance_dir / WORKER_DIR
        subprocess.run(
            [
                str(_venv_bin() / "buildbot-worker"),
                "create-worker",
                "--umask=0o022",
                str(worker_dir),
                self.settings.master_address,
                self.workername,
                password,
            ],
            check=True,
            capture_output=True,
        )
        # The password is in buildbot.tac; it is good for this start only, but keep it private.
        (worker_dir / "buildbot.tac").chmod(0o600)
        passages = self._prepare_for_builds(worker_dir)
        command = [str(_venv_bin() / "buildbot-worker"), "start", "--nodaemon", str(worker_dir)]
        hidden = [*self.settings.hidden_paths, *cloud_credential_paths()]
        # The log and the process record stay the master's: the worker cannot point them elsewhere.
        with (self.instance_dir / "worker.log").open("ab") as log_file:
            process = subprocess.Popen(
                isolated(hidden, command, self.settings.build_ids, passages),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=worker_environment(worker_dir),
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
