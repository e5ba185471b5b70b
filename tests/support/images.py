"""Awkward uploads, written by the tests themselves from the CC0 cat photo."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from tests.support.photos import CAT_PHOTO


def cat() -> Image.Image:
    return Image.open(CAT_PHOTO).convert("RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_declaring(width: int, height: int, compressed: bytes | None = None) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, holding the
    ``compressed`` rows (by default 64 bytes: a bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", compressed or zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def write_text_as_jpeg(path: Path) -> None:
    path.write_text("This is not a photo, whatever its name says.\n")


def write_truncated_jpeg(path: Path) -> None:
    full = path.with_name("full.jpg")
    cat().save(full, quality=90)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_empty(path: Path) -> None:
    path.write_bytes(b"")


def write_bomb(path: Path) -> None:
    path.write_bytes(png_declaring(30000, 30000))


def write_one_pixel(path: Path) -> None:
    Image.new("RGB", (1, 1), (200, 30, 30)).save(path)


def write_animated_gif(path: Path) -> None:
    frames = [cat().convert("P"), Image.new("P", cat().size, 3), Image.new("P", cat().size, 7)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def write_16_bit_png(path: Path) -> None:
    gray = np.asarray(cat().convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(path)


def write_cmyk_jpeg(path: Path) -> None:
    cat().convert("CMYK").save(path, quality=95)


def write_grayscale(path: Path) -> None:
    cat().convert("L").save(path)


def write_palette(path: Path) -> None:
    cat().convert("P", palette=Image.Palette.ADAPTIVE).save(path)


def write_rgba(path: Path) -> None:
    rgba = cat().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(path)


# name -> (file name, writer); invalid ones must get a clear message.
VALID: dict[str, tuple[str, Callable[[Path], None]]] = {
    "one pixel": ("one.png", write_one_pixel),
    "animated gif": ("animated.gif", write_animated_gif),
    "16-bit png": ("sixteen.png", write_16_bit_png),
    "cmyk jpeg": ("cmyk.jpg", write_cmyk_jpeg),
    "grayscale": ("gray.png", write_grayscale),
    "palette": ("palette.png", write_palette),
    "rgba": ("rgba.png", write_rgba),
}
INVALID: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "text named .jpg": ("text.jpg", write_text_as_jpeg, "not an image"),
    "truncated jpeg": ("truncated.jpg", write_truncated_jpeg, "truncated or corrupt"),
    "zero bytes": ("empty.jpg", write_empty, "not an image"),
    "decompression bomb": ("bomb.png", write_bomb, "too large"),
}


# --- hostile uploads: ~40 megapixels, each a small file --------------------

LARGE_SIZE = (7296, 5472)
"""39.9 megapixels: just inside the app's 40-megapixel promise."""


def gradient(size: tuple[int, int] = LARGE_SIZE) -> Image.Image:
    """A smooth RGB image: compresses to a small file in every format."""
    ramp = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM), ramp))


def write_large_rgb_png(path: Path) -> None:
    gradient().save(path)


def write_large_rgba_png(path: Path) -> None:
    image = gradient()
    image.putalpha(image.getchannel(0))
    image.save(path)


def write_large_la_png(path: Path) -> None:
    ramp = gradient().getchannel(0)
    Image.merge("LA", (ramp, ramp)).save(path)


def write_large_palette_png(path: Path) -> None:
    gradient().quantize(64).save(path, transparency=0)


def write_large_16_bit_png(path: Path) -> None:
    Image.fromarray(np.asarray(gradient().getchannel(0), dtype=np.uint16) * 257).save(path)


def write_large_tiff(path: Path) -> None:
    gradient().save(path, compression="tiff_deflate")


def write_large_webp(path: Path) -> None:
    gradient().save(path, quality=80)


def write_large_cmyk_jpeg(path: Path) -> None:
    gradient().convert("CMYK").save(path, quality=90)


def write_large_progressive_jpeg(path: Path) -> None:
    gradient().save(path, quality=90, progressive=True)


def write_large_animated_gif(path: Path) -> None:
    first = gradient().quantize(64)
    second = Image.new("P", LARGE_SIZE, 3)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0, transparency=0)


PHONE_SIZE = (4032, 3024)
"""12.2 megapixels, an iPhone's HEIC. HEIC and AVIF decode in full (7.3 and 9.3 bytes
a pixel), so the budget takes them up to about 14 and 11 megapixels."""
AVIF_SIZE = (3840, 2880)


def save_heic(
    image: Image.Image, target: Path | BinaryIO, quality: int = 90, **options: object
) -> None:
    """``image`` as a phone saves it, HEIC (pillow-heif, which the app loads only when needed)."""
    import pillow_heif

    pillow_heif.from_pillow(image).save(target, quality=quality, **options)


def write_large_heic(path: Path) -> None:
    save_heic(gradient(PHONE_SIZE), path, quality=60)


def write_large_avif(path: Path) -> None:
    gradient(AVIF_SIZE).save(path, quality=50, speed=10)


# name -> (file name, writer): every kind must be classified within the memory budget.
LARGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "rgb png": ("rgb.png", write_large_rgb_png),
    "rgba png": ("rgba.png", write_large_rgba_png),
    "la png": ("la.png", write_large_la_png),
    "palette png with transparency": ("palette.png", write_large_palette_png),
    "16-bit png": ("sixteen.png", write_large_16_bit_png),
    "tiff": ("rgb.tiff", write_large_tiff),
    "webp": ("rgb.webp", write_large_webp),
    "cmyk jpeg": ("cmyk.jpg", write_large_cmyk_jpeg),
    "progressive jpeg": ("progressive.jpg", write_large_progressive_jpeg),
    "animated gif": ("animated.gif", write_large_animated_gif),
    "heic": ("phone.heic", write_large_heic),
    "avif": ("rgb.avif", write_large_avif),
}


def write_large_images(folder: Path) -> list[Path]:
    """Every kind of ``LARGE`` image in ``folder`` (~15 s, ~1 MB in all)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_name, write in LARGE.values():
        path = folder / file_name
        if not path.is_file():
            write(path)
        paths.append(path)
    return paths
