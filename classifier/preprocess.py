"""Image decoding and preprocessing, in Pillow and numpy only.

The pipeline is the one the converter verified the ONNX model against:
Keras' ``load_img(path, target_size=(height, width), interpolation="bilinear")``
followed by the model family's ``preprocess_input`` (``tf``, ``caffe``,
``torch``, or none where the model scales its input itself), all read from
the model's metadata. On top of Keras it honours
EXIF orientation, composites transparency onto white, scales 16-bit and
float images properly, and refuses decompression bombs before decoding.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from classifier.metadata import Preprocessing

ImageSource = str | Path | bytes | BinaryIO | Image.Image

DEFAULT_MAX_PIXELS = 40_000_000
"""Larger than any phone photo (a 6000 x 4000 photo is 24 megapixels)."""

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An input that cannot be classified; the message is meant for the user."""


class ImageTooLargeError(ImageError):
    """An image with more pixels than the configured limit."""


def open_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily, refusing non-images and oversized images early.

    Only the header is read here, so a decompression bomb costs nothing.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageTooLargeError(f"The image is too large to process: {error}") from error
        except UnidentifiedImageError as error:
            raise ImageError(
                "The file is not an image that can be read (use JPEG, PNG, GIF, WebP, BMP or TIFF)."
            ) from error
        except OSError as error:
            raise ImageError(f"The image could not be read: {error}") from error
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels ({width} x {height}).")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is too large: {width} x {height} pixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels. Please upload a smaller image."
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent pixels become white; 16-bit samples are scaled to 8 bits
    (not clipped, as Pillow's own ``convert`` does); float images are read
    as 0..1 when they fit in it, else as 0..255.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(image, dtype=np.float32) / 257.0
        return _gray_to_rgb(samples)
    if mode == "F":
        samples = np.asarray(image, dtype=np.float32)
        if np.nanmax(samples, initial=0.0) <= 1.0:
            samples = samples * 255.0
        return _gray_to_rgb(np.nan_to_num(samples))
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"Images in mode {mode} are not supported.") from error


def _gray_to_rgb(samples: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def decode(
    source: ImageSource,
    spec: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> Image.Image:
    """Decode an upload into an upright RGB image of the model's input size.

    With ``draft``, a large JPEG is decoded at 1/2, 1/4 or 1/8 scale straight
    from its DCT coefficients, never below twice the target size, which makes
    big photos several times faster to decode with answers unchanged.
    """
    image = open_image(source, max_pixels)
    try:
        if draft and image.format == "JPEG":
            side = 2 * max(spec.width, spec.height)
            image.draft("RGB", (side, side))
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"The image file is truncated or corrupt ({error}).") from error
    size = (spec.width, spec.height)
    if rgb.size != size:
        rgb = rgb.resize(size, RESAMPLING[spec.resize])
    return rgb


def to_array(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """An RGB image of the input size -> the model's float32 HWC input."""
    return normalize(np.asarray(image, dtype=np.float32), spec)


def normalize(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """0..255 RGB values ``(..., 3)`` -> ``(v - mean) / std`` in the model's channel order.

    Computed as ``v * (1 / std) + (-mean / std)`` with both factors rounded to
    float32 once: within a float32 rounding of Keras' own arithmetic.
    """
    if spec.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / std).astype(np.float32)
    offset = (-mean / std).astype(np.float32)
    return pixels.astype(np.float32) * scale + offset


def preprocess(
    source: ImageSource,
    spec: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> np.ndarray:
    """Any image source -> the float32 ``(height, width, 3)`` model input."""
    return to_array(decode(source, spec, max_pixels, draft), spec)
