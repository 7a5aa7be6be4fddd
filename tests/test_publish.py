"""Publishing sets: read-back verification, pointers written last, crash safety, retention rules."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gentoo_farm.store import ArtifactStore, StoreError, open_store
from gentoo_farm.store.s3 import S3Store
from gentoo_farm.store.sets import (
    ExpectedFile,
    apply_retention,
    finalize_set,
    find_set,
    latest_name,
    latest_set,
    list_sets,
    new_set_id,
    next_image_name,
    object_key,
    read_set,
)
from tests.services.store import publish_files

pytest_plugins = ["tests.services.store"]


def _files(directory: Path, **contents: bytes) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in contents.items():
        paths[name.replace("_", ".")] = directory / name.replace("_", ".")
        paths[name.replace("_", ".")].write_bytes(data)
    return paths


def _publish(store: ArtifactStore, tmp_path: Path, kind: str, tag: str, **extra: object) -> str:
    files = _files(tmp_path / tag, **{f"{tag}_qcow2": tag.encode() * 1000})
    set_id = new_set_id(f"key-{tag}", when=extra.pop("when", None))  # type: ignore[arg-type]
    return publish_files(store, kind, f"key-{tag}", files, set_id=set_id, **extra).set_id  # type: ignore[arg-type]


def test_two_builds_of_one_input_in_the_same_second_publish_two_sets(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    when = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
    first, second = (
        publish_files(
            any_store, "kernel", "key-same", _files(tmp_path / tag, vmlinuz_tar=tag.encode()),
            set_id=new_set_id("key-same", when),
        )
        for tag in ("first", "second")
    )  # fmt: skip
    assert first.set_id != second.set_id
    assert first.set_id.startswith("20261207T100000Z-keysame-")
    assert {published.set_id for published in list_sets(any_store, "kernel")} == {first.set_id, second.set_id}
    assert read_set(any_store, "kernel", first.set_id) is not None


def test_publish_writes_checksums_manifest_and_flips_latest(any_store: ArtifactStore, tmp_path: Path) -> None:
    files = _files(tmp_path / "one", gentoo_qcow2=b"disk" * 5000, manifest_txt=b"m")
    first = publish_files(any_store, "images", "input-1", files, metadata={"kernel": "6.6.1"})

    disk_key = f"images/{first.set_id}/gentoo.qcow2"
    expected_sum = hashlib.sha512(b"disk" * 5000).hexdigest()
    assert any_store.get_bytes(disk_key + ".sha512") == f"{expected_sum}  gentoo.qcow2\n".encode()
    manifest = json.loads(any_store.get_bytes(f"images/{first.set_id}/manifest.json"))
    assert manifest["input_key"] == "input-1" and manifest["metadata"] == {"kernel": "6.6.1"}
    assert {f["name"]: f["sha512"] for f in manifest["files"]}["gentoo.qcow2"] == expected_sum
    pointer = any_store.get_bytes("images/latest-images.txt").decode().splitlines()
    assert pointer[0].startswith("# Latest as of ")
    assert f"{first.set_id}/gentoo.qcow2 20000" in pointer

    second = publish_files(
        any_store,
        "images",
        "input-2",
        _files(tmp_path / "two", gentoo_qcow2=b"new"),
        set_id=first.set_id + "0",
    )
    assert latest_set(any_store, "images").set_id == second.set_id
    assert [s.set_id for s in list_sets(any_store, "images")] == [second.set_id, first.set_id]
    assert find_set(any_store, "images", "input-1").set_id == first.set_id
    assert find_set(any_store, "images", "input-3") is None
    # By its id, a set is one manifest read; an unknown id or no set id at all is no set.
    assert read_set(any_store, "images", first.set_id) == first
    assert read_set(any_store, "images", "20990101T000000Z-nothing") is None
    assert read_set(any_store, "images", "latest") is None


def test_images_of_one_day_are_numbered(any_store: ArtifactStore, tmp_path: Path) -> None:
    day = datetime(2026, 12, 2, 23, 59, tzinfo=UTC)
    first = str(next_image_name(any_store, "amd64", day))
    publish_files(
        any_store,
        "images",
        "input-1",
        _files(tmp_path / "one", **{f"{first}_qcow2": b"disk", f"{first}_manifest_json": b"{}"}),
        metadata={"name": first, "artifact": f"{first}.qcow2"},
    )
    second = str(next_image_name(any_store, "amd64", day))
    # A build still uploading holds its name too: the next build of the day does not take it.
    any_store.put_bytes(object_key("images", new_set_id("input-2", day), f"{second}.qcow2"), b"uploading")

    assert (first, second) == ("gentoo-20261202-amd64", "gentoo-20261202.1-amd64")
    assert str(next_image_name(any_store, "amd64", day)) == "gentoo-20261202.2-amd64"
    assert str(next_image_name(any_store, "arm64", day)) == "gentoo-20261202-arm64"
    assert str(next_image_name(any_store, "amd64", day + timedelta(minutes=1))) == "gentoo-20261203-amd64"


def test_worker_images_have_names_and_a_latest_of_their_own(any_store: ArtifactStore, tmp_path: Path) -> None:
    day = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    plain = publish_files(
        any_store,
        "images",
        "input-1",
        _files(tmp_path / "plain", **{"gentoo-20261202-amd64_qcow2": b"cloud image"}),
        metadata={"artifact": "gentoo-20261202-amd64.qcow2"},
    )
    worker_name = str(next_image_name(any_store, "amd64", day, images_kind="worker-images"))
    worker = publish_files(
        any_store,
        "worker-images",
        "input-1",
        _files(tmp_path / "worker", **{f"{worker_name}_qcow2": b"worker image"}),
        metadata={"artifact": f"{worker_name}.qcow2"},
    )

    # The day's first worker image: the plain image of that day does not count against its name.
    assert worker_name == "gentoo-farm-worker-20261202-amd64"
    assert str(next_image_name(any_store, "amd64", day, images_kind="worker-images")).endswith(".1-amd64")
    assert latest_set(any_store, "images").set_id == plain.set_id
    assert latest_set(any_store, "worker-images").set_id == worker.set_id
    assert any_store.get_bytes("images/gentoo-latest-amd64.qcow2") == b"cloud image"
    assert any_store.get_bytes("worker-images/gentoo-farm-worker-latest-amd64.qcow2") == b"worker image"
    with pytest.raises(StoreError, match="is not named as an image of images/"):
        latest_name("images", "gentoo-farm-worker-20261202-amd64.qcow2")


LATEST = {
    "stage3": ("stage3-amd64-openrc-20261125T170104Z.tar.xz", "stage3-latest.tar.xz"),
    "portage": ("portage-20261125.tar.xz", "portage-latest.tar.xz"),
    "kernel": ("vmlinuz.tar.zst", "vmlinuz-latest.tar.zst"),
    "overlay": ("vmoverride.tar.gz", "vmoverride-latest.tar.gz"),
    "images": ("gentoo-20261202.1-arm64.qcow2", "gentoo-latest-arm64.qcow2"),
    "worker-stage4": ("stage4-amd64.tar.zst", "stage4-worker-latest.tar.zst"),
    "worker-images": ("gentoo-farm-worker-20261202.1-arm64.qcow2", "gentoo-farm-worker-latest-arm64.qcow2"),
}


@pytest.mark.parametrize("kind", LATEST)
def test_latest_objects_match_the_dated_set(any_store: ArtifactStore, tmp_path: Path, kind: str) -> None:
    artifact, stable = LATEST[kind]
    for number in (1, 2):
        files = _files(
            tmp_path / str(number), **{artifact.replace(".", "_"): f"{kind} {number}".encode() * 99}
        )
        files[f"{artifact}.DIGESTS"] = tmp_path / "digests"
        files[f"{artifact}.DIGESTS"].write_bytes(b"signed sums")
        published = publish_files(any_store, kind, f"key-{number}", files, metadata={"artifact": artifact})
        dated = published.file(artifact)

        # What a person curls without reading a pointer is the newest set's artifact, checkable by its name.
        assert hashlib.sha512(any_store.get_bytes(f"{kind}/{stable}")).hexdigest() == dated.sha512
        assert any_store.get_bytes(f"{kind}/{stable}.sha512") == f"{dated.sha512}  {stable}\n".encode()
        assert latest_set(any_store, kind).set_id == published.set_id
    assert not [key for key in apply_retention(any_store, keep=1).doomed_keys if stable in key]
    assert any_store.head(f"{kind}/{stable}") is not None
    # Only the artifact gets a stable name: the rest of the set is found through the pointer.
    assert not any_store.exists(f"{kind}/{stable}.DIGESTS")


def test_a_failed_publish_leaves_the_latest_objects_alone(any_store: ArtifactStore, tmp_path: Path) -> None:
    files = _files(tmp_path / "good", vmlinuz_tar_zst=b"good kernel")
    good = publish_files(any_store, "kernel", "key-good", files, metadata={"artifact": "vmlinuz.tar.zst"})
    set_id = new_set_id("key-bad")
    any_store.put_bytes(object_key("kernel", set_id, "vmlinuz.tar.zst"), b"corrupted in transit")
    expected = {"vmlinuz.tar.zst": ExpectedFile(len(b"corrupted in transit"), "0" * 128)}

    with pytest.raises(StoreError, match="sha512"):
        finalize_set(any_store, "kernel", set_id, "key-bad", expected, {"artifact": "vmlinuz.tar.zst"})

    assert any_store.get_bytes("kernel/vmlinuz-latest.tar.zst") == b"good kernel"
    assert latest_set(any_store, "kernel").set_id == good.set_id


def test_a_corrupt_upload_is_not_published(any_store: ArtifactStore, tmp_path: Path) -> None:
    good = _publish(any_store, tmp_path, "kernel", "good")
    set_id = new_set_id("bad-input")
    any_store.put_bytes(f"kernel/{set_id}/vmlinuz.tar.xz", b"what arrived")
    claimed = ExpectedFile(size=len(b"what arrived"), sha512=hashlib.sha512(b"what was sent").hexdigest())

    with pytest.raises(StoreError, match=r"vmlinuz.tar.xz .*sha512"):
        finalize_set(any_store, "kernel", set_id, "bad-input", {"vmlinuz.tar.xz": claimed})

    assert latest_set(any_store, "kernel").set_id == good
    assert any_store.head(f"kernel/{set_id}/manifest.json") is None


def test_big_objects_are_checked_by_etag_and_by_sha512_when_the_etag_is_no_md5(
    s3_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gentoo_farm.store import sets

    store = open_store(s3_settings)
    data = b"pretend this is many gigabytes"
    store.put_bytes("images/20261125T000000Z-big/disk.qcow2", data)
    store.put_bytes("images/20261125T000000Z-kms/disk.qcow2", data)
    monkeypatch.setattr(sets, "FULL_VERIFY_BYTES", 8)
    read_back: list[str] = []
    open_read = store.open_read

    def recording_reads(key: str, start: int = 0):
        if key.endswith("/disk.qcow2"):
            read_back.append(key)
        return open_read(key, start)

    monkeypatch.setattr(store, "open_read", recording_reads)
    sha512 = hashlib.sha512(data).hexdigest()
    md5 = hashlib.md5(data).hexdigest()
    # An SSE-KMS bucket's ETag is not the MD5 the uploader reported: the sha512 read back decides.
    kms = ExpectedFile(len(data), sha512, hashlib.md5(b"what an SSE-KMS ETag looks like").hexdigest())
    corrupt = ExpectedFile(len(data), hashlib.sha512(b"what was sent").hexdigest(), kms.md5)

    with pytest.raises(StoreError, match=r"disk.qcow2 .*sha512 .* != expected"):
        finalize_set(store, "images", "20261125T000000Z-kms", "kms", {"disk.qcow2": corrupt})
    assert finalize_set(store, "images", "20261125T000000Z-kms", "kms", {"disk.qcow2": kms}).set_id
    assert read_back == ["images/20261125T000000Z-kms/disk.qcow2"] * 2
    # Plain S3: the ETag is the MD5, and the object is not read back.
    right = ExpectedFile(len(data), sha512, md5)
    assert finalize_set(store, "images", "20261125T000000Z-big", "big", {"disk.qcow2": right}).set_id
    assert len(read_back) == 2


def test_a_missing_upload_names_the_key(any_store: ArtifactStore) -> None:
    set_id = new_set_id("k")
    with pytest.raises(StoreError, match=f"kernel/{set_id}/vmlinuz.tar.xz is missing"):
        finalize_set(any_store, "kernel", set_id, "k", {"vmlinuz.tar.xz": ExpectedFile(1, "0" * 128)})


PUBLISHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from gentoo_farm.store.local import LocalStore
    from gentoo_farm.store.s3 import S3Store
    from tests.services.store import publish_files

    backend, location, endpoint, directory = sys.argv[1:5]
    if backend == "local":
        store = LocalStore(Path(location), "http://127.0.0.1:1")
    else:
        store = S3Store(location, prefix="farm", endpoint_url=endpoint)
    files = {name: Path(directory) / name for name in ("a.qcow2", "b.fifo", "c.txt")}
    publish_files(store, "images", "crashing-input", files)
    """
)


