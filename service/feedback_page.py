"""The page's feedback under each answer: "Right", or "Wrong: it is ..." with the model's
labels to pick from or a person's own words, sent to ``Feedback`` in one click.

What is sent is what the session already holds of the answer shown (the
small JPEG ``page.STATE_PHOTO_SIDE`` a side and the top classes, see
``page.Explanation``), never the upload, and only on a click: the page says
so above the buttons. The gallery's picked photo is the answer shown, so it
is the one sent.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import gradio as gr

from classifier.model import Classifier
from service import request_id
from service.guard import client_of
from service.page import CONCURRENCY, STATE_PHOTO_SIDE, Explanation, page_error

if TYPE_CHECKING:
    from service.feedback import Feedback

CONSENT = (
    f"**Is the answer right?** Sending stores this photo (a JPEG of at most "
    f"{STATE_PHOTO_SIDE} px a side) and the model's answer, to train the model. "
    "Nothing is stored unless you click."
)
SENDS_AT_ONCE = 2
"""Feedback sent at once: each holds one of the store's few connections, and none of the
classifications' places (its own concurrency id)."""
MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def shown_as_text(text: str) -> str:
    """``text`` (a visitor's own words) as Markdown that shows it as typed: no link, no image."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def label_choices(classifier: Classifier) -> list[str]:
    """The model's labels in alphabetical order (ImageNet names a few twice), to search in."""
    return sorted({name for _, name in classifier.labels}, key=str.casefold)


def add_feedback(feedback: Feedback, explained: gr.State) -> None:
    """The controls under the answer ``explained`` holds, wired to ``feedback``; where it is
    off, the reason and how to turn it on (``Feedback.off_message``) instead.

    Senders are told apart as the page's queue cap tells them (``FORWARDED_HOPS``),
    for the store's rate per client.
    """
    client = client_of(feedback.forwarded_hops)
    if not feedback.enabled:
        if feedback.off_message:
            gr.Markdown(feedback.off_message, elem_id="feedback-off")
        return

    with gr.Column(visible=False, variant="panel", elem_id="feedback") as box:
        gr.Markdown(CONSENT, elem_id="feedback-consent", padding=True)
        right = gr.Button("Right", elem_id="feedback-right")
        with gr.Row(equal_height=True):
            label = gr.Dropdown(
                label_choices(feedback.classifier),
                value=None,
                allow_custom_value=True,
                filterable=True,
                label="Wrong: it is ...",
                info="Type to search the model's classes, or write your own",
                elem_id="feedback-label",
                scale=3,
            )
            wrong = gr.Button("Send", elem_id="feedback-wrong", scale=1)
        status = gr.Markdown(elem_id="feedback-status", padding=True)

    def answer_shown(explained: Explanation | None) -> tuple[Any, ...]:
        """A new answer: the controls for it, ready for one send."""
        top = explained["labels"][0] if explained else ""
        return (
            gr.Column(visible=bool(explained)),
            gr.Button(f"Right: it is {top}", interactive=True),
            gr.Dropdown(value=None),
            gr.Button(interactive=True),
            "",
        )

    def send(explained: Explanation | None, label: str, request: gr.Request) -> str:
        """One row in the store for the answer shown; what the visitor is told."""
        request_id.adopt(request.headers)
        if not explained:
            raise gr.Error("Classify a photo first.", duration=None, print_exception=False)
        label = label.strip()
        if not label:
            raise gr.Error(
                "Pick or type what the photo shows first.", duration=None, print_exception=False
            )
        try:
            feedback.send(
                explained["photo"],
                label,
                client(request),
                predicted=explained["labels"][0],
                answered=explained["answer"],
                request_id=explained.get("request_id"),
            )
        except Exception as error:
            raise page_error(error) from error
        if label == explained["labels"][0]:
            return "Thank you: stored as right."
        return f"Thank you: stored, with “{shown_as_text(label)}” as the right answer."

    def sent(thanks: str) -> tuple[Any, ...]:
        """Sent once: the buttons rest until the next answer, so a double click stores one row."""
        return thanks, gr.Button(interactive=False), gr.Button(interactive=False)

    def sent_right(explained: Explanation | None, request: gr.Request) -> tuple[Any, ...]:
        return sent(send(explained, explained["labels"][0] if explained else "", request))

    def sent_wrong(
        explained: Explanation | None, label: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        return sent(send(explained, label or "", request))

    explained.change(
        answer_shown,
        explained,
        [box, right, label, wrong, status],
        api_visibility="private",
        concurrency_limit=CONCURRENCY,
    )
    sends = {
        "outputs": [status, right, wrong],
        "api_visibility": "private",
        "concurrency_id": "feedback",
        "concurrency_limit": SENDS_AT_ONCE,
    }
    right.click(sent_right, explained, **sends)
    wrong.click(sent_wrong, [explained, label], **sends)
