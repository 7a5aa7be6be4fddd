"""Several masters sharing one store: the read-modify-write objects lose no writer's change.

The binhost's ``Packages`` index (and the ``latest`` pointers, and each set's Glance record) are updated
through :meth:`ArtifactStore.update`, a compare-and-swap on the object's etag (S3 ``If-Match`` /
``If-None-Match: *``, which moto honours; a file lock on the local store). Each test below runs two
processes at once, as two masters would, on both backends.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gentoo_farm.signing import FarmKey
from gentoo_farm.store import ArtifactStore, StoreError, open_store
from gentoo_farm.store.binhost import (
    STAGED_INDEX,
    MergeResult,
    binhost_prefix,
    index_key,
    merge_pushback,
    parse_index,
    render_index,
    staging_prefix,
    store_lock,
)
from gentoo_farm.store.sets import finalize_set
from tests.test_publish_order import EARLY, LATE, pointed_at, upload

if TYPE_CHECKING:
    from tests.services.s3 import S3StoreSettings
    from tests.services.store import LocalStoreSettings

pytest_plugins = ["tests.services.store"]

PROFILE = "default/linux/amd64/23.0"
ROUNDS = 20
PROCESS_TIMEOUT = 120


class UnsignedKey(FarmKey):
    """Stands in for the farm key: what is under test is the index, not gpkg-sign (a Portage process a
    package, which would make forty merges take minutes)."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))

    def sign_gpkg(self, package: Path) -> None:
        pass


def stage_pushback(store: ArtifactStore, name: str, data: bytes | None = None) -> str:
    """Stage one build's push-back of one package the way a worker's uploads leave it; its token."""
    token = uuid.uuid4().hex
    path = f"app-misc/{name}/{name}-1.0-1.gpkg.tar"
    data = f"package {name}\n".encode() if data is None else data
    index = parse_index(None, "staged")
    index.header.update({"PROFILE": PROFILE, "ARCH": "amd64"})
    index.packages.append(
        {
            "CPV": f"app-misc/{name}-1.0",
            "PATH": path,
            "SIZE": str(len(data)),
            "MD5": hashlib.md5(data).hexdigest(),
            "SHA1": hashlib.sha1(data).hexdigest(),
        }
    )
    store.put_bytes(staging_prefix(token) + STAGED_INDEX, render_index(index))
    store.put_bytes(staging_prefix(token) + "binpkgs/" + path, data)
    return token


def indexed_paths(store: ArtifactStore) -> list[str]:
    return sorted(entry["PATH"] for entry in parse_index(store.get_bytes(index_key(PROFILE)), "").packages)


def _merge_all(settings: LocalStoreSettings | S3StoreSettings, tokens: list[str]) -> None:
    """One master: merge each push-back in turn (run in a process of its own)."""
    store = open_store(settings)
    for token in tokens:
        merge_pushback(store, PROFILE, token, UnsignedKey(), lock_timeout=PROCESS_TIMEOUT)


def _append_lines(settings: LocalStoreSettings | S3StoreSettings, key: str, lines: list[str]) -> None:
    """Append each line to ``key`` with one update each, no lock at all (run in a process of its own)."""
    store = open_store(settings)
    for line in lines:
        store.update(key, lambda current, line=line: (current or b"") + line.encode() + b"\n")


