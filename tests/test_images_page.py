"""The "Images" dashboard: the Flask app against a real store (local store server, and S3 on moto)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

from flask import Flask
from werkzeug.serving import make_server

from gentoo_farm.master.images_page import images_app, images_dashboard
from gentoo_farm.store import ArtifactStore, open_store
from gentoo_farm.store.clouds import ACTIVE, UNREACHABLE, CloudImage, now, record_cloud_images
from gentoo_farm.store.local import LocalStore
from gentoo_farm.store.sets import PublishedSet
from tests.browser import artifacts_dir, chromium
from tests.services.s3 import S3StoreSettings, s3_server, s3_settings  # noqa: F401
from tests.services.store import any_settings, any_store, local_settings, publish_files  # noqa: F401


class PageParser(HTMLParser):
    """Rows, links and manifests of the page, as a browser would find them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.latest: list[str] = []
        self.downloads: list[str] = []
        self.manifests: list[str] = []
        self.package_lists: list[str] = []
        self.pre_blocks: list[str] = []
        self.glance: list[str] = []
        self._in_pre = False
        self._in_glance = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "tr" and "farm-image" in classes:
            self.rows.append(attributes["data-name"] or "")
        if tag == "span" and "badge" in classes:
            self.latest.append(self.rows[-1])
        if tag == "a" and "farm-download" in classes:
            self.downloads.append(attributes["href"] or "")
        if tag == "a" and "farm-manifest" in classes:
            self.manifests.append(attributes["href"] or "")
        if tag == "a" and "farm-packages" in classes:
            self.package_lists.append(attributes["href"] or "")
        if tag == "pre":
            self._in_pre = True
            self.pre_blocks.append("")
        if tag == "div" and "farm-glance" in classes:
            self._in_glance = True
            self.glance.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre = False
        if tag == "div" and self._in_glance:
            self._in_glance = False
            self.glance[-1] = " ".join(self.glance[-1].split())

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.pre_blocks[-1] += data
        if self._in_glance:
            self.glance[-1] += data


def app_of(store: ArtifactStore) -> Flask:
    entry = images_dashboard(images_app(store))
    assert (entry["name"], entry["caption"]) == ("images", "Images")
    return entry["app"]


def get_page(store: ArtifactStore, status: int = 200) -> tuple[str, PageParser]:
    response = app_of(store).test_client().get("/index.html")
    assert response.status_code == status
    body = response.get_data(as_text=True)
    parser = PageParser()
    parser.feed(body)
    return body, parser


