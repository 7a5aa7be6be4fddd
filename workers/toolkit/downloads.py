"""Downloads over HTTP for the stages: a file, resumed (HTTP Range) and retried after an interruption, with
progress lines; a small text."""

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

from gentoo_farm.workers.toolkit import StageError, progress

DOWNLOAD_ATTEMPTS = 3
PROGRESS_INTERVAL = 2.0


def download(url: str, destination: Path, *, timeout: float) -> None:
    """Download ``url`` to ``destination``, resuming a ``.partial`` left by an earlier attempt."""
    partial = destination.with_name(destination.name + ".partial")
    last_problem = ""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        offset = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                _receive(response, partial, offset, destination.name)
            partial.rename(destination)
            return
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:
                # The server has nothing past what we already hold: the earlier attempt was complete.
                partial.rename(destination)
                return
            last_problem = f"HTTP {error.code} {error.reason}"
            if error.code < 500:
                break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            last_problem = str(getattr(error, "reason", error)) or type(error).__name__
        if attempt < DOWNLOAD_ATTEMPTS:
            progress(f"{destination.name}: {last_problem}; retrying ({attempt + 1} of {DOWNLOAD_ATTEMPTS})")
            time.sleep(attempt)
    raise StageError(f"cannot download {url}: {last_problem}")


def _receive(response: http.client.HTTPResponse, partial: Path, offset: int, name: str) -> None:
    if offset and response.status != 206:
        progress(f"{name}: the mirror does not resume downloads; starting over")
        offset = 0
    elif offset:
        progress(f"{name}: resuming at byte {offset}")
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    received = offset
    last_report = time.monotonic()
    with partial.open("ab" if offset else "wb") as output:
        while chunk := response.read(256 * 1024):
            output.write(chunk)
            received += len(chunk)
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL:
                last_report = now
                progress(_progress_line(name, received, total))
    if total is not None and received < total:
        raise http.client.IncompleteRead(b"", total - received)
    progress(_progress_line(name, received, total))


def _progress_line(name: str, received: int, total: int | None) -> str:
    mib = received / 2**20
    if not total:
        return f"{name}: {mib:.1f} MiB"
    return f"{name}: {100 * received // total}% ({mib:.1f} of {total / 2**20:.1f} MiB)"


def fetch_text(url: str, *, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        raise StageError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise StageError(f"cannot download {url}: {getattr(error, 'reason', error)}") from error
