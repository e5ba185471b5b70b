"""Serve the InceptionV3 classifier page.

The model comes from ``MODEL_PATH`` (default ``models/inception_v3.onnx``);
host and port from ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, which
``setup.sh`` sets for Heroku. A model that is missing or does not match its
metadata stops the app with one line, before any port is bound.
"""

from __future__ import annotations

import logging
import sys

from classifier.assets import EXAMPLE_PHOTOS
from classifier.model import Classifier, ModelError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        classifier = Classifier.from_env()
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    # Gradio takes seconds to import: a broken model is reported before that.
    from classifier.ui import MAX_FILE_SIZE, QUEUE_SIZE, build_demo

    demo = build_demo(classifier, EXAMPLE_PHOTOS)
    demo.queue(max_size=QUEUE_SIZE).launch(max_file_size=MAX_FILE_SIZE, show_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
