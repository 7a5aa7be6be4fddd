"""A farm with ``anonymous_view = false``, as `farm up` runs it: what a visitor who has not logged in sees,
and what the master's log keeps of signed store requests."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from gentoo_farm.config import load_config
from gentoo_farm.farmdir import FarmDir
from gentoo_farm.store import open_store
from gentoo_farm.store.local import LocalStore
from tests.browser import artifacts_dir, chromium
from tests.farmtest import Farm, farm_command, init_farm, set_option
from tests.services.store import publish_files

IMAGE_NAME = "gentoo-20261125-amd64"


@pytest.fixture(scope="module")
def private_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Farm, LocalStore]]:
    """A running farm only logged-in users may look at, its store holding one published image."""
    farm = init_farm(tmp_path_factory.mktemp("private") / "farm")
    set_option(farm.root, "master", "anonymous_view", "false")
    store = open_store(load_config(farm.root).store)
    assert isinstance(store, LocalStore)
    disk = farm.root / "disk.qcow2"
    disk.write_bytes(b"qcow2 image bytes" * 1000)
    publish_files(
        store, "images", "k" * 64, {"disk.qcow2": disk}, metadata={"name": IMAGE_NAME, "build": "image/7"}
    )
    farm_command("--farm", str(farm.root), "up")
    try:
        yield farm, store
    finally:
        farm_command("--farm", str(farm.root), "down", check=False)


def test_the_images_page_and_its_links_need_a_login(private_farm: tuple[Farm, LocalStore]) -> None:
    farm, _ = private_farm
    with chromium() as browser:
        context = browser.new_context(http_credentials={"username": "admin", "password": farm.admin_password})
        page = context.new_page()
        page.set_default_timeout(30_000)

        page.goto(f"{farm.url}#/images")
        expect(page.locator("#bb-loginbar-dropdown")).to_have_text("Anonymous")
        expect(page.get_by_text("Log in to see the images this farm has published.")).to_be_visible()
        expect(page.locator("a.farm-download")).to_have_count(0)
        expect(page.locator("a.farm-manifest")).to_have_count(0)
        assert IMAGE_NAME not in page.content()
        page.screenshot(path=str(artifacts_dir() / "images-page-anonymous.png"), full_page=True)

        page.click("#bb-loginbar-dropdown")
        page.get_by_text("Login").click()
        expect(page.locator("#bb-loginbar-dropdown")).to_have_text("admin")
        page.goto(f"{farm.url}#/images")
        expect(page.locator("tr.farm-image")).to_have_attribute("data-name", IMAGE_NAME)
        expect(page.locator("a.farm-download")).to_have_count(1)
        # The build that made the image, as a route of Buildbot's UI.
        farm.login()
        image_builder = farm.api("builders/image")["builders"][0]["builderid"]
        expect(page.locator("a.farm-build")).to_have_text("image #7")
        expect(page.locator("a.farm-build")).to_have_attribute("href", f"#/builders/{image_builder}/builds/7")
        page.screenshot(path=str(artifacts_dir() / "images-page-logged-in.png"), full_page=True)


def _put(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"If-None-Match": "*"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_signed_store_requests_leave_no_signature_in_twistd_log(
    private_farm: tuple[Farm, LocalStore],
) -> None:
    farm, store = private_farm
    urls = [store.upload_url(f"kernel/20261125T000000Z-k/file-{n}", 600, size=4) for n in range(3)]
    assert _put(urls[0], b"four") == 201
    assert _put(urls[0], b"four") == 412, "the spent URL is refused"
    assert _put(urls[1], b"too long") == 403, "the size it was signed for is enforced"
    # A GET through a signed URL (someone pasting it into a browser) carries the query too.
    with urllib.request.urlopen(urls[0], timeout=30) as response:
        assert response.read() == b"four"
    assert _put(urls[2], b"four") == 201
    log = FarmDir(farm.root).master_log
    deadline = time.monotonic() + 30
    while "/kernel/20261125T000000Z-k/file-0" not in log.read_text():
        assert time.monotonic() < deadline, "the store server's requests never reached twistd.log"
        time.sleep(0.5)

    text = log.read_text()
    signatures = [url.rsplit("signature=", 1)[1] for url in urls]
    assert [signature for signature in signatures if signature in text] == []
    assert "signature=" not in text and "expires=" not in text
