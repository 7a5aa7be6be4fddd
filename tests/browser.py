"""Headless Debian Chromium, driven by Playwright, for tests that look at the web UI like a person."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium keeps calling home, which this machine's closed network refuses.
QUIET_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> Path:
    """Where screenshots go: $FARM_TEST_ARTIFACTS or test-artifacts/ in the checkout."""
    path = Path(os.environ.get("FARM_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
