"""Image decoding and preprocessing: Pillow, libvips (pyvips) and numpy.

An image of up to ``EXACT_PATH_MAX_PIXELS`` takes exactly the pipeline the
converter verified the ONNX model against: Keras' ``load_img(path,
target_size=(height, width), interpolation="bilinear")`` followed by the
model family's ``preprocess_input`` (``tf``, ``caffe``, ``torch``, or none
where the model scales its input itself), all read from the model's
metadata. On top of Keras it honours EXIF orientation, composites
transparency onto white and scales 16-bit and float images.

Larger images never exist in memory at full size more than once, and, where
the format allows, not at all. JPEG is decoded by Pillow at reduced scale
(libjpeg's DCT scaling, "draft" mode); libvips decodes WebP at reduced scale
and streams non-interlaced PNG and TIFF row by row while they shrink to
twice the model's input; other formats (GIF, BMP, interlaced PNG) are
decoded once by Pillow at their own depth, then shrunk strip by strip.
Orientation, transparency and mode conversion always come after the
shrinking. AVIF (Pillow's own plugin) and HEIC/HEIF (``pillow-heif``,
imported when the first such file arrives) decode in full through their
libraries. ``decode_cost`` estimates, from the header alone, what a decode
will cost, so callers can admit it against a memory budget first.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from classifier import formats
from classifier.formats import ImageError, ImageTooLargeError, UnsupportedImageError
from classifier.options import BASE_COST, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import pyvips

    from classifier.metadata import Preprocessing

log = logging.getLogger(__name__)

ImageSource = str | Path | bytes | BinaryIO | Image.Image


class InputSize(Protocol):
    """What decoding needs of a model's preprocessing (``Preprocessing`` has it): the
    input's size and how to resize to it. The decoder processes get only this."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def resize(self) -> str: ...


@dataclass(frozen=True)
class Geometry:
    """An ``InputSize`` as plain data, without pydantic."""

    width: int
    height: int
    resize: str


Admission = Callable[[int], AbstractContextManager[object]]
"""Called with a decode's estimated cost in bytes; holds it while the decode runs."""


def no_admission(cost: int) -> AbstractContextManager[object]:
    """Admit every decode at once: for scripts, where no server shares the memory."""
    return nullcontext()


EXACT_PATH_MAX_PIXELS = 4_000_000
"""Up to here (every photo of the ImageNet sample, most web images) an image is
decoded in full exactly as Keras does: at most ~16 bytes a pixel, 64 MB."""

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
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3}
"""Decoded size of a Pillow mode; every mode not named here takes at most 4."""

# What each kind of decode costs above ``BASE_COST``: tests/test_memory.py
# measures the peak of each kind of 40-megapixel upload and asserts it stays
# under these.
EXACT_COST_PER_PIXEL = 16
"""RGBA decoded (4), a white background (4), the composite (4) and RGB (3)."""
STREAMED_COST_PER_BAND_PIXEL = 0.5
"""libvips' shrink of a streamed PNG or TIFF: measured 0.3 to 0.4 a band and pixel."""
SCALED_COST_PER_PIXEL = 0.25
"""JPEG and WebP decoded at reduced scale: a 40 MP file measured 3 to 8 MB."""
FULL_DECODE_COST_PER_PIXEL = {"AVIF": 9.5, "HEIF": 8}
"""Formats whose library decodes the whole image at once, whatever the path: the
coded planes, their conversion to RGB and Pillow's copy. Measured (VmHWM) at
12 and 40 megapixels: AVIF 9.3, HEIC 7.3 bytes a pixel."""
STRIP_ROWS_TARGET = 256
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transposition that makes the image upright."""
_SWAPS_SIDES = {5, 6, 7, 8}
"""EXIF orientations that turn the image a quarter turn."""
FORMATS = formats.ACCEPTED
ANIMATED_WEBP_COST_PER_PIXEL = 6
"""An animated WebP's canvas: libwebp composes the first frame onto it in full, RGBA,
whatever its frames' sizes, and libvips cannot shrink it on load (measured 5.5)."""


CORRUPT = "The image file is truncated or corrupt: it could not be decoded."
DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    RuntimeError,
)
"""What Pillow's decoders raise on a broken file (Pillow's plugins use all of
these for "this is not what the header promised"; libavif and libheif raise
``RuntimeError``, libheif also where the coded size exceeds the header's)."""


