"""Fixtures: one Chromium for the session, a page per test that records
console errors, and the service under test (started by scripts/browser)."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

BASE = os.environ.get("EXECUTORD_UI_BASE", "http://127.0.0.1:8080").rstrip("/")
OPERATOR = os.environ.get("EXECUTORD_UI_OPERATOR_TOKEN", "")
VIEWER = os.environ.get("EXECUTORD_UI_VIEWER_TOKEN", "")
SHOTS = Path(os.environ.get("EXECUTORD_UI_SCREENSHOTS", "target/browser-screenshots"))
CHROMIUM = os.environ.get("EXECUTORD_CHROMIUM", "/usr/bin/chromium")

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 800}

# The browser reports every HTTP error answer as a console error; these
# statuses are answers the console expects and handles (a 401 asks for a
# token, a 404 means an optional endpoint is absent, 409 and 422 are shown
# to the user).
EXPECTED_HTTP = re.compile(
    r"Failed to load resource: the server responded with a status of (401|404|409|422)"
)


@pytest.fixture(scope="session")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


class Console:
    """A page's console errors and uncaught exceptions."""

    def __init__(self, page):
        self.errors = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _on_console(self, msg):
        if msg.type == "error" and not EXPECTED_HTTP.search(msg.text):
            self.errors.append(f"console: {msg.text}")

    def assert_clean(self):
        assert self.errors == [], "\n".join(self.errors)


def new_page(browser, viewport=DESKTOP):
    context = browser.new_context(viewport=viewport, base_url=BASE)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.console = Console(page)
    return page


def sign_in(page, token):
    """Opens the console; enters `token` when it asks for one."""
    page.goto("/ui")
    if token:
        page.get_by_label("Token", exact=True).fill(token)
        page.get_by_role("button", name="Sign in").click()
    page.locator("#who .role").wait_for()


def shot(page, name):
    width = page.viewport_size["width"]
    page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)


@pytest.fixture
def operator(browser):
    page = new_page(browser)
    sign_in(page, OPERATOR)
    yield page
    page.console.assert_clean()
    page.context.close()
