"""Write-once under a race: of several writers creating one object at the same moment exactly one lands.

Both ways an object is created once are raced on both backends: the worker's PUT through a signed upload
URL (the store server's ``put_new``, S3's conditional presigned PUT) and the master's
``put_bytes(if_absent=True)`` (the store lock). Every round, the stored bytes must be the winner's, whole.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gentoo_farm.store import ArtifactStore, PreconditionFailed
from gentoo_farm.workers.toolkit import StageError
from gentoo_farm.workers.toolkit.stages.upload import put_file

pytest_plugins = ["tests.services.store"]

ROUNDS = 25
WRITERS = 4
# Large enough that one writer is still writing its copy while the others start theirs.
BODY_SIZE = 256 * 1024


def _race(attempts: list[Callable[[], None]]) -> list[BaseException | None]:
    """Run the attempts at once, released together; returns what each raised, or None where it landed."""
    start = threading.Barrier(len(attempts))

    def attempt(index: int) -> BaseException | None:
        start.wait(timeout=30)
        try:
            attempts[index]()
        except (StageError, PreconditionFailed) as error:
            return error
        return None

    with ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(attempt, range(len(attempts))))


def _bodies() -> list[bytes]:
    return [os.urandom(BODY_SIZE) for _ in range(WRITERS)]


def test_of_racing_puts_through_one_upload_url_exactly_one_lands(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    for round_number in range(ROUNDS):
        key = f"images/race-{round_number}/disk.qcow2"
        url = any_store.upload_url(key, 300, size=BODY_SIZE)
        bodies = _bodies()
        files = []
        for writer, body in enumerate(bodies):
            files.append(tmp_path / f"round-{round_number}-writer-{writer}")
            files[-1].write_bytes(body)

        outcomes = _race(
            [lambda path=path, url=url: put_file(path, url, attempts=1, timeout=60) for path in files]
        )

        winners = [writer for writer, outcome in enumerate(outcomes) if outcome is None]
        assert len(winners) == 1, f"round {round_number}: {len(winners)} PUTs landed: {outcomes}"
        for outcome in outcomes:
            if outcome is not None:
                assert "HTTP 412" in str(outcome) and "an upload URL writes once" in str(outcome), outcome
        assert any_store.get_bytes(key) == bodies[winners[0]], f"round {round_number}"


def test_of_racing_creates_of_one_key_exactly_one_lands(any_store: ArtifactStore) -> None:
    for round_number in range(ROUNDS):
        key = f"locks/race-{round_number}"
        bodies = _bodies()

        outcomes = _race(
            [lambda body=body, key=key: any_store.put_bytes(key, body, if_absent=True) for body in bodies]
        )

        winners = [writer for writer, outcome in enumerate(outcomes) if outcome is None]
        assert len(winners) == 1, f"round {round_number}: {len(winners)} creates landed: {outcomes}"
        assert sum(isinstance(outcome, PreconditionFailed) for outcome in outcomes) == WRITERS - 1
        assert any_store.get_bytes(key) == bodies[winners[0]], f"round {round_number}"


def test_a_put_through_a_used_url_reads_the_refusal_whatever_its_size(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    """The loser that comes after the winner landed: refused from its headers alone while its body, far
    larger than what the connection buffers, is still being sent."""
    size = 4 * 1024 * 1024
    url = any_store.upload_url("images/late/disk.qcow2", 300, size=size)
    winner, loser = tmp_path / "winner", tmp_path / "loser"
    winner.write_bytes(os.urandom(size))
    loser.write_bytes(os.urandom(size))
    put_file(winner, url, attempts=1, timeout=60)

    with pytest.raises(StageError, match=r"HTTP 412 the object exists already; an upload URL writes once"):
        put_file(loser, url, attempts=1, timeout=60)
    assert any_store.get_bytes("images/late/disk.qcow2") == winner.read_bytes()
