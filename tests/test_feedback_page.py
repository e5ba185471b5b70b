"""Feedback on the page in a real headless Chromium: "Right" and "Wrong: it is ..." under
each answer, what the store then holds, and the page with feedback off or failing.

Each app here keeps its store in a temporary folder (``DATA_DIR``); the rows are read
back with the store's own table definition.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import create_engine, inspect, select

from classifier.model import Classifier
from service.feedback.schema import feedback as feedback_table
from tests.support.harness import free_port, serving
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO
from tests.test_browser import DESKTOP, PHONE, Browser, Page, browser, expect, page_on, screenshot
from tests.test_browser import upload as upload_photo

if TYPE_CHECKING:
    from playwright.sync_api import Locator

__all__ = ["browser"]  # the module's Chromium, a fixture

CONSENT = "Sending stores this photo (a JPEG of at most 640 px a side) and the model's answer"
QUEUE_ROUTES = {("POST", "/gradio_api/queue/join"), ("GET", "/gradio_api/queue/data")}
"""The routes a send takes: the page's queue, as every page event does."""


@dataclass(frozen=True)
class FeedbackApp:
    url: str
    database: str


@pytest.fixture(scope="module")
def feedback_app(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeedbackApp]:
    """The app with feedback on, its SQLite store in a folder of its own."""
    folder = tmp_path_factory.mktemp("feedback-page")
    with serving(model_path, folder / "app.log", DATA_DIR=str(folder)) as instance:
        yield FeedbackApp(instance.url, f"sqlite:///{folder / 'feedback.sqlite3'}")


def stored(database: str) -> list[dict[str, Any]]:
    """Every row in the store, oldest first; none before the first send created the table."""
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(feedback_table.name):
                return []
            query = select(feedback_table).order_by(feedback_table.c.id)
            return [dict(row) for row in connection.execute(query).mappings()]
    finally:
        engine.dispose()


def classify(page: Page, photo: Path) -> None:
    upload_photo(page, photo)
    page.get_by_role("button", name="Classify", exact=True).click()


def send_wrong(page: Page, typed: str, label: str) -> None:
    """Wrong: it is ``label``, found among the model's labels by typing ``typed``, once
    the answer it corrects has come (with it, Send is ready again)."""
    box = page.locator("#feedback")
    expect(box.get_by_role("button", name="Send")).to_be_enabled()
    box.get_by_label("Wrong: it is ...").press_sequentially(typed)
    page.get_by_role("option", name=label, exact=True).click()
    box.get_by_role("button", name="Send").click()
    expect(box.locator("#feedback-status")).to_have_text(
        f"Thank you: stored, with “{label}” as the right answer."
    )


def right_button(page: Page, top: str) -> Locator:
    return page.get_by_role("button", name=f"Right: it is {top}", exact=True)


def top_labels(model_path: Path, photo: Path) -> list[str]:
    return [prediction.label for prediction in Classifier(model_path).classify(photo)]


def assert_row(row: dict[str, Any], label: str, answered: list[str], *, known: bool) -> None:
    """One stored correction: the label sent, the page's answer, our small JPEG."""
    assert row["label"] == label
    assert row["known"] is known
    assert row["predicted"] == answered[0]
    assert [name for name, _ in row["answered"]] == answered
    assert row["request_id"], "the classification's request id goes with it"
    photo = Image.open(io.BytesIO(row["photo"]))
    assert photo.format == "JPEG"
    assert max(photo.size) <= 640


def routes_taken(page: Page) -> set[tuple[str, str]]:
    """A set that fills with the (method, path) of every request ``page`` makes from now."""
    taken: set[tuple[str, str]] = set()
    page.on("request", lambda request: taken.add((request.method, urlsplit(request.url).path)))
    return taken


def test_wrong_it_is_a_label_found_by_typing_part_of_it(
    browser: Browser, feedback_app: FeedbackApp, model_path: Path
) -> None:
    before = stored(feedback_app.database)
    with page_on(browser, feedback_app.url, DESKTOP) as page:
        classify(page, CAT_PHOTO)
        box = page.locator("#feedback")
        expect(box.locator("#feedback-consent")).to_contain_text(CONSENT)
        expect(box.locator("#feedback-status")).to_have_text("")
        assert stored(feedback_app.database) == before, "nothing is stored without a click"
        page.wait_for_function(  # the answer's heatmap, which the page fetches, is in
            "() => [...document.querySelectorAll('#heatmap img')]"
            ".some(image => image.complete && image.naturalWidth > 0)"
        )
        taken = routes_taken(page)
        send_wrong(page, "retriev", "golden retriever")
        expect(box.get_by_role("button", name="Send")).to_be_disabled()
        screenshot(page, "desktop-feedback-wrong")
    (row,) = stored(feedback_app.database)[len(before) :]
    assert_row(row, "golden retriever", top_labels(model_path, CAT_PHOTO), known=True)
    assert taken <= QUEUE_ROUTES, f"a send took other routes: {taken - QUEUE_ROUTES}"


