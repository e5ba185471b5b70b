"""The page in a real headless Chromium: what a visitor sees and clicks.

Playwright drives Debian's Chromium (``apt-get install chromium``), never a
browser of its own, so nothing is downloaded. Screenshots of each check go to
``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from classifier.assets import ROOT
from classifier.model import Classifier
from tests.support.images import save_heic, write_text_as_jpeg
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium", allow_module_level=True)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts"
# Generous: the first inference, on a busy two-core machine, can take seconds.
TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Screen:
    """A viewport the page must work in; ``name`` prefixes its screenshots."""

    name: str
    width: int
    height: int
    mobile: bool


DESKTOP = Screen("desktop", 1280, 900, mobile=False)
PHONE = Screen("phone", 390, 844, mobile=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def page_on(browser: Browser, url: str, screen: Screen) -> Iterator[Page]:
    """A fresh page at ``screen``'s size; any uncaught script error fails the test."""
    context = browser.new_context(
        viewport={"width": screen.width, "height": screen.height},
        is_mobile=screen.mobile,
        has_touch=screen.mobile,
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(url)
        yield page
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


def upload(page: Page, path: Path) -> None:
    """Choose ``path`` in the Photo component and wait until the page has taken it."""
    photo = page.get_by_test_id("image")
    photo.get_by_test_id("file-upload").set_input_files(path)
    expect(photo.locator(f"img[src$='/{path.name}']")).to_be_attached()


def percent(probability: float) -> str:
    """A probability as the Label shows it: JavaScript's ``Math.round``, half up."""
    return f"{math.floor(probability * 100 + 0.5)}%"


def assert_shows(page: Page, model_path: Path, photo: Path) -> None:
    """The Label shows the Python API's top 5 for ``photo``: names, percentages, bars."""
    expected = Classifier(model_path).classify(photo)
    output = page.get_by_test_id("label")
    expect(output.get_by_test_id("label-output-value")).to_have_text(expected[0].label)
    rows = output.locator(".confidence-set")
    expect(rows).to_have_count(len(expected))
    expect(rows.locator("dt")).to_have_text([p.label for p in expected])
    expect(rows.locator("dd")).to_have_text([percent(p.probability) for p in expected])
    bars = [float(bar.get_attribute("value") or "nan") for bar in rows.locator("meter").all()]
    assert bars == pytest.approx([p.probability for p in expected], rel=1e-5)


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """Save ``test-artifacts/<name>.png`` once no fade or transition is half-way."""
    page.wait_for_function(
        "() => document.getAnimations().every(animation => animation.playState !== 'running')"
    )
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=full_page)


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=lambda screen: screen.name)
def test_uploaded_cat_shows_the_python_apis_answer(
    screen: Screen, browser: Browser, app_url: str, model_path: Path
) -> None:
    with page_on(browser, app_url, screen) as page:
        upload(page, CAT_PHOTO)
        page.get_by_role("button", name="Classify").click()
        assert_shows(page, model_path, CAT_PHOTO)
        # On a phone the answer sits below the fold: the page brings it on screen.
        expect(page.get_by_test_id("label")).to_be_in_viewport(ratio=0.9)
        screenshot(page, f"{screen.name}-cat")
        assert page.evaluate("document.documentElement.scrollWidth") <= screen.width


def test_clicking_an_example_classifies_it(
    browser: Browser, app_url: str, model_path: Path
) -> None:
    with page_on(browser, app_url, DESKTOP) as page:
        example = page.get_by_role("button").filter(
            has=page.locator(f"img[src$='/{COFFEE_PHOTO.name}']")
        )
        example.click()
        photo = page.get_by_test_id("image")
        expect(photo.locator(f"img[src$='/{COFFEE_PHOTO.name}']")).to_be_visible()
        assert_shows(page, model_path, COFFEE_PHOTO)
        screenshot(page, "desktop-example")


