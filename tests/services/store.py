"""Artifact stores for tests: a local store served by a real store-server process, and S3 on moto.

``any_store`` is parametrized over both backends, so a test written once proves both keep the same contract.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from gentoo_farm.checksums import file_sha512
from gentoo_farm.store import ArtifactStore, open_store
from gentoo_farm.store.sets import ExpectedFile, PublishedSet, finalize_set, new_set_id, object_key
from tests.services.s3 import S3StoreSettings, s3_server, s3_settings  # noqa: F401  (fixtures)

SERVER_START_TIMEOUT = 20


@dataclass
class LocalStoreSettings:
    path: Path
    public_url: str
    type: Literal["local", "s3"] = "local"
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    region: str = ""
    part_size_mb: int = 5
    concurrency: int = 2
    keep: int = 2
    url_expiry_seconds: int = 600
    checksums: str = "when_supported"
    listen: str = "127.0.0.1:0"


def publish_files(
    store: ArtifactStore,
    kind: str,
    input_key: str,
    files: Mapping[str, Path],
    metadata: Mapping[str, object] | None = None,
    sources: Mapping[str, str] | None = None,
    set_id: str | None = None,
    sign: Callable[[str], str] | None = None,
) -> PublishedSet:
    """Publish local files as a set the way a build does: the objects land under the new set's keys (where a
    worker's signed uploads put them), then the master's own :func:`finalize_set` verifies them, writes
    checksums and manifest and moves ``latest``."""
    set_id = set_id or new_set_id(input_key)
    expected: dict[str, ExpectedFile] = {}
    for name, path in files.items():
        store.put_file(object_key(kind, set_id, name), path)
        expected[name] = ExpectedFile(path.stat().st_size, file_sha512(path))
    return finalize_set(store, kind, set_id, input_key, expected, metadata, sources, sign=sign)


def put_snapshot(
    store: ArtifactStore, repository: Path, key: str = "portage/20261125T000000Z-s/snap.tar.xz"
) -> str:
    """Put ``repository`` into the store as a Portage snapshot tarball (top directory ``portage/``), where a
    published portage set's artifact lives; returns its key."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        archive.add(repository, arcname="portage")
    store.put_bytes(key, buffer.getvalue())
    return key


@contextlib.contextmanager
def running_store_server(root: Path, log: Path) -> Iterator[str]:
    """``python -m gentoo_farm.store.server`` on a free port; yields its base URL."""
    root.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gentoo_farm.store.server", str(root), "--listen", "127.0.0.1:0"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while "serving" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"store server did not start: {log.read_text()}")
            time.sleep(0.05)
        yield log.read_text().split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def local_settings(tmp_path: Path) -> Iterator[LocalStoreSettings]:
    with running_store_server(tmp_path / "store", tmp_path / "store-server.log") as url:
        yield LocalStoreSettings(path=tmp_path / "store", public_url=url)


@pytest.fixture(params=["local", "s3"])
def any_settings(request: pytest.FixtureRequest) -> LocalStoreSettings | S3StoreSettings:
    return request.getfixturevalue("local_settings" if request.param == "local" else "s3_settings")


@pytest.fixture
def any_store(any_settings: LocalStoreSettings | S3StoreSettings) -> ArtifactStore:
    return open_store(any_settings)
