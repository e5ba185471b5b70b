"""Every use of Gradio's and uvicorn's private attributes, in one place, checked at start.

Neither library has a public way to do three things this app needs: slow
down Gradio's queue polling (1,000 wake-ups a second at idle), hand an
upload to our own decoder undecoded, and drain on SIGTERM instead of
closing at once. Each is done here, and ``check`` verifies, before the app
binds its port, that the installed versions still have the shape these
rely on: an upgrade that changes them stops the app with one line (and
fails ``tests/test_internals.py``) instead of silently doing nothing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from importlib.metadata import version
from types import FrameType

import uvicorn

from classifier.errors import ClassifierError

log = logging.getLogger(__name__)

VERIFIED = {"gradio": "6.31.0", "uvicorn": "0.54.0"}
"""The versions whose private attributes this module was written against."""
QUEUE_POLLING = ("sleep_when_free", "progress_update_sleep_when_free")


class InternalsError(ClassifierError):
    """An installed Gradio or uvicorn no longer has what this module reaches into."""

    exit_code = 9  # after the converter's 1 to 8


def check() -> None:
    """Raise ``InternalsError`` if the installed libraries lack what this module uses."""
    import gradio as gr
    from gradio.components.image import ImageData

    problems = []
    with gr.Blocks(analytics_enabled=False) as probe:
        pass
    probe.queue()
    queue = getattr(probe, "_queue", None)
    if queue is None or not all(hasattr(queue, name) for name in QUEUE_POLLING):
        problems.append(f"gradio: Blocks._queue has no {' or '.join(QUEUE_POLLING)}")
    if list(inspect.signature(gr.Image.preprocess).parameters) != ["self", "payload"]:
        problems.append("gradio: Image.preprocess no longer takes (self, payload)")
    if "path" not in ImageData.model_fields:
        problems.append("gradio: an image's upload payload has no `path`")
    if list(inspect.signature(uvicorn.Server.handle_exit).parameters) != ["self", "sig", "frame"]:
        problems.append("uvicorn: Server.handle_exit no longer takes (self, sig, frame)")
    server = uvicorn.Server(uvicorn.Config(app=lambda *args: None, log_config=None))
    if not isinstance(getattr(server, "_captured_signals", None), list):
        problems.append("uvicorn: Server has no _captured_signals list")
    if "self.handle_exit" not in inspect.getsource(uvicorn.Server.capture_signals):
        problems.append("uvicorn: Server.capture_signals no longer routes signals to handle_exit")
    if problems:
        installed = ", ".join(f"{name} {version(name)}" for name in VERIFIED)
        raise InternalsError(
            f"{installed} changed what service/internals.py relies on "
            f"(written for {', '.join(f'{n} {v}' for n, v in VERIFIED.items())}): "
            + "; ".join(problems)
        )
    for name, verified in VERIFIED.items():
        if version(name) != verified:
            log.warning("%s %s: internals verified with %s only", name, version(name), verified)


def set_queue_polling(demo: object, sleep_when_free: float, progress_sleep: float) -> None:
    """How often Gradio's queue looks for new events and for progress (no setting exists)."""
    queue = demo._queue  # type: ignore[attr-defined]
    queue.sleep_when_free = sleep_when_free
    queue.progress_update_sleep_when_free = progress_sleep


def pass_upload_path(image: object) -> None:
    """Make a ``gr.Image`` hand its upload's path over undecoded.

    Stock ``gr.Image`` opens every upload with Pillow before our code sees
    it, so a corrupt file or a decompression bomb would fail inside Gradio,
    with no message for the user. (A subclass would do the same, but Gradio
    writes a ``.pyi`` stub beside the module of every component class it sees.)
    """
    image.preprocess = lambda payload: None if payload is None else payload.path  # type: ignore[attr-defined]


class HookedSignalServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT calls ``on_first_signal`` instead.

    uvicorn sends signals to ``Server.handle_exit``, which records them in
    ``_captured_signals`` (raised again once the server stops, so the process
    dies by the signal) and stops serving. The first signal is not recorded
    here, so the process exits 0 once ``on_first_signal`` has it stop; a
    second one goes to uvicorn, which then stops at once.
    """

    def __init__(self, config: uvicorn.Config, on_first_signal: Callable[[int], None]) -> None:
        super().__init__(config)
        self._on_first_signal = on_first_signal
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._on_first_signal(sig)
