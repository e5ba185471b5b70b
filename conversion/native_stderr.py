"""TensorFlow's C++ start-up lines, moved from the user's terminal to the log.

On Intel CPUs TensorFlow writes ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR`` and ``oneDNN custom
operations are on ...`` straight to file descriptor 2 while it loads and
builds models, whatever ``TF_CPP_MIN_LOG_LEVEL`` says (absl logs before the
variable is read). So the converter runs TensorFlow's import and its model
work with descriptor 2 pointed at a temporary file, and logs what landed
there at DEBUG: a refusal stays one line on any CPU. Python's own
``sys.stderr`` writes made meanwhile land there too, so our messages are
printed outside these regions.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

STDERR = 2


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """What C and C++ code writes to descriptor 2 meanwhile goes to the log."""
    sys.stderr.flush()
    saved = os.dup(STDERR)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), STDERR)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, STDERR)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                logger.debug("native stderr: %s", line)


def import_tensorflow() -> None:
    """Import TensorFlow, Keras and tf2onnx quietly; later imports find them loaded."""
    with native_stderr_to_log():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401
