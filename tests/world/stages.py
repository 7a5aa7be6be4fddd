"""Run a ``farm-worker`` stage as a subprocess, the way a Buildbot worker does, and read its report."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gentoo_farm.stageprotocol import RESULT_MARKER


@dataclass
class StageRun:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, object] = field(default_factory=dict)

    @property
    def error(self) -> str:
        """The stage's one-line error message (what the step shows as its status)."""
        for line in self.stderr.splitlines():
            if ": error: " in line:
                return line.split(": error: ", 1)[1]
        return ""


def run_stage(stage: str, *args: object, timeout: float = 600, log: Path | None = None) -> StageRun:
    # The installed entry point, exactly as a worker runs it.
    command = [str(Path(sys.executable).parent / "farm-worker"), stage, *(str(arg) for arg in args)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if log is not None:
        log.write_text(completed.stdout + completed.stderr)
    result: dict[str, object] = {}
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result |= json.loads(line[len(RESULT_MARKER) :])
    return StageRun(completed.returncode, completed.stdout, completed.stderr, result)


def push_back(pkgdir: Path, distdir: Path, binhost_dir: Path, mirror_dir: Path) -> None:
    """Copy what an emerge built and fetched onto a farm binhost and distfile mirror served from disk.

    The farm's store does this (with an index merge) in a real build; the world's tests and the
    benchmark need only its effect.
    """
    shutil.copytree(pkgdir, binhost_dir, dirs_exist_ok=True)
    mirror_dir.mkdir(parents=True, exist_ok=True)
    (mirror_dir / "layout.conf").write_text("[structure]\n0=flat\n")
    for distfile in distdir.iterdir():
        # Portage's own bookkeeping in DISTDIR is dot-files; they are not distfiles.
        if distfile.is_file() and not distfile.name.startswith("."):
            shutil.copy2(distfile, mirror_dir)