def run_together(target, arguments: list[tuple[object, ...]]) -> None:
    """Start one process for each argument tuple, all at once (spawned: the moto server's threads live in
    this one), and wait for every one to succeed."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args) for args in arguments]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=PROCESS_TIMEOUT)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_two_masters_merging_twenty_pushbacks_each_lose_no_packages_entry(any_settings) -> None:
    store = open_store(any_settings)
    tokens = {master: [stage_pushback(store, f"m{master}-p{n}") for n in range(ROUNDS)] for master in (1, 2)}

    run_together(_merge_all, [(any_settings, tokens[1]), (any_settings, tokens[2])])

    paths = indexed_paths(store)
    assert len(paths) == 2 * ROUNDS
    assert paths == sorted(
        f"app-misc/m{m}-p{n}/m{m}-p{n}-1.0-1.gpkg.tar" for m in (1, 2) for n in range(ROUNDS)
    )
    assert parse_index(store.get_bytes(index_key(PROFILE)), "").header["PACKAGES"] == str(2 * ROUNDS)
    assert [info.key for info in store.list("incoming/")] == []
    assert [info.key for info in store.list("locks/")] == [], "both masters released the binhost lock"


def test_two_processes_updating_one_object_without_a_lock_lose_no_change(any_settings) -> None:
    """The primitive alone, with no lock around it: every one of forty appends is there."""
    key = "binpkgs/cas-test/list"
    lines = {writer: [f"{writer}-{n}" for n in range(ROUNDS)] for writer in ("a", "b")}

    run_together(_append_lines, [(any_settings, key, lines["a"]), (any_settings, key, lines["b"])])

    written = open_store(any_settings).get_bytes(key).decode().splitlines()
    assert sorted(written) == sorted(lines["a"] + lines["b"])
    # Each writer's own lines stay in its order: an update never replays a change out of turn.
    assert [line for line in written if line.startswith("a-")] == lines["a"]


def test_a_merge_that_lost_the_binhost_lock_still_indexes_its_packages(any_store: ArtifactStore) -> None:
    """A master paused past its lease (its lock taken over) while another merged: on resuming, its index
    write finds the index changed and merges again into what the other wrote, keeping both. (Before the
    compare-and-swap loop this merge failed with "changed while this merge held the binhost lock" and its
    package stayed out of the index.)"""
    late, early = stage_pushback(any_store, "late"), stage_pushback(any_store, "early")

    class PausedKey(UnsignedKey):
        def sign_gpkg(self, package: Path) -> None:
            # Meanwhile the lease ran out: the lock went to another master, which merged and released it.
            any_store.delete([info.key for info in any_store.list("locks/")])
            merge_pushback(any_store, PROFILE, early, UnsignedKey(), lock_timeout=10)

    result = merge_pushback(any_store, PROFILE, late, PausedKey(), lock_timeout=10)

    assert result.added == ["app-misc/late/late-1.0-1.gpkg.tar"]
    assert indexed_paths(any_store) == [
        "app-misc/early/early-1.0-1.gpkg.tar",
        "app-misc/late/late-1.0-1.gpkg.tar",
    ]
    # ... and it knows it worked without its lock, and which lock that was.
    assert result.lock_lost is not None
    assert f"lost the lock {BINHOST_LOCK}: the lock object was removed" in result.lock_lost


BINHOST_LOCK = "locks/binhost-" + PROFILE.replace("/", "_")
LEASE = 1.5
"""A short lease for the renewal tests: renewed every 0.5 s."""


def test_a_renewal_that_fails_once_keeps_the_lease(any_store: ArtifactStore, monkeypatch) -> None:
    """One renewal of the lock object fails with a store error (S3 unreachable for a moment): the renewer
    tries again, and another master still cannot take the lock two and a half leases later. (Before, the
    renewer stopped at the first error, the lease ran out after 1.5 s and the other master took the lock.)"""
    real_put = any_store.put_bytes
    failed: list[str] = []

    def put_failing_once(
        key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> None:
        if key.startswith("locks/") and if_match is not None and not failed:
            failed.append(key)
            raise StoreError(f"{any_store.location}: {key}: S3 said 503: Slow Down")
        real_put(key, data, if_match=if_match, if_absent=if_absent)

    monkeypatch.setattr(any_store, "put_bytes", put_failing_once)
    with store_lock(any_store, "binhost-renewal", timeout=1, lease=LEASE) as lease:
        time.sleep(2.5 * LEASE)
        with (
            pytest.raises(StoreError, match=r"locks/binhost-renewal is held by"),
            store_lock(any_store, "binhost-renewal", timeout=0.5, lease=LEASE),
        ):
            pass
        assert failed == ["locks/binhost-renewal"]
        assert lease.confirm() is None
    assert [info.key for info in any_store.list("locks/")] == []


def test_a_lock_another_master_took_is_reported_lost_naming_its_key(any_store: ArtifactStore) -> None:
    """The renewer finds another owner in the lock object: it stops, the lease says so (the lock's key and
    its holder), and releasing leaves the other master's lock in place."""
    other = json.dumps({"owner": "master-b:42:cafe", "expires": time.time() + 60}).encode()
    with store_lock(any_store, "binhost-taken", timeout=1, lease=LEASE) as lease:
        any_store.put_bytes("locks/binhost-taken", other)
        deadline = time.monotonic() + 3 * LEASE
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.lost is not None
        assert "lost the lock locks/binhost-taken: another holder has it now (master-b:42:cafe)" in lease.lost
    assert any_store.get_bytes("locks/binhost-taken") == other


def binhost_file_matches_its_entry(store: ArtifactStore, path: str) -> bytes:
    """The binhost's file for ``path``, after checking it against its Packages entry (size, MD5, SHA1)."""
    [entry] = [e for e in parse_index(store.get_bytes(index_key(PROFILE)), "").packages if e["PATH"] == path]
    data = store.get_bytes(binhost_prefix(PROFILE) + path)
    assert (len(data), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest()) == (
        int(entry["SIZE"]),
        entry["MD5"],
        entry["SHA1"],
    )
    return data


