"""The artifact store contract, proved on both backends (local directory + its HTTP server, S3 on moto)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from gentoo_farm.stageprotocol import RESULT_MARKER
from gentoo_farm.store import (
    ArtifactStore,
    PreconditionFailed,
    StoreError,
    open_store,
    public_base_url,
    workers_base_url,
)
from gentoo_farm.store.binhost import store_lock
from gentoo_farm.store.s3 import S3Store
from gentoo_farm.transfer import ProgressReport, TransferMeter

pytest_plugins = ["tests.services.store"]


def test_the_settings_alone_give_the_url_the_opened_store_is_read_at(any_settings) -> None:
    assert public_base_url(any_settings) == open_store(any_settings).public_base_url()
    any_settings.public_url = "http://mirror.example.org/farm/"
    assert public_base_url(any_settings) == "http://mirror.example.org/farm"
    assert workers_base_url(any_settings) == "http://mirror.example.org/farm"


def test_workers_cannot_read_a_private_bucket_without_a_public_url(s3_settings) -> None:
    s3_settings.public_url = ""
    assert public_base_url(s3_settings) is None
    with pytest.raises(StoreError, match=r"store.public_url: an S3 store needs a public \(or proxied\) URL"):
        workers_base_url(s3_settings)


def test_objects_round_trip(any_store: ArtifactStore) -> None:
    any_store.put_bytes("images/a/one.txt", b"0123456789")
    any_store.put_bytes("images/a/two.txt", b"xy")
    any_store.put_bytes("kernel/b/three.txt", b"z")

    assert any_store.get_bytes("images/a/one.txt") == b"0123456789"
    assert any_store.head("images/a/one.txt").size == 10
    assert any_store.head("images/a/missing") is None
    with any_store.open_read("images/a/one.txt", start=7) as tail:
        assert tail.read() == b"789"
    assert [info.key for info in any_store.list("images/")] == ["images/a/one.txt", "images/a/two.txt"]

    any_store.delete(["images/a/one.txt", "images/a/never-existed"])
    assert [info.key for info in any_store.list("images/")] == ["images/a/two.txt"]


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "binpkgs/.hidden", ""])
def test_keys_cannot_escape_the_store(any_store: ArtifactStore, key: str) -> None:
    with pytest.raises(StoreError, match="invalid store key"):
        any_store.put_bytes(key, b"x")


def test_conditional_writes(any_store: ArtifactStore) -> None:
    any_store.put_bytes("locks/x", b"first", if_absent=True)
    with pytest.raises(PreconditionFailed):
        any_store.put_bytes("locks/x", b"second", if_absent=True)
    etag = any_store.head("locks/x").etag
    any_store.put_bytes("locks/x", b"third", if_match=etag)
    with pytest.raises(PreconditionFailed):
        any_store.put_bytes("locks/x", b"fourth", if_match=etag)
    assert any_store.get_bytes("locks/x") == b"third"


def test_the_store_lock_serialises_read_modify_write(any_store: ArtifactStore) -> None:
    def append(line: bytes) -> None:
        with store_lock(any_store, "test-index", timeout=60):
            current = (
                any_store.get_bytes("binpkgs/p/Packages") if any_store.exists("binpkgs/p/Packages") else b""
            )
            time.sleep(0.05)  # widen the window a lost update would need
            any_store.put_bytes("binpkgs/p/Packages", current + line + b"\n")

    writers = [threading.Thread(target=append, args=(f"writer-{n}".encode(),)) for n in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=90)
    lines = any_store.get_bytes("binpkgs/p/Packages").splitlines()
    assert sorted(lines) == sorted(f"writer-{n}".encode() for n in range(6))
    assert not any_store.exists("locks/test-index"), "the lock is released"


def test_a_dead_holders_lock_is_taken_over_after_its_lease(any_store: ArtifactStore) -> None:
    any_store.put_bytes("locks/stale", json.dumps({"owner": "crashed-master:1", "expires": 0}).encode())
    with store_lock(any_store, "stale", timeout=10):
        assert b"crashed-master" not in any_store.get_bytes("locks/stale")
    any_store.put_bytes(
        "locks/held", json.dumps({"owner": "busy-master:2", "expires": time.time() + 600}).encode()
    )
    with (
        pytest.raises(StoreError, match=r"locks/held is held by busy-master:2"),
        store_lock(any_store, "held", timeout=1),
    ):
        pass


def test_large_files_go_up_in_parts(s3_settings, tmp_path: Path) -> None:
    store = S3Store(s3_settings.bucket, endpoint_url=s3_settings.endpoint_url, part_size_mb=5, concurrency=3)
    big = tmp_path / "disk.qcow2"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    sent: list[int] = []
    store.put_file("images/s/disk.qcow2", big, progress=sent.append)

    info = store.head("images/s/disk.qcow2")
    assert info.etag.strip('"').endswith("-3"), "a 12 MiB file in 5 MiB parts is a 3-part upload"
    assert sum(sent) == big.stat().st_size
    assert store.sha512("images/s/disk.qcow2") == hashlib.sha512(big.read_bytes()).hexdigest()


def test_a_big_upload_says_how_far_it_is_while_it_runs(s3_settings, tmp_path: Path) -> None:
    store = S3Store(s3_settings.bucket, endpoint_url=s3_settings.endpoint_url, part_size_mb=5, concurrency=3)
    big = tmp_path / "gentoo-20261206-amd64.qcow2"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    lines: list[str] = []
    # Every interval is over at once here: each part's callbacks report, from boto3's threads.
    progress = ProgressReport(TransferMeter("uploading", big.stat().st_size), lines.append, interval=0)

    store.put_file("images/s/gentoo-20261206-amd64.qcow2", big, progress=progress)
    progress.finish()

    assert len(lines) > 3, "lines while the parts go up, not only at the end"
    assert lines[0].startswith("uploading ") and "(100 %)" not in lines[0]
    assert lines[-1].startswith("uploading 12.0 MiB / 12.0 MiB (100 %), ")
    assert [line for line in lines if "(100 %)" in line] == [lines[-1]], "the end is said once"


@pytest.mark.parametrize(("mode", "checksummed"), [("when_supported", True), ("when_required", False)])
def test_s3_checksums_can_be_limited_to_what_requires_them(s3_settings, mode: str, checksummed: bool) -> None:
    """MinIO and Ceph RGW versions refuse the CRC headers boto3 sends by default (`[store] checksums`)."""
    s3_settings.checksums = mode
    store = open_store(s3_settings)
    sent: list[dict[str, str]] = []
    store.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    store.put_bytes("images/s/manifest.json", b"{}")
    assert store.get_bytes("images/s/manifest.json") == b"{}"
    (headers,) = sent
    assert any(name.lower().startswith("x-amz-checksum-") for name in headers) is checksummed


def test_the_s3_endpoint_may_come_from_the_environment(s3_settings, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_settings.endpoint_url)
    s3_settings.endpoint_url = ""
    store = open_store(s3_settings)
    store.put_bytes("images/s/manifest.json", b"{}")
    assert store.get_bytes("images/s/manifest.json") == b"{}"
    assert store.location.endswith(f" at {os.environ['AWS_ENDPOINT_URL']}")


def _farm_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "farm-worker"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_worker_uploads_through_signed_urls(any_store: ArtifactStore, tmp_path: Path) -> None:
    files = {tmp_path / "vmlinuz.tar.xz": os.urandom(3 * 1024 * 1024), tmp_path / "a.sha512": b"abc\n"}
    for path, data in files.items():
        path.write_bytes(data)
    upload_map = {str(path): any_store.upload_url(f"kernel/set1/stored-{path.name}", 300) for path in files}
    (tmp_path / "uploads.json").write_text(json.dumps(upload_map))

    result = _farm_worker("upload", "--map", str(tmp_path / "uploads.json"), "--report-checksums")

    assert result.returncode == 0, result.stderr
    for path, data in files.items():
        assert any_store.get_bytes(f"kernel/set1/stored-{path.name}") == data
    (reported,) = [line for line in result.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert json.loads(reported[len(RESULT_MARKER) :])["uploaded"]["stored-vmlinuz.tar.xz"] == {
        "size": 3 * 1024 * 1024,
        "sha512": hashlib.sha512(files[tmp_path / "vmlinuz.tar.xz"]).hexdigest(),
        "md5": hashlib.md5(files[tmp_path / "vmlinuz.tar.xz"]).hexdigest(),
    }
    assert "uploaded 2 files" in result.stdout
    # The URLs are credentials: the log shows where files went, never the signature.
    assert "signature" not in result.stdout.lower() and "X-Amz" not in result.stdout


def test_an_upload_url_writes_once(any_store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "vmlinuz.tar.xz").write_bytes(b"the kernel the master verified")
    url = any_store.upload_url("kernel/set1/vmlinuz.tar.xz", 300)
    (tmp_path / "uploads.json").write_text(json.dumps({str(tmp_path / "vmlinuz.tar.xz"): url}))
    assert _farm_worker("upload", "--map", str(tmp_path / "uploads.json")).returncode == 0

    # After the master verified the set, the worker still holds the URL: it cannot replace the file.
    (tmp_path / "vmlinuz.tar.xz").write_bytes(b"a kernel with a backdoor")
    again = _farm_worker("upload", "--map", str(tmp_path / "uploads.json"))

    assert again.returncode == 1
    assert "HTTP 412" in again.stderr and "an upload URL writes once" in again.stderr
    assert any_store.get_bytes("kernel/set1/vmlinuz.tar.xz") == b"the kernel the master verified"


def test_s3_upload_urls_are_signed_for_a_create_of_one_size(s3_settings) -> None:
    """S3 checks what the signature covers; moto does not, so the test reads what the URL was signed with."""
    store = open_store(s3_settings)
    signed = parse_qs(urlsplit(store.upload_url("distfiles/a-1.tar.gz", 60, size=1234)).query)
    assert signed["X-Amz-SignedHeaders"] == ["content-length;host;if-none-match"]
    unsized = parse_qs(urlsplit(store.upload_url("images/s/disk.qcow2", 60)).query)
    assert unsized["X-Amz-SignedHeaders"] == ["host;if-none-match"]


def test_worker_upload_reports_a_refused_url(local_settings, tmp_path: Path) -> None:
    from gentoo_farm.store import open_store

    store = open_store(local_settings)
    (tmp_path / "f").write_bytes(b"data")
    url = store.upload_url("kernel/s/f", 300).replace("kernel/s/f", "images/s/f")
    (tmp_path / "uploads.json").write_text(json.dumps({str(tmp_path / "f"): url}))

    result = _farm_worker("upload", "--map", str(tmp_path / "uploads.json"))

    assert result.returncode == 1
    assert "HTTP 403" in result.stderr and "does not match this key" in result.stderr
    assert store.head("images/s/f") is None


def _put(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_store_server_is_read_only_without_a_valid_signature(local_settings) -> None:
    from gentoo_farm.store import open_store

    store = open_store(local_settings)
    base = local_settings.public_url
    assert _put(f"{base}/images/x", b"unsigned") == 403
    expiring = store.upload_url("images/x", 1)
    time.sleep(2.1)  # waiting out the URL: it expired after 1 s (its expiry has one-second resolution)
    assert _put(expiring, b"late") == 403
    assert store.head("images/x") is None
    assert _put(store.upload_url("images/x", 60), b"signed") == 201
    assert urllib.request.urlopen(f"{base}/images/x", timeout=10).read() == b"signed"
    # The signing secret sits in the store directory but is never served.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/.farm/upload-secret", timeout=10)
    assert refused.value.code == 404


def test_a_resumed_download_gets_the_rest(any_store: ArtifactStore) -> None:
    any_store.put_bytes("images/s/disk.qcow2", b"0123456789")
    request = urllib.request.Request(
        any_store.download_url("images/s/disk.qcow2", 60), headers={"Range": "bytes=4-"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206
        assert response.read() == b"456789"


def test_unreachable_s3_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    store = S3Store("farm-bucket", endpoint_url=dead, max_attempts=2, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as failure:
        store.put_bytes("images/x", b"x")
    assert "cannot reach S3" in str(failure.value) and dead in str(failure.value)
    assert "gave up after 2 attempts" in str(failure.value)
    assert time.monotonic() - started < 30


def test_s3_without_the_bucket_names_it(s3_server, tmp_path: Path) -> None:
    store = S3Store("no-such-bucket", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(StoreError, match="the bucket no-such-bucket does not exist"):
        store.put_bytes("images/x", b"x")
    boto3.client("s3", endpoint_url=s3_server.endpoint_url)
