"""Concurrent publishes never go backward: pointers move only forward and agree, retention spares what is
being published. Each interleaving is forced deterministically, on both store backends."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gentoo_farm.checksums import file_sha512
from gentoo_farm.config import FarmConfigError, load_config
from gentoo_farm.store import ArtifactStore, sets
from gentoo_farm.store.binhost import store_lock
from gentoo_farm.store.local import LocalStore
from gentoo_farm.store.sets import (
    ExpectedFile,
    apply_retention,
    finalize_set,
    latest_set,
    new_set_id,
    object_key,
    pointer_keys,
)
from tests.services.store import publish_files

pytest_plugins = ["tests.services.store"]

EARLY = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
LATE = EARLY + timedelta(hours=1)


def upload(
    store: ArtifactStore, tmp_path: Path, tag: str, when: datetime
) -> tuple[str, dict[str, ExpectedFile]]:
    """A set's files uploaded (as a worker would) but not finalized yet."""
    path = tmp_path / f"{tag}.tar.zst"
    path.write_bytes(tag.encode() * 1000)
    set_id = new_set_id(f"key-{tag}", when)
    store.put_file(object_key("kernel", set_id, "vmlinuz.tar.zst"), path)
    return set_id, {"vmlinuz.tar.zst": ExpectedFile(path.stat().st_size, file_sha512(path))}


def pointed_at(store: ArtifactStore) -> tuple[str, str]:
    """The set ids the JSON pointer and the text pointer name."""
    text_key, _ = pointer_keys("kernel")
    text = store.get_bytes(text_key).decode()
    text_set = next(line for line in text.splitlines() if not line.startswith("#")).split("/")[0]
    return latest_set(store, "kernel").set_id, text_set


def test_a_set_that_started_earlier_and_finished_later_does_not_become_latest(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    early, early_files = upload(any_store, tmp_path, "early", EARLY)
    late, late_files = upload(any_store, tmp_path, "late", LATE)
    finalize_set(any_store, "kernel", late, "key-late", late_files, {"artifact": "vmlinuz.tar.zst"})
    lines: list[str] = []
    finalize_set(any_store, "kernel", early, "key-early", early_files, {"artifact": "vmlinuz.tar.zst"},
                 progress=lines.append)  # fmt: skip

    assert pointed_at(any_store) == (late, late)
    assert lines[-1] == f"published kernel set {early}; latest stays at a newer set"
    assert any_store.get_bytes("kernel/vmlinuz-latest.tar.zst") == b"late" * 1000


def test_a_newer_publish_that_moves_the_pointer_first_wins_the_race(
    any_store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The older publish reads the pointer, then the newer one moves both pointers before the older one
    writes: on S3 the older write fails its condition, reads again and leaves both pointers where they are.
    The local store holds the key's file lock from that read to the write, so there the newer publish waits
    for the older one's write and then moves the pointers on."""
    first = publish_files(
        any_store, "kernel", "key-first", _one(tmp_path, "first"), set_id=new_set_id("k0", EARLY)
    )
    early, early_files = upload(any_store, tmp_path, "early", EARLY + timedelta(minutes=1))
    late, late_files = upload(any_store, tmp_path, "late", LATE)
    original_read = any_store.read_versioned
    raced: list[threading.Thread] = []

    def read_then_race(key: str) -> tuple[bytes, str] | None:
        found = original_read(key)
        if key.endswith("latest.json") and not raced:
            newer = threading.Thread(
                target=finalize_set,
                args=(any_store, "kernel", late, "key-late", late_files, {"artifact": "vmlinuz.tar.zst"}),
            )
            raced.append(newer)
            newer.start()
            newer.join(timeout=0.5 if isinstance(any_store, LocalStore) else 60)
        return found

    monkeypatch.setattr(any_store, "read_versioned", read_then_race)
    finalize_set(any_store, "kernel", early, "key-early", early_files, {"artifact": "vmlinuz.tar.zst"})
    raced[0].join(timeout=60)

    assert raced and first.set_id < early < late
    assert pointed_at(any_store) == (late, late)


def _one(tmp_path: Path, tag: str) -> dict[str, Path]:
    path = tmp_path / f"{tag}.tar.zst"
    path.write_bytes(tag.encode())
    return {"vmlinuz.tar.zst": path}


def test_retention_spares_sets_newer_than_the_pointer(
    any_store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep = 1: retention runs while two newer sets have their manifests but no pointer yet."""
    old = publish_files(any_store, "kernel", "key-old", _one(tmp_path, "old"), set_id=new_set_id("k1", EARLY))
    # Stop each newer publish where it has written its manifest and not yet moved the pointers.
    monkeypatch.setattr(sets, "_write_pointers", lambda store, published: False)
    finishing = []
    for tag, when in (("newer", LATE), ("newest", LATE + timedelta(hours=1))):
        set_id, files = upload(any_store, tmp_path, tag, when)
        finalize_set(any_store, "kernel", set_id, f"key-{tag}", files)
        finishing.append(set_id)
    assert latest_set(any_store, "kernel").set_id == old.set_id

    plan = apply_retention(any_store, keep=1)

    assert set(plan.kept["kernel"]) == {old.set_id, *finishing}
    for set_id in finishing:
        assert any_store.exists(f"kernel/{set_id}/manifest.json")


def test_keep_zero_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "farm.toml").write_text('[farm]\nid = "f"\n\n[store]\nkeep = 0\n')
    with pytest.raises(FarmConfigError, match=r"store\.keep.*at least 1"):
        load_config(tmp_path)


def test_a_lock_held_longer_than_its_lease_is_not_taken_over(any_store: ArtifactStore) -> None:
    """A binhost merge that outlives its lease renews it: a waiting merge gets the lock only when the
    first lets go, never by taking over a live holder's "stale" lease."""
    order: list[str] = []

    def second_merge() -> None:
        with store_lock(any_store, "binhost-test", timeout=30, lease=1):
            order.append("second took the lock")

    with store_lock(any_store, "binhost-test", timeout=5, lease=1):
        waiter = threading.Thread(target=second_merge)
        waiter.start()
        time.sleep(3.5)  # three and a half leases
        order.append("first let go")
    waiter.join(timeout=60)
    assert order == ["first let go", "second took the lock"]
