"""The private Gradio and uvicorn attributes the app reaches into: still there, or it stops."""

from __future__ import annotations

import re

import gradio as gr
import pytest
import uvicorn

from classifier.assets import ROOT
from service import internals


def test_the_installed_libraries_have_what_the_app_uses() -> None:
    internals.check()


def test_the_verified_versions_are_the_pinned_ones() -> None:
    """Upgrading a pin means checking service/internals.py against the new version."""
    pins = dict(re.findall(r"^([\w-]+)==([^\s\\]+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert {name: pins[name] for name in internals.VERIFIED} == internals.VERIFIED


@pytest.mark.parametrize(
    "breaking_upgrade",
    [
        "queue polling renamed",
        "image preprocess signature",
        "uvicorn handle_exit signature",
        "uvicorn captured signals",
    ],
)
def test_an_upgrade_that_breaks_an_internal_stops_the_app(
    breaking_upgrade: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if breaking_upgrade == "queue polling renamed":
        original = gr.Blocks.queue

        def queue(self: gr.Blocks, *args: object, **kwargs: object) -> gr.Blocks:
            result = original(self, *args, **kwargs)
            del self._queue.sleep_when_free
            return result

        monkeypatch.setattr(gr.Blocks, "queue", queue)
    elif breaking_upgrade == "image preprocess signature":
        monkeypatch.setattr(gr.Image, "preprocess", lambda self, payload, extra: None)
    elif breaking_upgrade == "uvicorn handle_exit signature":
        monkeypatch.setattr(uvicorn.Server, "handle_exit", lambda self, sig: None)
    else:
        original_init = uvicorn.Server.__init__

        def init(self: uvicorn.Server, config: uvicorn.Config) -> None:
            original_init(self, config)
            del self._captured_signals

        monkeypatch.setattr(uvicorn.Server, "__init__", init)
    with pytest.raises(internals.InternalsError, match=r"service/internals\.py relies on"):
        internals.check()


def _lacking(*args: object, **kwargs: object) -> None:
    """A stand-in with none of the names the app looks for."""


async def _push(self: object, body: object, request: object) -> None:
    """A queue's push that no longer takes the user name."""


@pytest.mark.parametrize(
    ("module", "attribute", "replacement"),
    [
        ("gradio.processing_utils", "_check_allowed", _lacking),
        ("gradio.queueing.Queue", "push", _push),
        ("gradio.route_utils.GradioMultiPartParser", "__init__", _lacking),
        ("uvicorn.protocols.http.h11_impl.H11Protocol", "data_received", lambda self: None),
        ("uvicorn.protocols.http.h11_impl.RequestResponseCycle", "__init__", _lacking),
        ("uvicorn.protocols.http.h11_impl.H11Protocol", "send_400_response", lambda self: None),
        ("uvicorn.protocols.http.h11_impl.H11Protocol", "handle_events", _lacking),
        ("uvicorn.protocols.http.h11_impl.H11Protocol", "__init__", _lacking),
    ],
)
def test_an_upgrade_that_breaks_an_upload_or_connection_internal_stops_the_app(
    module: str, attribute: str, replacement: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the upload check, the queue cap, the upload clean-up, the connection
    deadlines and the framing check reach into."""
    monkeypatch.setattr(f"{module}.{attribute}", replacement)
    with pytest.raises(internals.InternalsError, match=r"service/internals\.py relies on"):
        internals.check()
