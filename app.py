"""Serve the classifier: the Gradio page at ``/`` and the REST API beside it.

The model comes from ``MODEL_PATH`` (default ``models/inception_v3.onnx``);
the address from ``HOST`` and ``PORT`` (``setup.sh`` sets them for Heroku).
A model that is missing or does not match its metadata stops the app with
one line, before any port is bound; warming the model up happens once the
port is bound (``/readyz`` says when it is done).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from classifier.assets import EXAMPLE_PHOTOS
from classifier.deferred import defer_import
from classifier.model import Classifier, ModelError


def lighten_gradio() -> None:
    """Turn off what Gradio does by default that this page never uses, before importing it.

    After every page event Gradio summarises up to 10,000 past events with
    pandas (the summary feeds its monitoring dashboard, not served here):
    milliseconds of CPU per request, growing with the count, and 32 MB of
    pandas, which Gradio also imports eagerly.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**31))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
    defer_import("pandas")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        classifier = Classifier.from_env(warm=False)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    # Gradio takes seconds to import: a broken model is reported before that.
    lighten_gradio()
    import gradio as gr

    from classifier.api import build_api
    from classifier.serving import serve
    from classifier.ui import MAX_FILE_SIZE, build_demo

    page = build_demo(classifier, EXAMPLE_PHOTOS)
    app = gr.mount_gradio_app(
        build_api(classifier), page, path="/", max_file_size=MAX_FILE_SIZE, show_error=False
    )
    threading.Thread(target=classifier.warm_up, name="warm-up", daemon=True).start()
    serve(app, os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "7860")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