def test_bad_upload_shows_our_message_not_a_traceback(
    browser: Browser, app_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "text.jpg"
    write_text_as_jpeg(bad)
    with page_on(browser, app_url, DESKTOP) as page:
        upload(page, bad)
        page.get_by_role("button", name="Classify").click()
        toast = page.get_by_test_id("toast-body")
        expect(toast.get_by_test_id("toast-text")).to_contain_text("not an image")
        expect(page.locator("body")).not_to_contain_text("Traceback")
        expect(toast).to_have_css("opacity", "1")
        # The message floats over the viewport: a full-page capture would leave it out.
        screenshot(page, "desktop-bad-upload", full_page=False)


def test_heatmap_shows_over_the_photo_and_follows_the_chosen_class(
    browser: Browser, app_url: str, model_path: Path
) -> None:
    """After Classify, the top class's heatmap; another of the top 5 shows its own;
    the switch turns the heat off (each a new picture from the server)."""
    expected = Classifier(model_path).classify(CAT_PHOTO)
    with page_on(browser, app_url, DESKTOP) as page:
        upload(page, CAT_PHOTO)
        page.get_by_role("button", name="Classify").click()
        picture = page.locator("#heatmap img")
        expect(picture).to_be_visible()
        choices = page.locator("#heatmap-class")
        expect(choices.get_by_role("radio")).to_have_count(len(expected))
        expect(choices.get_by_label(expected[0].label)).to_be_checked()
        screenshot(page, "desktop-heatmap")
        top = picture.get_attribute("src")
        choices.get_by_label(expected[1].label).check()
        expect(picture).not_to_have_attribute("src", top)
        second = picture.get_attribute("src")
        page.get_by_label("Show the heatmap").uncheck()
        expect(picture).not_to_have_attribute("src", second)
        expect(picture).to_be_visible()


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=lambda screen: screen.name)
def test_several_photos_give_a_gallery_and_the_picked_ones_answer(
    screen: Screen, browser: Browser, app_url: str, model_path: Path, tmp_path: Path
) -> None:
    """A HEIC among them shows as decoded (the browser cannot draw it); picking one in
    the gallery shows its top 5 and its heatmap."""
    phone = tmp_path / "phone.heic"
    save_heic(Image.open(CAT_PHOTO).convert("RGB"), phone)
    photos = [COFFEE_PHOTO, phone, CAT_PHOTO]
    expected = Classifier(model_path).classify(COFFEE_PHOTO)
    with page_on(browser, app_url, screen) as page:
        page.locator("#several").get_by_text("Several photos at once").click()
        page.locator("#several-photos").get_by_test_id("file-upload").set_input_files(photos)
        # Each file uploaded: its row links to the copy the page holds.
        expect(page.locator("#several-photos").get_by_role("link")).to_have_count(len(photos))
        page.locator("#classify-all").click()
        thumbnails = page.locator("#gallery img")
        expect(thumbnails).to_have_count(len(photos))
        for thumbnail in thumbnails.all():
            expect(thumbnail).to_have_js_property("complete", True)
            assert thumbnail.evaluate("image => image.naturalWidth") > 0
        expect(page.locator("#gallery")).to_contain_text(
            f"{expected[0].label} {percent(expected[0].probability)}"
        )
        page.locator("#gallery").get_by_label("Thumbnail 3 of 3").click()
        assert_shows(page, model_path, CAT_PHOTO)
        page.locator("#gallery").get_by_label("Thumbnail 1 of 3").click()
        assert_shows(page, model_path, COFFEE_PHOTO)
        expect(page.locator("#heatmap img")).to_be_visible()
        screenshot(page, f"{screen.name}-several")
        assert page.evaluate("document.documentElement.scrollWidth") <= screen.width


def test_the_camera_is_a_source_beside_upload_and_paste(browser: Browser, app_url: str) -> None:
    with page_on(browser, app_url, PHONE) as page:
        photo = page.get_by_test_id("image")
        for source in ("Upload file", "Capture from camera", "Paste from clipboard"):
            expect(photo.get_by_role("button", name=source)).to_be_visible()


def test_a_refused_upload_leaves_no_broken_image(
    browser: Browser, app_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "text.jpg"
    write_text_as_jpeg(bad)
    with page_on(browser, app_url, PHONE) as page:
        upload(page, bad)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_test_id("toast-text")).to_contain_text("not an image")
        expect(page.get_by_test_id("image").locator("img")).to_have_count(0)
        screenshot(page, "phone-refused", full_page=False)
