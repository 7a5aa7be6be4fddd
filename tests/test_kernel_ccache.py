"""The kernel ccache the farm shares with workers that start empty (gentoo_farm/kernel_ccache.py).

The toolkit's two stages run as a worker runs them, against a real store server: a ccache made by a
real compile is packed only after misses (without its settings), uploaded through a create-only
signed URL and unpacked into an empty ccache directory, where the same compile then hits; a missing,
truncated, corrupt or wrong-checksum tarball is skipped with a warning and the stage succeeds. The
master's pointer moves forward only, on both store backends.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from gentoo_farm.kernel_ccache import (
    CcachePointer,
    advance_pointer,
    pointer_key,
    read_pointer,
    tarball_key,
    verify_tarball,
)
from gentoo_farm.store import ArtifactStore, StoreError, open_store
from tests import cache, debian
from tests.world.repository import manifest_line
from tests.world.server import WorldServer
from tests.world.stages import run_stage

pytest_plugins = ["tests.services.store"]

SOURCE = "int answer(void) { return 42; }\n"


def _compile(work: Path, ccache_dir: Path) -> dict[str, int]:
    """Compile the same small file through ccache with ``ccache_dir``; return ccache's counters."""
    environment = {**os.environ, "CCACHE_DIR": str(ccache_dir)}
    (work / "answer.c").write_text(SOURCE)
    subprocess.run(["ccache", "--zero-stats"], env=environment, check=True, capture_output=True, timeout=60)
    subprocess.run(
        ["ccache", "gcc", "-c", "answer.c", "-o", "answer.o"],
        cwd=work,
        env=environment,
        check=True,
        timeout=60,
    )
    stats = subprocess.run(
        ["ccache", "--print-stats"], env=environment, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    counters = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    return {name: int(value) for name, value in counters.items() if value.strip().isdigit()}


def _offer(tmp_path: Path, store: ArtifactStore, key: str, sha256: str, size: int) -> Path:
    offer = tmp_path / "kernel-ccache.json"
    offer.write_text(json.dumps({"url": store.download_url(key, 600), "sha256": sha256, "size": size}))
    return offer


def test_a_packed_ccache_travels_through_the_store_and_hits_on_an_empty_worker(
    local_settings, tmp_path: Path
) -> None:
    store = open_store(local_settings)
    first_worker, fresh_worker = tmp_path / "first", tmp_path / "fresh"
    first_worker.mkdir()
    fresh_worker.mkdir()
    assert _compile(first_worker, first_worker / "ccache")["cache_miss"] == 1
    tarball = first_worker / "kernel-ccache.tar.zst"

    (first_worker / "ccache" / "ccache.conf").write_text("prefix_command = /bin/false\n")
    packed = run_stage("kernel-ccache-pack", "--ccache-dir", first_worker / "ccache", "--output", tarball)
    assert packed.returncode == 0, packed.stderr
    assert "after 1 misses" in packed.stdout
    sha256, size = packed.result["kernel_ccache_sha256"], packed.result["kernel_ccache_size"]
    assert sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest() and size == tarball.stat().st_size
    key = tarball_key("amd64", str(sha256))
    uploads = tmp_path / "upload.json"
    uploads.write_text(json.dumps({str(tarball): store.upload_url(key, 600, int(str(size)))}))
    uploaded = run_stage("upload", "--map", uploads)
    assert uploaded.returncode == 0, uploaded.stderr
    verify_tarball(store, key, str(sha256), int(str(size)))

    offer = _offer(tmp_path, store, key, str(sha256), int(str(size)))
    seeded = run_stage("kernel-ccache-seed", "--map", offer, "--ccache-dir", fresh_worker / "ccache")
    assert seeded.returncode == 0, seeded.stderr
    assert seeded.result == {"kernel_ccache_seeded": True}
    assert not (fresh_worker / "ccache" / "ccache.conf").exists()  # settings are not shared
    counters = _compile(fresh_worker, fresh_worker / "ccache")
    assert counters["direct_cache_hit"] == 1 and counters["cache_miss"] == 0

    # A build that compiled nothing new packs nothing: the shared cache has it all.
    tarball.unlink()
    unchanged = run_stage("kernel-ccache-pack", "--ccache-dir", fresh_worker / "ccache", "--output", tarball)
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.result == {"kernel_ccache_packed": False}
    assert not tarball.exists()

    # A worker that kept its own ccache does not fetch the shared one over it.
    again = run_stage("kernel-ccache-seed", "--map", offer, "--ccache-dir", first_worker / "ccache")
    assert again.result == {"kernel_ccache_seeded": False}
    assert "kept its own ccache" in again.stdout


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong sha256", "not a tarball"])
def test_a_damaged_shared_ccache_is_skipped_with_a_warning(
    local_settings, tmp_path: Path, damage: str
) -> None:
    store = open_store(local_settings)
    ccache_dir = tmp_path / "ccache-source"
    (ccache_dir / "a" / "b").mkdir(parents=True)
    (ccache_dir / "a" / "b" / "entryR").write_bytes(os.urandom(200_000))
    tarball = tmp_path / "kernel-ccache.tar.zst"
    subprocess.run(["tar", "-C", ccache_dir, "--zstd", "-cf", tarball, "."], check=True, timeout=60)
    data = tarball.read_bytes()
    sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    if damage == "truncated":
        data = data[: size // 2]
    elif damage == "not a tarball":
        data = os.urandom(size)
        sha256 = hashlib.sha256(data).hexdigest()  # the pointer vouches for it; unpacking refuses it
    key = tarball_key("amd64", sha256)
    if damage != "missing":
        store.put_bytes(key, data)
    offer = _offer(tmp_path, store, key, "0" * 64 if damage == "wrong sha256" else sha256, size)
    worker_ccache = tmp_path / "worker" / "ccache"

    seeded = run_stage("kernel-ccache-seed", "--map", offer, "--ccache-dir", worker_ccache)

    assert seeded.returncode == 0, seeded.stderr
    assert seeded.result == {"kernel_ccache_seeded": False}
    assert "warning: shared kernel ccache not used, the kernel compiles cold" in seeded.stdout
    assert "signature" not in seeded.stdout  # a signed URL is a credential, even in a warning
    assert worker_ccache.is_dir() and not any(worker_ccache.iterdir())
    assert sorted(path.name for path in worker_ccache.parent.iterdir()) == ["ccache"]


def test_no_shared_ccache_yet_compiles_cold(tmp_path: Path) -> None:
    offer = tmp_path / "kernel-ccache.json"
    offer.write_text("{}")
    seeded = run_stage("kernel-ccache-seed", "--map", offer, "--ccache-dir", tmp_path / "ccache")
    assert seeded.returncode == 0, seeded.stderr
    assert seeded.result == {"kernel_ccache_seeded": False}
    assert "no kernel build has shared its ccache yet" in seeded.stdout


def test_the_pointer_moves_forward_only(any_store: ArtifactStore) -> None:
    def pointer(build: int) -> CcachePointer:
        sha256 = hashlib.sha256(str(build).encode()).hexdigest()
        any_store.put_bytes(tarball_key("amd64", sha256), b"a packed ccache")
        return CcachePointer(tarball_key("amd64", sha256), sha256, 100 + build, build)

    def tarballs() -> list[str]:
        return [
            info.key for info in any_store.list("caches/kernel-ccache/amd64/") if info.key.endswith(".zst")
        ]

    assert read_pointer(any_store, "amd64") is None
    fifth = pointer(5)
    assert advance_pointer(any_store, "amd64", fifth)
    # A build that started earlier but finished later must not hand later builds its older cache.
    assert not advance_pointer(any_store, "amd64", pointer(3))
    assert not advance_pointer(any_store, "amd64", fifth)
    assert read_pointer(any_store, "amd64") == fifth
    # The store keeps the one tarball the pointer names: each is a whole kernel's ccache.
    assert tarballs() == [fifth.key]
    seventh = pointer(7)
    assert advance_pointer(any_store, "amd64", seventh)
    assert read_pointer(any_store, "amd64") == seventh
    assert json.loads(any_store.get_bytes(pointer_key("amd64")))["build"] == 7
    assert tarballs() == [seventh.key]


def test_an_upload_that_is_not_what_the_worker_packed_is_not_shared(any_store: ArtifactStore) -> None:
    sha256 = hashlib.sha256(b"packed").hexdigest()
    key = tarball_key("amd64", sha256)
    with pytest.raises(StoreError, match="was not uploaded"):
        verify_tarball(any_store, key, sha256, 6)
    any_store.put_bytes(key, b"tampered")
    with pytest.raises(StoreError, match="not the 6 bytes"):
        verify_tarball(any_store, key, sha256, 6)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_kernel_built_on_an_empty_worker_hits_the_ccache_from_the_store(
    local_settings, tmp_path: Path
) -> None:
    """The default config on a worker whose cache_dir is empty: its ccache comes from the store.

    The shared ccache is the test cache's (test_kernel_build fills it; on a fresh machine this test
    compiles cold once), packed and uploaded by the stages, as a kernel build with misses does.
    """
    store = open_store(local_settings)
    earlier_worker, empty_worker = tmp_path / "earlier", tmp_path / "empty"
    cache.merge_tree(cache.directory(cache.KERNEL_CCACHE), earlier_worker / "ccache")
    _compile(earlier_worker, earlier_worker / "ccache")  # a miss, so the stage packs it
    tarball = earlier_worker / "kernel-ccache.tar.zst"
    packed = run_stage("kernel-ccache-pack", "--ccache-dir", earlier_worker / "ccache", "--output", tarball)
    assert packed.returncode == 0, packed.stderr
    sha256, size = str(packed.result["kernel_ccache_sha256"]), int(str(packed.result["kernel_ccache_size"]))
    key = tarball_key("amd64", sha256)
    uploads = tmp_path / "upload.json"
    uploads.write_text(json.dumps({str(tarball): store.upload_url(key, 600, size)}))
    assert run_stage("upload", "--map", uploads).returncode == 0

    ccache_dir = empty_worker / "cache" / "ccache"
    seeded = run_stage(
        "kernel-ccache-seed", "--map", _offer(tmp_path, store, key, sha256, size), "--ccache-dir", ccache_dir
    )
    assert seeded.result == {"kernel_ccache_seeded": True}, seeded.stdout
    mirror = tmp_path / "mirror"
    source = debian.kernel_source_tarball(mirror / "distfiles")
    with WorldServer(tmp_path) as server:
        built = run_stage(
            "kernel",
            "--mirror", f"{server.url}/mirror",
            "--source-dist", manifest_line(source),
            "--config", Path(__file__).parent.parent / "gentoo_farm/defaults/kernel-config/config",
            "--output", tmp_path / "vmlinuz.tar.zst",
            "--work-dir", empty_worker / "cache" / "kernel",
            "--ccache-dir", ccache_dir,
            timeout=2400,
        )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    assert built.result["kernel_build_tree"] == "fresh"
    hits, misses = (
        int(str(built.result["kernel_ccache_hits"])),
        int(str(built.result["kernel_ccache_misses"])),
    )
    assert hits > 10 * misses, (hits, misses)
