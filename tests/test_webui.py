"""A person in a browser: log in, start a build from the UI, watch it finish."""

from playwright.sync_api import expect

from tests.browser import artifacts_dir, chromium
from tests.farmtest import Farm


def test_log_in_and_start_a_build_from_the_web_ui(running_farm: Farm) -> None:
    with chromium() as browser:
        context = browser.new_context(
            http_credentials={"username": "admin", "password": running_farm.admin_password}
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{running_farm.url}#/builders")
        expect(page.locator("#bb-loginbar-dropdown")).to_have_text("Anonymous")
        page.get_by_role("link", name="overlay", exact=True).click()

        page.click("#bb-loginbar-dropdown")
        page.get_by_text("Login").click()
        expect(page.locator("#bb-loginbar-dropdown")).to_have_text("admin")

        page.get_by_role("button", name="Build overlay").click()
        page.locator('[data-bb-test-id="force-field-reason"]').fill("a person asked for it")
        page.get_by_role("button", name="Start build").click()

        expect(page.get_by_text("build successful").first).to_be_visible(timeout=180_000)
        page.screenshot(path=str(artifacts_dir() / "webui-build-overlay.png"), full_page=True)

        # The image builder's form asks for its typed parameters.
        page.goto(f"{running_farm.url}#/builders")
        page.get_by_role("link", name="image", exact=True).click()
        page.get_by_role("button", name="Build image").click()
        for field in ("reason", "kernel_revision", "extra_packages", "publish"):
            expect(page.locator(f'[data-bb-test-id="force-field-{field}"]')).to_be_visible()
        page.screenshot(path=str(artifacts_dir() / "webui-build-image-form.png"))

    (build,) = running_farm.builds("overlay")
    properties = running_farm.properties(build)
    assert properties["reason"] == "a person asked for it"
    assert properties["owner"] == "admin"