def test_the_second_merge_of_a_package_path_drops_its_file(any_store: ArtifactStore) -> None:
    """Both masters built the same PATH (different bytes); the first lost its lock while signing and the
    second merged whole meanwhile. The first's create-only write of the file fails: it drops its copy
    and says so, so the binhost file is the one the index entry describes. (Before, the first merge
    replaced the file and the index kept the second's entry: the checksums did not match the file.)"""
    path = "app-misc/same/same-1.0-1.gpkg.tar"
    first, second = (
        stage_pushback(any_store, "same", b"first build\n"),
        stage_pushback(any_store, "same", b"2nd"),
    )
    lines: list[str] = []

    class PausedKey(UnsignedKey):
        def sign_gpkg(self, package: Path) -> None:
            any_store.delete([info.key for info in any_store.list("locks/")])
            merge_pushback(any_store, PROFILE, second, UnsignedKey(), lock_timeout=10)

    result = merge_pushback(any_store, PROFILE, first, PausedKey(), lock_timeout=10, progress=lines.append)

    assert (result.added, result.already_there) == ([], [path])
    assert (
        f"binpkgs/{PROFILE}/{path} was written by another merge meanwhile: dropped this build's copy" in lines
    )
    assert binhost_file_matches_its_entry(any_store, path) == b"2nd"


def test_a_merge_that_finds_the_file_written_but_not_indexed_drops_its_own(
    any_store: ArtifactStore, monkeypatch
) -> None:
    """The other order: the first merge has put its file but not yet indexed it when the second (its lock
    lost meanwhile) merges the same PATH: the second drops its copy, the first indexes the file it wrote."""
    path = "app-misc/same/same-1.0-1.gpkg.tar"
    first, second = (
        stage_pushback(any_store, "same", b"first build\n"),
        stage_pushback(any_store, "same", b"2nd"),
    )
    real_put_file_new = any_store.put_file_new
    seconds: list[MergeResult] = []

    def put_then_the_other_merges(key: str, file: Path, progress=None) -> None:
        real_put_file_new(key, file, progress)
        if not seconds:
            any_store.delete([info.key for info in any_store.list("locks/")])
            seconds.append(merge_pushback(any_store, PROFILE, second, UnsignedKey(), lock_timeout=10))

    monkeypatch.setattr(any_store, "put_file_new", put_then_the_other_merges)
    result = merge_pushback(any_store, PROFILE, first, UnsignedKey(), lock_timeout=10)

    assert result.added == [path]
    assert [(r.added, r.already_there) for r in seconds] == [([], [path])]
    assert binhost_file_matches_its_entry(any_store, path) == b"first build\n"


def test_an_update_that_keeps_losing_gives_up_naming_the_key(s3_settings: S3StoreSettings) -> None:
    store = open_store(s3_settings)
    store.put_bytes("binpkgs/cas-test/busy", b"0")

    def always_raced(current: bytes | None) -> bytes:
        store.put_bytes("binpkgs/cas-test/busy", (current or b"") + b"+")  # another writer, every time
        return b"mine"

    with pytest.raises(StoreError, match=r"binpkgs/cas-test/busy was changed by other writers 3 times"):
        store.update("binpkgs/cas-test/busy", always_raced, attempts=3)
    assert store.get_bytes("binpkgs/cas-test/busy") == b"0+++"


def test_an_older_publish_that_moved_latest_first_leaves_the_newer_stable_copy(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    """The older publish moved the pointers, then the newer one published whole (pointers and stable
    copy) before the older one reached its stable copy: the older one leaves the newer copy alone. (Before
    the stable copy was written under a lock by the set the pointer names, the older copy replaced it.)"""
    early, early_files = upload(any_store, tmp_path, "early", EARLY)
    late, late_files = upload(any_store, tmp_path, "late", LATE)
    lines: list[str] = []

    def newer_publishes_meanwhile(line: str) -> None:
        lines.append(line)
        if line.endswith("latest now points at it"):
            finalize_set(any_store, "kernel", late, "key-late", late_files, {"artifact": "vmlinuz.tar.zst"})

    finalize_set(any_store, "kernel", early, "key-early", early_files, {"artifact": "vmlinuz.tar.zst"},
                 progress=newer_publishes_meanwhile)  # fmt: skip

    assert pointed_at(any_store) == (late, late)
    assert any_store.get_bytes("kernel/vmlinuz-latest.tar.zst") == b"late" * 1000
    assert lines[-1] == "a newer kernel set has moved latest since; it writes kernel/vmlinuz-latest.tar.zst"