def test_wrong_it_is_words_of_ones_own(
    browser: Browser, feedback_app: FeedbackApp, model_path: Path
) -> None:
    """A class the model does not know, typed on a phone; shown back as typed."""
    words = "my neighbour's *cat*, [not](a link)"
    before = stored(feedback_app.database)
    with page_on(browser, feedback_app.url, PHONE) as page:
        classify(page, CAT_PHOTO)
        box = page.locator("#feedback")
        box.get_by_label("Wrong: it is ...").fill(words)
        box.get_by_label("Wrong: it is ...").blur()
        box.get_by_role("button", name="Send").click()
        expect(box.locator("#feedback-status")).to_have_text(
            f"Thank you: stored, with “{words}” as the right answer."
        )
        expect(box.locator("#feedback-status a")).to_have_count(0)
        screenshot(page, "phone-feedback-own-words")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE.width
    (row,) = stored(feedback_app.database)[len(before) :]
    assert_row(row, words, top_labels(model_path, CAT_PHOTO), known=False)


def test_right_stores_the_top_label_once(
    browser: Browser, feedback_app: FeedbackApp, model_path: Path
) -> None:
    top = top_labels(model_path, COFFEE_PHOTO)
    before = stored(feedback_app.database)
    with page_on(browser, feedback_app.url, DESKTOP) as page:
        classify(page, COFFEE_PHOTO)
        right = right_button(page, top[0])
        right.dblclick()
        expect(page.locator("#feedback-status")).to_have_text("Thank you: stored as right.")
        expect(right).to_be_disabled()
    (row,) = stored(feedback_app.database)[len(before) :]
    assert_row(row, top[0], top, known=True)


def test_the_gallerys_picked_photo_is_the_one_sent(
    browser: Browser, feedback_app: FeedbackApp, model_path: Path
) -> None:
    cat = top_labels(model_path, CAT_PHOTO)
    before = stored(feedback_app.database)
    with page_on(browser, feedback_app.url, DESKTOP) as page:
        page.locator("#several").get_by_text("Several photos at once").click()
        photos = page.locator("#several-photos")
        photos.get_by_test_id("file-upload").set_input_files([COFFEE_PHOTO, CAT_PHOTO])
        expect(photos.get_by_role("link")).to_have_count(2)
        page.locator("#classify-all").click()
        expect(page.locator("#gallery img")).to_have_count(2)
        page.locator("#gallery").get_by_label("Thumbnail 2 of 2").click()
        right = right_button(page, cat[0])
        right.click()
        expect(page.locator("#feedback-status")).to_have_text("Thank you: stored as right.")
        # Another pick is another answer: its controls are ready again.
        page.locator("#gallery").get_by_label("Thumbnail 1 of 2").click()
        expect(page.locator("#feedback-status")).to_have_text("")
        expect(page.locator("#feedback").get_by_role("button", name="Send")).to_be_enabled()
    (row,) = stored(feedback_app.database)[len(before) :]
    assert_row(row, cat[0], cat, known=True)


OFF = {
    "FEEDBACK=off": ({"FEEDBACK": "off"}, None),
    "a dyno without a database": ({"DYNO": "web.1"}, "heroku addons:create heroku-postgresql"),
}


@pytest.mark.parametrize(("env", "message"), OFF.values(), ids=OFF.keys())
def test_with_feedback_off_there_are_no_controls(
    env: dict[str, str],
    message: str | None,
    browser: Browser,
    model_path: Path,
    tmp_path: Path,
) -> None:
    """Turned off: nothing at all; off for want of a database: how to turn it on."""
    app = serving(model_path, tmp_path / "app.log", DATA_DIR=str(tmp_path), **env)
    with app as instance, page_on(browser, instance.url, DESKTOP) as page:
        classify(page, CAT_PHOTO)
        expect(page.get_by_test_id("label-output-value")).not_to_be_empty()
        expect(page.locator("#feedback")).to_have_count(0)
        expect(page.get_by_role("button", name="Right")).to_have_count(0)
        if message is None:
            expect(page.locator("#feedback-off")).to_have_count(0)
        else:
            expect(page.locator("#feedback-off")).to_contain_text(message)
    assert not list(tmp_path.glob("feedback.sqlite3*")), "no store is made"


def test_a_store_that_cannot_be_reached_says_so_and_classification_goes_on(
    browser: Browser, model_path: Path, tmp_path: Path
) -> None:
    nobody = f"postgresql://feedback:secret@127.0.0.1:{free_port()}/feedback?sslmode=disable"
    top = top_labels(model_path, CAT_PHOTO)
    app = serving(model_path, tmp_path / "app.log", DATABASE_URL=nobody)
    with app as instance, page_on(browser, instance.url, DESKTOP) as page:
        classify(page, CAT_PHOTO)
        right = right_button(page, top[0])
        right.click()
        expect(page.get_by_test_id("toast-text")).to_contain_text(
            "The feedback store cannot be reached right now: please try again in a minute."
        )
        expect(page.locator("#feedback-status")).not_to_contain_text("Thank you")
        expect(right).to_be_enabled()
        screenshot(page, "desktop-feedback-store-down", full_page=False)
        classify(page, COFFEE_PHOTO)
        expect(page.get_by_test_id("label-output-value")).to_have_text(
            top_labels(model_path, COFFEE_PHOTO)[0]
        )
