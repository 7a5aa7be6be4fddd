"""A person in a browser: log in, start an image build from the UI, watch it finish."""

from playwright.sync_api import expect

from tests.browser import artifacts_dir, chromium
from tests.farmtest import Farm


def test_log_in_and_build_an_image_from_the_web_ui(running_farm: Farm) -> None:
    with chromium() as browser:
        context = browser.new_context(
            http_credentials={"username": "admin", "password": running_farm.admin_password}
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{running_farm.url}#/builders")
        expect(page.locator("#bb-loginbar-dropdown")).to_have_text("Anonymous")
        page.get_by_role("link", name="image", exact=True).click()

        page.click("#bb-loginbar-dropdown")
        page.get_by_text("Login").click()
        expect(page.locator("#bb-loginbar-dropdown")).to_have_text("admin")

        page.get_by_role("button", name="Build image").click()
        page.locator('[data-bb-test-id="force-field-reason"]').fill("a person asked for it")
        page.locator('[data-bb-test-id="force-field-extra_packages"]').fill("app-misc/farm-hello")
        page.get_by_role("button", name="Start build").click()

        expect(page.get_by_text("build successful").first).to_be_visible(timeout=180_000)
        page.screenshot(path=str(artifacts_dir() / "webui-build-image.png"), full_page=True)

    (build,) = running_farm.builds("image")
    properties = running_farm.properties(build)
    assert properties["reason"] == "a person asked for it"
    assert properties["extra_packages"] == "app-misc/farm-hello"
    assert properties["owner"] == "admin"
