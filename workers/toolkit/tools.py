"""Running the system tools a stage drives (tar, make, mkfs, qemu...) with failures a user can read."""

import collections
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress

# How much of a failed tool's output the error message carries: enough for a compiler error
# with its context, short enough for a status line to stay readable in the log.
ERROR_TAIL_LINES = 25


class ToolError(StageError):
    """A tool exited non-zero; ``output`` keeps what it printed (the last lines, for a streamed tool)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def run_tool(
    command: Sequence[str | Path],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stream: bool = False,
) -> str:
    """Run ``command``; return its output, or raise :class:`ToolError` naming ``what`` failed and why.

    With ``stream`` every output line is printed as it comes (a long build's log streams into the
    step); otherwise the output is captured and only shown when the tool fails.
    """
    argv = [str(part) for part in command]
    full_env = {**os.environ, **env} if env is not None else None
    try:
        process = start_tool(argv, cwd=cwd, env=full_env)
    except FileNotFoundError as error:
        raise StageError(f"{what}: {argv[0]} is not installed on this worker") from error
    assert process.stdout is not None
    kept: collections.deque[str] | list[str] = (
        collections.deque(maxlen=ERROR_TAIL_LINES * 40) if stream else []
    )
    for line in process.stdout:
        if stream:
            progress(line.rstrip("\n"))
        kept.append(line)
    returncode = process.wait()
    output = "".join(kept)
    if returncode != 0:
        raise ToolError(f"{what} failed ({argv[0]} exited with status {returncode}):\n{tail(output)}", output)
    return output


def start_tool(
    argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``argv`` with no input, its output and errors one stream of text lines (``stdout``).

    ``env`` is the whole environment (None: the worker's own).
    """
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )


def run_echoed(argv: Sequence[str], *, env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
    """Run ``argv`` in the environment ``env``, echoing its output into the step's log as it comes and
    handing each line to ``on_line``; its exit status."""
    with start_tool(argv, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            on_line(line)
        return process.wait()


def tail(output: str, lines: int = ERROR_TAIL_LINES) -> str:
    return "\n".join(output.rstrip("\n").splitlines()[-lines:])


def require_directory(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise StageError(f"{path}: {what} does not exist or is not a directory")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise StageError(f"{path}: {what} does not exist or is not a file")
    return path


def ccache_counts(environment: Mapping[str, str]) -> tuple[int, int]:
    """Hits and misses of the ccache ``environment`` names (its ``CCACHE_DIR``) since its last
    ``ccache --zero-stats``."""
    stats = run_tool(["ccache", "--print-stats"], what="ccache --print-stats", env=environment)
    counters = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    hits = int(counters.get("direct_cache_hit", 0)) + int(counters.get("preprocessed_cache_hit", 0))
    return hits, int(counters.get("cache_miss", 0))
