"""How a ``Classifier`` is configured, and the limits it promises: plain Python, no libraries.

These are the only defaults: the service's settings (``service.settings``)
take theirs from here, so a script that builds ``Classifier(path)`` gets the
same behaviour as the app, and importing this loads neither libvips nor
ONNX Runtime.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

MB = 1 << 20
TOP_K = 5
"""How many classes an answer names unless asked otherwise."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Larger than any phone photo (a 6000 x 4000 photo is 24 megapixels)."""
BASE_COST = 16 * MB
"""What a decode costs beyond its input pixels: the model-sized output, the
libraries' buffers and Python's objects (``tests/test_memory.py`` measures it)."""
PROGRESSIVE_JPEG_COST = BASE_COST + 3 * DEFAULT_MAX_PIXELS
"""The costliest upload the app promises to take: a progressive JPEG of the
largest size, whose DCT coefficients (2 bytes a sample, 1.5 samples a pixel
in the usual 4:2:0) libjpeg keeps in full."""
MAX_PHOTO_SIDE = 1024
"""The largest photo a decode keeps beside the model's input: the one an overlay is
drawn on (the page keeps 640 px)."""
LARGEST_DECODE_COST = PROGRESSIVE_JPEG_COST + 3 * MAX_PHOTO_SIDE * MAX_PHOTO_SIDE
"""The costliest upload with its photo: what the budget must hold, or the page and
``explain=true`` would refuse an upload that a bare classification takes."""


def available_cores() -> int:
    """The cores this process may run on (a dyno's share, not the host's)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class SessionOptions:
    """How the ONNX Runtime session runs.

    A dyno shares its cores with its neighbours, so the thread count is
    settable (``0``: the cores this process may run on); spinning threads
    would take the CPU that other requests' decoding and HTTP need; the
    memory arena keeps activation buffers between runs.
    """

    intra_op_threads: int = 0
    allow_spinning: bool = False
    memory_arena: bool = True


@dataclass(frozen=True)
class AdmissionOptions:
    """How much work the process takes on at once; the defaults fit a 512 MB dyno.

    ``memory_budget_mb`` is what decodes may hold together: one of the
    costliest uploads the app takes, a 40-megapixel progressive JPEG, with
    the photo an overlay is drawn on. At most
    ``decode_slots`` decode at once (``0``: one per core); a decode waits up
    to ``timeout_s`` for its share, inside Heroku's 30 s router timeout.
    Model runs go one at a time, each taking up to ``max_batch`` waiting
    images: ONNX Runtime's arena keeps the activations of the largest batch
    until the burst ends. Where decoding is isolated in worker processes
    (``classifier.jail``), a decode is stopped past ``decode_timeout_s``
    seconds, wall-clock or CPU, and libvips uses ``vips_threads`` threads.
    """

    memory_budget_mb: int = math.ceil(LARGEST_DECODE_COST / MB)
    decode_slots: int = 0
    timeout_s: float = 20.0
    max_batch: int = 2
    decode_timeout_s: float = 10.0
    vips_threads: int = 1

    @property
    def decoders(self) -> int:
        """Decodes at once: ``decode_slots``, or one per core."""
        return self.decode_slots or available_cores()