@contextmanager
def decoding(*also: type[Exception]) -> Iterator[None]:
    """Around a decoder's own calls only: its failure on the file (one of
    ``DECODER_ERRORS``, or of ``also``) is the user's 400.

    The decoder's words are for the log; the user reads ``CORRUPT``. Errors
    raised anywhere else (our own numpy code) stay what they are: a server bug.
    """
    try:
        yield
    except ImageError:
        raise
    except (*DECODER_ERRORS, *also) as error:
        log.info("Decoder failed: %s: %s", type(error).__name__, error)
        raise ImageError(CORRUPT) from error


@functools.cache
def vips() -> ModuleType:
    """pyvips, imported and set up for untrusted uploads when the first file needs it: a
    process that decodes nothing (the server, whose decoders do) never loads libvips.

    Only the three loaders the app needs may run (libvips has dozens, some
    far less hardened); its operation cache, which would keep decoded
    images alive between requests, is off; and each decode uses one thread
    (``configure_vips`` sets another count), as requests already decode side
    by side on the dyno's cores.
    """
    import pyvips

    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(1)
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for loader in VIPS_LOADERS.values():
        pyvips.operation_block_set(loader, False)
    return pyvips


def configure_vips(threads: int) -> None:
    """Each libvips decode of this process uses ``threads`` threads."""
    vips().concurrency_set(threads)


VIPS_LOADERS = {
    "PNG": "VipsForeignLoadPng",
    "WEBP": "VipsForeignLoadWebp",
    "TIFF": "VipsForeignLoadTiff",
}
"""Pillow's name of a format -> the libvips loader that decodes it shrinking.
(JPEG is Pillow's: its draft mode decodes with less memory, and faster.)"""
JPEG_FORMATS = {"JPEG", "MPO"}


def open_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily, refusing non-images and oversized images early.

    The file's format must be one of ``FORMATS`` by its bytes, and its structure
    pass ``formats.scan``, before Pillow opens it with that format's plugin
    alone. Only headers are read, so a decompression bomb costs nothing. An
    ``Image.Image`` was decoded by the caller already: it is trusted as it is.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        try:
            image = _open_checked(source)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            log.info("Decompression bomb refused: %s", error)
            raise ImageTooLargeError(
                f"The image is too large: over the limit of {max_pixels / 1e6:g} megapixels. "
                "Please upload a smaller image."
            ) from error
        except UnidentifiedImageError as error:
            raise UnsupportedImageError(
                f"The file is not an image that can be read (use {FORMATS})."
            ) from error
        except DECODER_ERRORS as error:
            log.info("Header unreadable: %s: %s", type(error).__name__, error)
            raise ImageError(CORRUPT) from error
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels ({width} x {height}).")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is too large: {width} x {height} pixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels. Please upload a smaller image."
        )
    return image


def _open_checked(source: str | Path | BinaryIO) -> Image.Image:
    """The file scanned, then opened by its format's Pillow plugin alone (a HEIF file
    loads pillow-heif first), with Pillow's bomb warning an error; what the scan
    learned goes in the image's ``info`` for ``decode_cost``."""
    structure = formats.scan(source)
    if structure.format is formats.HEIF:
        _register_heif()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source, formats=structure.format.plugins)
    image.info[STRUCTURE] = structure
    return image


STRUCTURE = "structure"
"""The key of ``Image.info`` that holds the upload's ``formats.Structure``."""


@functools.cache
def _register_heif() -> None:
    """Teach Pillow HEIF, once, when the first HEIF file arrives.

    Imported here rather than at start, so a process that never sees one
    never loads libheif. Thumbnails, depth and auxiliary images are never
    read; libheif decodes on one thread, as libvips does (decodes already
    run side by side, one per core).
    """
    import pillow_heif

    pillow_heif.register_heif_opener(
        thumbnails=False, depth_images=False, aux_images=False, decode_threads=1
    )
    log.info("HEIF support loaded (pillow-heif %s)", pillow_heif.__version__)