def test_a_publisher_killed_mid_publish_leaves_latest_on_the_previous_set(
    any_settings, tmp_path: Path, s3_server
) -> None:
    store = open_store(any_settings)
    previous = _publish(store, tmp_path, "images", "previous")
    pointer_before = store.get_bytes("images/latest-images.txt")

    work = tmp_path / "crash"
    work.mkdir()
    (work / "a.qcow2").write_bytes(b"first object of the new set")
    # The second file is a FIFO nobody writes: the real publisher blocks mid-set, as if uploading forever.
    os.mkfifo(work / "b.fifo")
    (work / "c.txt").write_bytes(b"never reached")
    location = str(any_settings.path) if any_settings.type == "local" else any_settings.bucket
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, any_settings.type, location, any_settings.endpoint_url, str(work)],
        env=s3_server.environment,
        cwd=Path(__file__).parent.parent,  # the publisher imports the tests' helper
    )
    try:
        deadline = time.monotonic() + 60
        while not any(info.key.endswith("/a.qcow2") for info in store.list("images/")):
            assert publisher.poll() is None, "the publisher ended before it was killed"
            assert time.monotonic() < deadline, "the publisher never uploaded its first object"
            time.sleep(0.05)
        publisher.send_signal(signal.SIGKILL)
    finally:
        publisher.kill()
        publisher.wait(timeout=30)

    assert store.get_bytes("images/latest-images.txt") == pointer_before
    assert latest_set(store, "images").set_id == previous
    assert [s.set_id for s in list_sets(store, "images")] == [previous]
    kept = latest_set(store, "images").files[0]
    assert store.sha512(kept.key) == kept.sha512

    # The leftover may be a build still uploading: retention spares it until nothing in it changed for
    # a day (here: for no time at all).
    leftover = [info.key for info in store.list("images/") if info.key.endswith("/a.qcow2")]
    assert not set(leftover) & set(apply_retention(store, keep=1).doomed_keys)
    assert set(leftover) <= set(apply_retention(store, keep=1, abandoned_after=timedelta(0)).doomed_keys)
    assert store.head(leftover[0]) is None
    assert latest_set(store, "images").set_id == previous