def publish_image(store: ArtifactStore, tmp_path: Path, name: str, kernel: str) -> PublishedSet:
    disk = tmp_path / f"{hashlib.sha256(name.encode()).hexdigest()[:12]}.qcow2"
    disk.write_bytes(hashlib.sha512(name.encode()).digest() * 4096)
    return publish_files(
        store,
        "images",
        hashlib.sha256(name.encode()).hexdigest(),
        {disk.name: disk},
        metadata={"name": name, "kernel": kernel, "build_id": "image/7"},
        sources={"kernel": "20261124T100000Z-kernelkey"},
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """The page's app on a local HTTP port, for a browser; yields its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/index.html"
    finally:
        server.shutdown()
        thread.join()


def test_page_lists_images_with_working_links(any_store: ArtifactStore, tmp_path: Path) -> None:  # noqa: F811
    older = publish_image(any_store, tmp_path, "gentoo-20261124-amd64", "6.12.0-gentoo")
    newer = publish_image(any_store, tmp_path, "gentoo-20261125-amd64", "6.12.1-gentoo")

    with serving(app_of(any_store)) as url:
        body = fetch(url).decode()
        page = PageParser()
        page.feed(body)
        assert page.rows == ["gentoo-20261125-amd64", "gentoo-20261124-amd64"]
        assert page.latest == ["gentoo-20261125-amd64"]
        assert "6.12.1-gentoo" in body and "6.12.0-gentoo" in body
        for published, download in zip((newer, older), page.downloads, strict=True):
            disk = published.files[0]
            assert hashlib.sha512(fetch(urljoin(url, download))).hexdigest() == disk.sha512
            assert disk.sha512[:16] in body
        manifest = json.loads(fetch(urljoin(url, page.manifests[0])))
    assert (manifest["set_id"], manifest["metadata"]["name"]) == (newer.set_id, "gentoo-20261125-amd64")
    inline = json.loads(page.pre_blocks[0])
    assert inline["sources"] == {"kernel": "20261124T100000Z-kernelkey"}
    assert inline["input_key"] == newer.input_key


def test_each_image_links_the_sha512_the_page_tells_people_to_check(
    any_store: ArtifactStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    published = [
        publish_image(any_store, tmp_path, name, "6.12.1-gentoo")
        for name in ("gentoo-20261124-amd64", "gentoo-20261125-amd64")
    ]

    with serving(app_of(any_store)) as url, chromium() as browser:
        page = browser.new_page()
        page.goto(url)
        assert "sha512sum -c NAME.qcow2.sha512" in page.inner_text(".farm-images")
        links = page.locator("a.farm-sha512")
        texts = links.all_inner_texts()
        hrefs = [links.nth(index).get_attribute("href") or "" for index in range(links.count())]
        downloads = page.locator("a.farm-download")
        disks = [downloads.nth(index).get_attribute("href") or "" for index in range(downloads.count())]
        page.screenshot(path=str(artifacts_dir() / "images-page-sha512-links.png"), full_page=True)

        newest_first = [published_set.files[0] for published_set in reversed(published)]
        assert texts == [f"{disk.name}.sha512" for disk in newest_first]
        for disk, sums_url, disk_url in zip(newest_first, hrefs, disks, strict=True):
            sums = fetch(urljoin(url, sums_url)).decode()
            assert sums == f"{disk.sha512}  {disk.name}\n"
            assert hashlib.sha512(fetch(urljoin(url, disk_url))).hexdigest() == sums.split()[0]


def test_empty_store_says_so(tmp_path: Path) -> None:
    body, page = get_page(LocalStore(tmp_path / "store", "http://127.0.0.1:9"))
    assert page.rows == []
    assert "No images published yet" in body


def test_names_are_escaped(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", "http://127.0.0.1:9")
    publish_image(store, tmp_path, '<img src=x onerror="alert(1)">', "6.12.1")

    body, page = get_page(store)

    assert "<img" not in body
    assert page.rows == ['<img src=x onerror="alert(1)">']


def test_unreadable_store_is_reported(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", "http://127.0.0.1:9")
    broken = tmp_path / "store" / "images" / "20261125T000000Z-abc" / "manifest.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")

    body, _ = get_page(store, status=503)

    assert "The artifact store cannot be read: images/20261125T000000Z-abc/manifest.json" in body
    assert "is not valid JSON" in body


def test_a_signed_image_links_its_digests_and_the_page_names_the_key(
    any_store: ArtifactStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    disk = tmp_path / "gentoo-20261206-amd64.qcow2"
    disk.write_bytes(b"signed image" * 4096)
    # The signature itself is checked in tests/test_signed_releases.py: here, that the page leads to it.
    publish_files(
        any_store, "images", "s" * 64, {disk.name: disk}, metadata={"name": "gentoo-20261206-amd64"},
        sign=lambda text: f"SIGNED BY THE FARM\n{text}",
    )  # fmt: skip
    publish_image(any_store, tmp_path, "gentoo-20261205-amd64", "6.12.1-gentoo")  # an unsigned one
    fingerprint = "0123456789ABCDEF0123456789ABCDEF01234567"
    app = images_app(any_store, fingerprint=fingerprint)

    with serving(app) as url, chromium() as browser:
        page = browser.new_page()
        page.goto(url)
        signing = page.inner_text(".farm-signing")
        assert fingerprint in signing and "gpgv --keyring ./farm.gpg DIGESTS" in signing
        assert f"farm download NAME --key {fingerprint}" in signing
        links = page.locator("a.farm-digests")
        assert links.count() == 1, "only the signed image has DIGESTS"
        digests = fetch(urljoin(url, links.first.get_attribute("href") or "")).decode()
    assert digests.startswith("SIGNED BY THE FARM\n# BLAKE2B HASH\n")
    assert f"{hashlib.sha512(disk.read_bytes()).hexdigest()}  {disk.name}" in digests


def signed_until(url: str) -> datetime:
    """When a SigV4 presigned URL stops working: its X-Amz-Date plus X-Amz-Expires."""
    query = parse_qs(urlsplit(url).query)
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed_at + timedelta(seconds=int(query["X-Amz-Expires"][0]))


def test_private_bucket_links_are_signed_when_followed_not_when_the_page_loaded(
    s3_settings: S3StoreSettings,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = open_store(s3_settings)
    published = publish_image(store, tmp_path, "gentoo-20261206-amd64", "6.12.1-gentoo")
    url_expiry = 1
    app = images_app(store, url_expiry)

    with serving(app) as url:
        with urllib.request.urlopen(url, timeout=30) as response:
            page = PageParser()
            page.feed(response.read().decode())
        time.sleep(url_expiry + 1.5)  # every URL signed while the page was served has expired by now
        with urllib.request.urlopen(urljoin(url, page.downloads[0]), timeout=30) as response:
            body = response.read()
            landed_at = response.geturl()
        followed_at = datetime.now(UTC)

    assert hashlib.sha512(body).hexdigest() == published.files[0].sha512
    assert signed_until(landed_at) > followed_at - timedelta(seconds=1), "signed at the click"
    assert "X-Amz-Signature" not in page.downloads[0], "the page itself holds no expiring URL"


def test_the_redirect_is_as_private_as_the_page(
    s3_settings: S3StoreSettings,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = open_store(s3_settings)
    published = publish_image(store, tmp_path, "gentoo-20261206-amd64", "6.12.1-gentoo")
    client = images_app(store, login_required=True).test_client()
    disk_link = f"/files/{published.files[0].key}"

    assert client.get(disk_link).status_code == 403
    open_client = images_app(store).test_client()
    assert open_client.get(disk_link).status_code == 302
    assert open_client.get("/files/binhost/Packages").status_code == 404, "only image sets are signed"


def test_each_image_shows_its_copy_in_each_cloud(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", "http://127.0.0.1:9")
    published = publish_image(store, tmp_path, "gentoo-20261206-amd64", "6.12.1-gentoo")
    image_id = "7d1e0b7c-2f6a-4f8e-8c3b-52a9d1e0f4a2"
    record_cloud_images(
        store,
        published.set_id,
        {
            "cloud-a": CloudImage(image_id, ACTIVE, now(), "web-download"),
            "cloud-b/RegionTwo": CloudImage("", UNREACHABLE, now(), "Glance is down"),
        },
    )

    _, page = get_page(store)

    assert page.glance == [f"cloud-a: {image_id} active", "cloud-b/RegionTwo: - unreachable"]


def test_an_image_links_its_package_manifest_and_shows_the_package_count(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", "http://127.0.0.1:9")
    name = "gentoo-20261207-amd64"
    disk, packages = tmp_path / f"{name}.qcow2", tmp_path / f"{name}.manifest.json"
    disk.write_bytes(b"qcow2" * 1024)
    packages.write_text(
        json.dumps({"packages": [{"cpv": "net-misc/openssh-9.8_p1"}, {"cpv": "sys-apps/a-1"}]})
    )
    published = publish_files(
        store, "images", "packagekey", {disk.name: disk, packages.name: packages},
        metadata={"name": name, "package_count": 2},
    )  # fmt: skip
    publish_image(store, tmp_path, "gentoo-20261101-amd64", "6.12.1")  # published before package manifests

    body, page = get_page(store)

    assert page.rows == [name, "gentoo-20261101-amd64"]
    (package_manifest,) = [file for file in published.files if file.name == packages.name]
    assert page.package_lists == [store.download_url(package_manifest.key, 60)]
    assert f">{name}.manifest.json</a>" in body and "(2 packages)" in body
