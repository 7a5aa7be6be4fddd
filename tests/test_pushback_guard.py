"""A hostile worker's push-back: it can add distfiles the mirror lacks, only as its Manifest vouches for
them, and can replace nothing (not an existing distfile, not ``layout.conf``), on both backends."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from gentoo_farm.store import ArtifactStore, StoreError
from gentoo_farm.store.binhost import (
    LAYOUT_CONF,
    LAYOUT_CONF_KEY,
    PushbackCandidates,
    merge_distfiles,
    pushback_uploads,
)
from tests.services.store import put_snapshot
from tests.world.repository import manifest_line

pytest_plugins = ["tests.services.store"]


def farm_worker(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "farm-worker"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def distdir_and_repository(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Path]:
    """A DISTDIR holding ``files`` and an ebuild repository whose Manifest vouches for each of them."""
    distdir, repository = tmp_path / "distdir", tmp_path / "repo"
    distdir.mkdir()
    (repository / "app-misc" / "x").mkdir(parents=True)
    lines = []
    for name, data in files.items():
        (distdir / name).write_bytes(data)
        lines.append(manifest_line(distdir / name))
    (repository / "app-misc" / "x" / "Manifest").write_text("".join(lines))
    return distdir, repository


def candidate(path: Path, data: bytes | None = None) -> dict[str, object]:
    """What list-new reports for a distfile: where it is and the DIST line of ``data`` (its content)."""
    data = path.read_bytes() if data is None else data
    return {
        "file": str(path),
        "size": len(data),
        "sha512": hashlib.sha512(data).hexdigest(),
        "blake2b": hashlib.blake2b(data).hexdigest(),
    }


def put(url: str, data: bytes) -> int:
    # As farm-worker upload sends it (urllib's default form content type makes moto drop the body).
    headers = {"If-None-Match": "*", "Content-Type": "application/octet-stream"}
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_list_new_offers_only_what_a_manifest_vouches_for(local_settings, tmp_path: Path) -> None:
    distdir, repository = distdir_and_repository(tmp_path, {"a-1.tar.gz": b"a" * 100})
    (distdir / "stray-1.tar.gz").write_bytes(b"no Manifest names me")

    result = farm_worker(
        "list-new", "--distdir", distdir, "--mirror", f"{local_settings.public_url}/distfiles",
        "--repository", repository, "--output", tmp_path / "new.json",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "new.json").read_text())["distfiles"]
    assert found == {"a-1.tar.gz": candidate(distdir / "a-1.tar.gz")}
    assert "no Manifest DIST line vouches for the distfile stray-1.tar.gz" in result.stdout


def test_a_push_back_adds_new_vouched_distfiles_and_replaces_nothing(
    any_store: ArtifactStore, tmp_path: Path
) -> None:
    any_store.put_bytes(LAYOUT_CONF_KEY, LAYOUT_CONF)
    any_store.put_bytes("distfiles/old-1.tar.gz", b"the mirror's own copy")
    distdir, repository = distdir_and_repository(
        tmp_path, {"new-1.tar.gz": b"n" * 64, "old-1.tar.gz": b"a worker's replacement", "bad-1.tar.gz": b"c"}
    )
    snapshot = put_snapshot(any_store, repository)
    # The worker uploads other bytes than the DIST line says, and invents a line for a name of its own.
    (distdir / "bad-1.tar.gz").write_bytes(b"b")
    (distdir / "planted-1.tar.gz").write_bytes(b"a kernel source of the worker's making")
    token = uuid.uuid4().hex
    listed = {
        "packages_index": "",
        "binpkgs": {},
        "distfiles": {
            "new-1.tar.gz": candidate(distdir / "new-1.tar.gz"),
            "old-1.tar.gz": candidate(distdir / "old-1.tar.gz"),
            "bad-1.tar.gz": candidate(distdir / "bad-1.tar.gz", b"c"),
            "planted-1.tar.gz": candidate(distdir / "planted-1.tar.gz"),
        },
    }
    candidates = PushbackCandidates.from_json(json.dumps(listed), "x")
    uploads = pushback_uploads(any_store, token, candidates, 600, snapshot)

    assert str(distdir / "old-1.tar.gz") not in uploads, "no URL for a name the mirror has"
    assert str(distdir / "planted-1.tar.gz") not in uploads, "no URL for what the snapshot does not vouch for"
    assert pushback_uploads(any_store, "t2", candidates, 600) == {}, "without a snapshot no distfile goes"
    assert all(f"/incoming/{token}/" in url for url in uploads.values()), "every URL points into staging"
    for file, url in uploads.items():
        assert put(url, Path(file).read_bytes()) in (200, 201)
    # A spent URL writes nothing more: the staged copy the master is about to check stays as it was.
    assert put(uploads[str(distdir / "new-1.tar.gz")], b"x" * 64) == 412
    assert not any_store.exists("distfiles/new-1.tar.gz"), "nothing lands before the master checked it"

    merged = merge_distfiles(any_store, token)

    assert merged.added == ["new-1.tar.gz"], merged
    assert merged.rejected == ["bad-1.tar.gz: SHA512 does not match its DIST line"]
    assert any_store.get_bytes("distfiles/new-1.tar.gz") == b"n" * 64
    assert any_store.get_bytes("distfiles/old-1.tar.gz") == b"the mirror's own copy"
    assert not any_store.exists("distfiles/bad-1.tar.gz")
    assert any_store.get_bytes(LAYOUT_CONF_KEY) == LAYOUT_CONF
    assert [info.key for info in any_store.list(f"incoming/{token}/")] == []


def test_the_mirror_description_is_no_distfile(any_store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "layout.conf").write_bytes(b"[structure]\n0=filename-hash BLAKE2B 8\n")
    listed = {
        "packages_index": "",
        "binpkgs": {},
        "distfiles": {"layout.conf": candidate(tmp_path / "layout.conf")},
    }
    with pytest.raises(StoreError, match=r"'layout\.conf' is not a distfile name"):
        pushback_uploads(any_store, "t1", PushbackCandidates.from_json(json.dumps(listed), "x"), 600, "x")
    assert not any_store.exists(LAYOUT_CONF_KEY)