def test_a_publish_to_unreachable_s3_fails_clearly_and_keeps_the_sets(s3_settings, tmp_path: Path) -> None:
    live = open_store(s3_settings)
    previous = _publish(live, tmp_path, "images", "previous")
    unreachable = S3Store(
        s3_settings.bucket, prefix=s3_settings.prefix, endpoint_url="http://127.0.0.1:9", max_attempts=2
    )

    with pytest.raises(StoreError, match="cannot reach S3"):
        _publish(unreachable, tmp_path, "images", "next")

    assert latest_set(live, "images").set_id == previous
    assert live.sha512(latest_set(live, "images").files[0].key) == latest_set(live, "images").files[0].sha512


def test_retention_keeps_n_sets_and_everything_still_referenced(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    kernels = [
        _publish(any_store, tmp_path, "kernel", f"k{n}", when=day + timedelta(days=n)) for n in range(3)
    ]
    images = [
        _publish(
            any_store,
            tmp_path,
            "images",
            f"i{n}",
            when=day + timedelta(days=n),
            sources={"kernel": kernels[0]},
        )
        for n in range(2)
    ]
    images.append(_publish(any_store, tmp_path, "images", "i2", when=day + timedelta(days=2)))
    # A set whose build started long before the others finishes last: the pointer stays at i2 and the
    # late set, neither among the newest nor pointed at, goes.
    late_image = _publish(any_store, tmp_path, "images", "old", when=day - timedelta(days=9))
    before = sorted(info.key for info in any_store.list(""))

    plan = apply_retention(any_store, keep=2, dry_run=True)

    assert sorted(info.key for info in any_store.list("")) == before, "a dry run deletes nothing"
    assert plan.kept["images"] == (images[2], images[1])
    # kernel k0 is old, but the kept image i1 was built from it.
    assert plan.kept["kernel"] == (kernels[2], kernels[1], kernels[0])
    assert {key.split("/")[1] for key in plan.doomed_keys} == {images[0], late_image}

    apply_retention(any_store, keep=2)

    assert [s.set_id for s in list_sets(any_store, "images")] == [images[2], images[1]]
    assert len(list_sets(any_store, "kernel")) == 3
    assert latest_set(any_store, "images").set_id == images[2]
    assert all(any_store.head(key) is None for key in plan.doomed_keys)


def test_worker_images_keep_their_own_number_of_sets(local_settings, tmp_path: Path) -> None:
    store = open_store(local_settings)
    day = datetime(2026, 1, 1, tzinfo=UTC)
    images, workers = (
        [_publish(store, tmp_path, kind, f"{kind}{n}", when=day + timedelta(days=n)) for n in range(3)]
        for kind in ("images", "worker-images")
    )

    plan = apply_retention(store, keep=3, keep_by_kind={"worker-images": 1})

    assert plan.kept["images"] == tuple(reversed(images))
    assert plan.kept["worker-images"] == (workers[2],)
    assert [s.set_id for s in list_sets(store, "worker-images")] == [workers[2]]
    with pytest.raises(StoreError, match="keep must be at least 1, got 0"):
        apply_retention(store, keep=3, keep_by_kind={"worker-images": 0})


def test_retention_clears_push_back_staging_a_dead_build_left(local_settings) -> None:
    store = open_store(local_settings)
    store.put_bytes("incoming/dead-build/binpkgs/a/b-1-1.gpkg.tar", b"old")
    store.put_bytes("incoming/running-build/binpkgs/a/c-1-1.gpkg.tar", b"new")
    two_days_ago = time.time() - 2 * 86400
    os.utime(store.path_of("incoming/dead-build/binpkgs/a/b-1-1.gpkg.tar"), (two_days_ago, two_days_ago))

    assert apply_retention(store, keep=1).doomed_keys == ("incoming/dead-build/binpkgs/a/b-1-1.gpkg.tar",)
    assert [info.key for info in store.list("incoming/")] == [
        "incoming/running-build/binpkgs/a/c-1-1.gpkg.tar"
    ]


def test_farm_prune_dry_run_lists_then_prune_deletes(local_settings, tmp_path: Path, capsys) -> None:
    import argparse
    from types import SimpleNamespace

    from gentoo_farm.commands import prune

    store = open_store(local_settings)
    day = datetime(2026, 1, 1, tzinfo=UTC)
    old, new = (
        _publish(store, tmp_path, "images", tag, when=day + timedelta(days=n)) for n, tag in enumerate("ab")
    )
    parser = argparse.ArgumentParser()
    prune.add_arguments(parser)
    config = SimpleNamespace(store=local_settings)

    assert prune.run(parser.parse_args(["--dry-run", "--keep", "1"]), config) == 0
    output = capsys.readouterr().out
    assert f"images: keeping {new}" in output
    assert f"would delete images/{old}/manifest.json" in output
    assert store.exists(f"images/{old}/manifest.json")

    assert prune.run(parser.parse_args(["--keep", "1"]), config) == 0
    assert f"deleted images/{old}/a.qcow2" in capsys.readouterr().out
    assert [s.set_id for s in list_sets(store, "images")] == [new]


def test_an_image_not_named_like_one_is_refused_before_anything_moves(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    files = _files(tmp_path / "odd", gentoo_qcow2=b"disk")
    with pytest.raises(StoreError, match=r"'gentoo\.qcow2' is not named gentoo-\[VARIANT-\]YYYYMMDD"):
        publish_files(any_store, "images", "key-odd", files, metadata={"artifact": "gentoo.qcow2"})
    assert latest_set(any_store, "images") is None
