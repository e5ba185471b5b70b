"""Class activation maps (Zhou et al., CVPR 2016): where the model looked, at no extra inference.

A model that ends in global average pooling and a dense layer scores class
``c`` as the mean, over the last feature map's positions, of that position's
features times the dense kernel's column ``c`` (plus a bias). Before the
mean, those products form a map of how much each region added to the score.
The converter makes the ONNX graph output that feature map and writes the
kernel beside the model, one row per class (see
``classifier.metadata.Heatmap``), so the runtime fetches the feature map from
the same run, multiplies it by the rows of the few classes it shows,
normalises them, and lays one over the photo.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.errors import ClassifierError
from classifier.options import MAX_PHOTO_SIDE

MAX_OVERLAY_SIDE = MAX_PHOTO_SIDE
"""The overlay is the photo as decoded for the classification, upright, shrunk to this
on its longest side: the page shows no more, and a PNG of a 24-megapixel photo
would be tens of megabytes."""
OPACITY = 0.6
"""The heat's opacity where the map is 1; where it is 0 the photo shows as it is."""
OVERLAY_COST_PER_PIXEL = 16
"""Bytes an overlay holds per pixel beside the photo: the upsampled map (float32),
its colours and mask, the blend and its PNG."""


class NoHeatmapError(ClassifierError):
    """A heatmap was asked of a model that has none."""

    status = 422
    outcome = "bad_request"


class ClassWeights:
    """The dense kernel beside the model (``.npy``, one row per class), read a few rows
    at a time: the whole kernel (8 MB for InceptionV3) never enters the process.

    Rows are read with ``pread``, not through a memory map, whose read-around
    brought ~1 MB of neighbouring rows in for each row touched.
    """

    def __init__(self, path: Path) -> None:
        with path.open("rb") as stream:
            major, _ = np.lib.format.read_magic(stream)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(stream)
            self._offset = stream.tell()
        if fortran_order or len(shape) != 2:
            raise ValueError(f"{path} does not hold one row of weights per class")
        self.shape: tuple[int, int] = shape
        self.dtype = np.dtype(dtype)
        self._row_bytes = shape[1] * self.dtype.itemsize
        self._path = path

    def rows(self, classes: Sequence[int]) -> np.ndarray:
        """The weights of ``classes``, ``(len(classes), channels)``."""
        with self._path.open("rb") as stream:
            descriptor = stream.fileno()
            return np.stack(
                [
                    np.frombuffer(
                        os.pread(descriptor, self._row_bytes, self._offset + i * self._row_bytes),
                        self.dtype,
                    )
                    for i in classes
                ]
            )


def class_maps(features: np.ndarray, weights: ClassWeights, classes: Sequence[int]) -> np.ndarray:
    """Raw class activation maps ``(h, w, len(classes))``: the feature map ``(h, w, c)``
    times each class's row of the dense kernel."""
    return features @ weights.rows(classes).T


def normalise(class_map: np.ndarray) -> np.ndarray:
    """A raw class map -> float32 in 0..1 (its minimum 0, its maximum 1); a flat map -> zeros.

    The bias and any constant offset drop out: the map shows where, not how much.
    """
    low, high = float(class_map.min()), float(class_map.max())
    if not high > low:
        return np.zeros(class_map.shape, np.float32)
    return ((class_map - low) / (high - low)).astype(np.float32)


def _colour_table() -> np.ndarray:
    """256 colours from blue (0) through green and yellow to red (1): the "jet" of CAM papers."""
    t = np.linspace(0.0, 1.0, 256)
    channels = [np.clip(1.5 - np.abs(4.0 * t - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
    return np.rint(np.stack(channels, axis=1) * 255).astype(np.uint8)


COLOURS = _colour_table()


def upsample(class_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map at the feature map's resolution -> ``size`` (width, height), bilinearly."""
    image = Image.fromarray(np.ascontiguousarray(class_map, np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def overlay(photo: Image.Image, class_map: np.ndarray, opacity: float = OPACITY) -> Image.Image:
    """``photo`` (RGB) with ``class_map`` (0..1) over it, upsampled bilinearly to the photo.

    Hot regions are red and opaque, cold ones fade to the bare photo.
    """
    heat = np.clip(upsample(class_map, photo.size), 0.0, 1.0)
    levels = np.rint(heat * 255).astype(np.uint8)
    colours = Image.fromarray(COLOURS[levels])
    mask = Image.fromarray(np.rint(heat * (255 * opacity)).astype(np.uint8))
    return Image.composite(colours, photo.convert("RGB"), mask)


def overlay_cost(photo: Image.Image) -> int:
    """Bytes ``overlay`` and ``png`` hold for ``photo``, to reserve from the memory budget."""
    return OVERLAY_COST_PER_PIXEL * photo.size[0] * photo.size[1]


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    """JPEG bytes: a photo kept for later overlays, ~10 times smaller than its pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    """PNG bytes, fast to write (zlib level 1): an overlay is sent once, then dropped."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
