"""A private app in a real headless Chromium: sent to the login, in, a classification, out.

The page's own checks are ``test_browser.py``'s; this one is about the way in
and out. It runs where that one does (Debian's Chromium, through Playwright).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.access.credentials import hash_password
from tests.support.harness import serving
from tests.support.photos import CAT_PHOTO
from tests.test_browser import DESKTOP, assert_shows, browser, page_on, screenshot, upload

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

__all__ = ["browser"]  # the fixture, from test_browser.py
PASSWORD = "a password for the browser"


@pytest.fixture(scope="module")
def private_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("private-page") / "app.log"
    with serving(model_path, log, USERS=f"alice:{hash_password(PASSWORD)}") as instance:
        yield instance.url


def log_in(page: Page, password: str) -> None:
    page.get_by_label("Name").fill("alice")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_a_visitor_logs_in_classifies_and_logs_out(
    browser: Browser, private_url: str, model_path: Path
) -> None:
    with page_on(browser, private_url, DESKTOP) as page:
        expect(page).to_have_url(f"{private_url}login")
        log_in(page, "not the password")
        expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
        screenshot(page, "private-login-refused")
        log_in(page, PASSWORD)
        expect(page).to_have_url(private_url)
        upload(page, CAT_PHOTO)
        page.get_by_role("button", name="Classify").click()
        assert_shows(page, model_path, CAT_PHOTO)
        screenshot(page, "private-classified")
        page.locator("#logout").click()
        expect(page).to_have_url(f"{private_url}login")
        page.goto(private_url)
        expect(page).to_have_url(f"{private_url}login")
        assert not [c for c in page.context.cookies() if c["name"] == "session"]