def decode_cost(image: Image.Image, source: ImageSource) -> int:
    """Bytes a decode of ``image`` will take at its peak, from its header alone.

    Progressive JPEGs cost their DCT coefficients (libjpeg keeps them all);
    interlaced PNGs and formats libvips does not stream cost one full decode.
    """
    width, height = image.size
    pixels = width * height
    path = _decode_path(image, source)
    if path is _decode_exact:
        return BASE_COST + EXACT_COST_PER_PIXEL * pixels
    if path is _decode_in_strips:
        per_pixel = FULL_DECODE_COST_PER_PIXEL.get(
            image.format or "", _BYTES_PER_PIXEL.get(image.mode, 4)
        )
        return BASE_COST + int(per_pixel * pixels) + _strip_cost(image)
    if path is _decode_jpeg_drafted:
        if image.info.get("progressive"):
            return BASE_COST + _jpeg_coefficient_bytes(image)
        return BASE_COST + int(SCALED_COST_PER_PIXEL * pixels)
    if image.format == "WEBP":
        structure = image.info.get(STRUCTURE)
        animated = structure is not None and structure.animated
        per_pixel = ANIMATED_WEBP_COST_PER_PIXEL if animated else SCALED_COST_PER_PIXEL
        return BASE_COST + int(per_pixel * pixels)
    # A palette expands to RGB, and transparency adds an alpha band.
    colours = 3 if image.mode == "P" else len(image.getbands())
    bands = colours + ("transparency" in image.info)
    depth = 2 if image.mode in _SIXTEEN_BIT_MODES else 1
    streamed = int(STREAMED_COST_PER_BAND_PIXEL * bands * depth * pixels)
    # libtiff decompresses a whole strip or tile row at once.
    chunk_rows = (
        max(image.tag_v2.get(278, 1), image.tag_v2.get(323, 1)) if image.format == "TIFF" else 1
    )
    return BASE_COST + streamed + 2 * min(chunk_rows, height) * width * bands * depth


def _jpeg_coefficient_bytes(image: Image.Image) -> int:
    """2 bytes per sample of each component, at its own (subsampled) resolution."""
    pixels = image.size[0] * image.size[1]
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    return int(sum(2 * pixels * h * v / (h_max * v_max) for _, h, v, _ in layers))


def _strip_cost(image: Image.Image) -> int:
    """One strip converted to RGBA (or, already RGB, copied) and its reduction: small
    beside the image."""
    per_pixel = 6 if image.mode == "RGB" else 16
    return per_pixel * image.size[0] * STRIP_ROWS_TARGET * 2


@dataclass(frozen=True)
class Decoded:
    """An upload decoded once: the model's input and, if asked for, the photo to draw on."""

    input: Image.Image
    """Upright RGB at the model's input size, exactly as Keras makes it."""
    photo: Image.Image | None
    """Upright RGB in the upload's own proportions, at most ``photo_side`` a side and
    no larger than the decode had it: the same pixels, for overlays and thumbnails."""


PHOTO_BYTES_PER_PIXEL = 3


def decode(
    source: ImageSource,
    spec: InputSize,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    admit: Admission = no_admission,
) -> Image.Image:
    """Decode an upload into an upright RGB image of the model's input size."""
    return decode_with_photo(source, spec, max_pixels, admit).input


def decode_with_photo(
    source: ImageSource,
    spec: InputSize,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    admit: Admission = no_admission,
    photo_side: int | None = None,
) -> Decoded:
    """Decode an upload into the model's input and, with ``photo_side``, the photo.

    The header is read and checked first; ``admit(cost)`` then holds the
    decode's estimated memory (and the photo's) while it runs (a memory
    budget, in the app). Both come from the one upright RGB decode: the
    input by the resize Keras does, the photo by a resize to the upload's
    own proportions, which libvips' forced shrink does not keep.
    """
    image = open_image(source, max_pixels)
    path = _decode_path(image, source)
    with decoding():  # the header's fields: a TIFF's tags are parsed when first read
        cost = decode_cost(image, source)
        upright = upright_size(image) if photo_side else image.size
    if photo_side:
        cost += PHOTO_BYTES_PER_PIXEL * photo_side * photo_side
    with admit(cost):
        rgb = path(image, source, spec)
        size = (spec.width, spec.height)
        photo = _resized(rgb, fitted(upright, photo_side, rgb.size)) if photo_side else None
        if rgb.size != size:
            rgb = rgb.resize(size, RESAMPLING[spec.resize])
    return Decoded(rgb, photo)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """The image's (width, height) once its EXIF orientation is applied, from its header.

    A PNG whose EXIF is not ahead of its pixels counts as upright: Pillow's
    ``getexif`` would decode the whole image to look behind them.
    """
    width, height = image.size
    if image.format == "PNG" and "exif" not in image.info:
        return width, height
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPS_SIDES:
        return height, width
    return width, height


