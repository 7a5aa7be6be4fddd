"""`farm images` and `farm download` against both store backends (called through their run())."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from gentoo_farm.catalog import find_image
from gentoo_farm.cli import CommandError
from gentoo_farm.commands import download, images
from gentoo_farm.store import open_store
from gentoo_farm.store.clouds import CloudImage, now, read_cloud_images, record_cloud_images, record_rotated
from tests.farmtest import FARM, free_port
from tests.services.s3 import make_bucket_public
from tests.services.store import publish_files

pytest_plugins = ["tests.services.store"]

DISK = os.urandom(3 * 1024 * 1024 + 17)


def _parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def published(any_settings, tmp_path: Path) -> SimpleNamespace:
    store = open_store(any_settings)
    (tmp_path / "gentoo-20261125-amd64.qcow2").write_bytes(DISK)
    (tmp_path / "old.qcow2").write_bytes(b"older image")
    publish_files(
        store,
        "images",
        "old",
        {"gentoo-20261124-amd64.qcow2": tmp_path / "old.qcow2"},
        set_id="20261124T000000Z-old",
    )
    publish_files(
        store,
        "images",
        "new",
        {"gentoo-20261125-amd64.qcow2": tmp_path / "gentoo-20261125-amd64.qcow2"},
        metadata={"kernel": "6.6.30-gentoo", "name": "gentoo-20261125-amd64"},
    )
    return SimpleNamespace(store=any_settings)


def test_images_lists_what_was_published(published, capsys) -> None:
    assert images.run(_parse(images, "--json"), published) == 0
    listed = json.loads(capsys.readouterr().out)

    assert [image["name"] for image in listed] == ["gentoo-20261125-amd64", "gentoo-20261124-amd64"]
    newest = listed[0]
    assert newest["latest"] and newest["kernel"] == "6.6.30-gentoo" and newest["size"] == len(DISK)
    assert newest["sha512"] == hashlib.sha512(DISK).hexdigest()
    # The link works for a person: the store server (local) or a presigned URL (private bucket).
    assert urllib.request.urlopen(newest["url"], timeout=30).read() == DISK
    assert ("X-Amz-Signature=" in newest["url"]) == (published.store.type == "s3")

    assert images.run(_parse(images), published) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["NAME", "DATE", "KERNEL", "SIZE", "SHA512"]
    assert table[1].startswith("gentoo-20261125-amd64 (latest)") and "3.0 MiB" in table[1]


def test_a_newer_worker_image_is_listed_as_one_but_latest_stays_the_cloud_image(
    published, tmp_path: Path, capsys
) -> None:
    (tmp_path / "worker.qcow2").write_bytes(b"worker image")
    publish_files(
        open_store(published.store),
        "worker-images",
        "worker",
        {"gentoo-farm-worker-20261126-amd64.qcow2": tmp_path / "worker.qcow2"},
        metadata={
            "name": "gentoo-farm-worker-20261126-amd64",
            "artifact": "gentoo-farm-worker-20261126-amd64.qcow2",
        },
    )

    assert images.run(_parse(images, "--json"), published) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(image["name"], image["latest"], image["kind"]) for image in listed] == [
        ("gentoo-20261125-amd64", True, "images"),
        ("gentoo-20261124-amd64", False, "images"),
        ("gentoo-farm-worker-20261126-amd64", True, "worker-images"),
    ]
    store = open_store(published.store)
    assert find_image(store, "latest").name == "gentoo-20261125-amd64"
    assert find_image(store, "gentoo-farm-worker-20261126-amd64").kind == "worker-images"


def test_images_lists_each_cloud_copy(published, capsys) -> None:
    store = open_store(published.store)
    old_id, new_id = "0f2c6a3e-6b7d-4c1e-9d51-3a0c2b6f1e11", "7d1e0b7c-2f6a-4f8e-8c3b-52a9d1e0f4a2"
    # What the Glance step writes: the old image published, then rotated out by the new one.
    record_cloud_images(store, "20261124T000000Z-old", {"cloud-a": CloudImage(old_id, "active", now())})
    new_set = find_image(store, "latest")
    record_cloud_images(
        store,
        new_set.set_id,
        {
            "cloud-a": CloudImage(new_id, "active", now(), "web-download"),
            "cloud-b/RegionTwo": CloudImage("", "unreachable", now(), "Glance is down"),
        },
    )
    record_rotated(store, "cloud-a", {old_id})

    assert images.run(_parse(images, "--json"), published) == 0
    newest, oldest = json.loads(capsys.readouterr().out)

    def listed(image: dict) -> dict[str, tuple[str, str]]:
        return {
            cloud: (entry["image_id"], entry["status"]) for cloud, entry in image["glance_images"].items()
        }

    assert listed(newest) == {"cloud-a": (new_id, "active"), "cloud-b/RegionTwo": ("", "unreachable")}
    assert listed(oldest) == {"cloud-a": (old_id, "deleted")}

    assert images.run(_parse(images), published) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("gentoo-20261125-amd64 (latest)")
    assert table[2].split() == ["glance", "cloud-a", new_id, "active"]
    assert table[3].split()[:4] == ["glance", "cloud-b/RegionTwo", "-", "unreachable"]
    assert table[3].endswith("(Glance is down)")
    assert table[4].startswith("gentoo-20261124-amd64")
    assert table[5].split()[:4] == ["glance", "cloud-a", old_id, "deleted"]


def test_a_failed_attempt_leaves_a_published_image_listed(published) -> None:
    store = open_store(published.store)
    set_id = find_image(store, "latest").set_id
    image_id = "7d1e0b7c-2f6a-4f8e-8c3b-52a9d1e0f4a2"
    record_cloud_images(store, set_id, {"cloud-a": CloudImage(image_id, "active", now())})
    record_cloud_images(store, set_id, {"cloud-a": CloudImage("", "unreachable", now(), "down")})

    assert read_cloud_images(store, set_id)["cloud-a"].image_id == image_id


def test_download_latest_verifies_and_says_where(published, tmp_path: Path, capsys) -> None:
    assert download.run(_parse(download, "latest", str(tmp_path / "dl")), published) == 0

    target = tmp_path / "dl" / "gentoo-20261125-amd64.qcow2"
    assert target.read_bytes() == DISK
    assert f"{target} (3.0 MiB, sha512 verified; the signature was not checked" in capsys.readouterr().out
    assert target.with_name(target.name + ".sha512").read_text().startswith(hashlib.sha512(DISK).hexdigest())


def test_download_resumes_a_partial_file(published, tmp_path: Path, capsys) -> None:
    (tmp_path / "dl").mkdir()
    partial = tmp_path / "dl" / "gentoo-20261125-amd64.qcow2.part"
    partial.write_bytes(DISK[:1_000_000])

    assert download.run(_parse(download, "gentoo-20261125-amd64", str(tmp_path / "dl")), published) == 0

    err = capsys.readouterr().err
    assert "resuming gentoo-20261125-amd64.qcow2.part at" in err
    # Not a terminal: the meter's lines, as Glance uploads print them; the last one at the end.
    assert err.splitlines()[-1].startswith("downloading 3.0 MiB / 3.0 MiB (100 %), ")
    assert (tmp_path / "dl" / "gentoo-20261125-amd64.qcow2").read_bytes() == DISK
    assert not partial.exists()


def test_a_corrupt_partial_file_fails_the_checksum_and_is_removed(published, tmp_path: Path) -> None:
    (tmp_path / "dl").mkdir()
    partial = tmp_path / "dl" / "gentoo-20261125-amd64.qcow2.part"
    partial.write_bytes(b"\0" * 1_000_000)  # right length, wrong bytes: only the sha512 can tell

    with pytest.raises(CommandError, match="sha512 does not match"):
        download.run(_parse(download, "latest", str(tmp_path / "dl")), published)

    assert not partial.exists() and not (tmp_path / "dl" / "gentoo-20261125-amd64.qcow2").exists()


def test_download_of_an_unknown_image_says_how_to_list(published, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"no published image named 'gentoo-1999'.*farm images"):
        download.run(_parse(download, "gentoo-1999", str(tmp_path)), published)


def _public_url(settings) -> str:
    """The store's URL for anyone: the store server's, or a bucket made public."""
    return settings.public_url if settings.type == "local" else make_bucket_public(settings)


def _farm_download_anonymously(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`farm download` as someone with only a URL: no farm.toml, no AWS or OpenStack settings."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    return subprocess.run(
        [FARM, "download", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def test_anyone_with_the_public_url_downloads_the_newest_image(published, tmp_path: Path) -> None:
    person = tmp_path / "person"
    person.mkdir()
    (person / "gentoo-20261125-amd64.qcow2.part").write_bytes(DISK[:1_000_000])
    url = _public_url(published.store) + "/images/"

    done = _farm_download_anonymously(person, url)

    assert done.returncode == 0, done.stdout + done.stderr
    target = person / "gentoo-20261125-amd64.qcow2"
    assert target.read_bytes() == DISK
    assert "resuming gentoo-20261125-amd64.qcow2.part at" in done.stderr
    assert f"{target} (3.0 MiB, sha512 verified" in done.stdout
    assert target.with_name(target.name + ".sha512").read_text().startswith(hashlib.sha512(DISK).hexdigest())


def test_a_public_url_without_a_farm_store_says_so(local_settings, tmp_path: Path) -> None:
    empty = _farm_download_anonymously(tmp_path, local_settings.public_url)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (
        f"farm download: error: {local_settings.public_url}: the store has published no image yet"
    )
    nobody = _farm_download_anonymously(tmp_path, f"http://127.0.0.1:{free_port()}/")
    assert nobody.returncode == 2
    assert "farm download: error: http://127.0.0.1:" in nobody.stderr and "cannot reach" in nobody.stderr
    assert "Traceback" not in empty.stderr + nobody.stderr