def fitted(size: tuple[int, int], side: int, within: tuple[int, int]) -> tuple[int, int]:
    """``size``'s proportions, at most ``side`` and ``within``'s longest side a side."""
    width, height = size
    scale = min(1.0, min(side, max(within)) / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


DecodePath = Callable[[Image.Image, ImageSource, InputSize], Image.Image]


def _decode_path(image: Image.Image, source: ImageSource) -> DecodePath:
    width, height = image.size
    if width * height <= EXACT_PATH_MAX_PIXELS or isinstance(source, Image.Image):
        return _decode_exact
    if image.format in JPEG_FORMATS:
        return _decode_jpeg_drafted
    if image.format in VIPS_LOADERS and not image.info.get("interlace"):
        return _decode_with_vips
    return _decode_in_strips


def _decode_exact(image: Image.Image, source: ImageSource, spec: InputSize) -> Image.Image:
    """Keras' own path: the whole image, oriented and made RGB, resized by the caller."""
    with decoding():
        image.seek(0)
        image.load()
        upright = ImageOps.exif_transpose(image)
    return to_rgb(upright)


def _decode_jpeg_drafted(image: Image.Image, source: ImageSource, spec: InputSize) -> Image.Image:
    """libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below twice the input size."""
    with decoding():
        image.draft("RGB", (2 * spec.width, 2 * spec.height))
    return _decode_exact(image, source, spec)


def _decode_with_vips(image: Image.Image, source: ImageSource, spec: InputSize) -> Image.Image:
    """libvips shrinks on load to twice the input size, orients, then flattens and converts."""
    pyvips = vips()
    with decoding(pyvips.Error):
        shrunk = pyvips.Image.thumbnail_source(
            _vips_source(source),
            2 * spec.width,
            height=2 * spec.height,
            size="force",
            option_string="fail_on=truncated",
        )
        srgb = shrunk.colourspace("srgb")
        if srgb.hasalpha():
            srgb = srgb.flatten(background=list(_WHITE))
        pixels = srgb.cast("uchar").write_to_memory()
    array = np.frombuffer(pixels, np.uint8).reshape(srgb.height, srgb.width, srgb.bands)
    return Image.fromarray(array[..., :3])


def _vips_source(source: str | Path | bytes | BinaryIO) -> pyvips.Source:
    """Where libvips reads the file from: an upload on disk is never read into memory."""
    pyvips = vips()
    if isinstance(source, str | Path):
        return pyvips.Source.new_from_file(str(source))
    if isinstance(source, bytes):
        return pyvips.Source.new_from_memory(source)
    source.seek(0)
    try:
        return pyvips.Source.new_from_descriptor(source.fileno())  # libvips dup()s it
    except (AttributeError, OSError, io.UnsupportedOperation):
        return pyvips.Source.new_from_memory(source.read())


def _decode_in_strips(image: Image.Image, source: ImageSource, spec: InputSize) -> Image.Image:
    """One decode at the image's own depth, then RGB and a box reduction strip by strip.

    The reduction factor keeps at least twice the input size; strips are a
    whole number of reduction blocks high, so they join without seams.
    """
    with decoding():
        image.seek(0)
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    width, height = image.size
    factor = max(1, min(width // (2 * spec.width), height // (2 * spec.height)))
    rows = factor * max(1, STRIP_ROWS_TARGET // factor)
    reduced = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = to_rgb(image.crop((0, top, width, min(top + rows, height))))
        reduced.paste(strip.reduce(factor), (0, top // factor))
    transpose = _ORIENTATIONS.get(orientation)
    return reduced if transpose is None else reduced.transpose(transpose)


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
        log.info("Pillow cannot convert mode %s: %s", mode, error)
        raise ImageError("The image's colour mode is not supported.") from error


def _gray_to_rgb(samples: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def to_array(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """An RGB image of the input size -> the model's float32 HWC input."""
    return normalize(np.asarray(image), spec)


def normalize(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """0..255 RGB values ``(..., 3)`` -> ``(v - mean) / std`` in the model's channel order.

    Computed as ``v * (1 / std) + (-mean / std)`` with both factors rounded to
    float32 once: within a float32 rounding of Keras' own arithmetic.
    """
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    # One new array, scaled in place: each temporary of a 299 x 299 input would
    # be another megabyte allocated, written and freed on every request.
    values = np.array(pixels[..., ::-1] if spec.channel_order == "BGR" else pixels, np.float32)
    values *= (1.0 / std).astype(np.float32)
    values += (-mean / std).astype(np.float32)
    return values


def preprocess(
    source: ImageSource,
    spec: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    admit: Admission = no_admission,
) -> np.ndarray:
    """Any image source -> the float32 ``(height, width, 3)`` model input."""
    return to_array(decode(source, spec, max_pixels, admit), spec)
