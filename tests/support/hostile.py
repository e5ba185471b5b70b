"""A seeded generator of structurally valid but hostile files, for each accepted format.

Each ``Attack`` builds, from a seeded ``random.Random``, a file whose magic
number and structure are those of a real format, but whose counts, sizes or
declared dimensions no camera or editor writes: metadata floods (hundreds of
thousands of chunks, segments, tags or boxes), CPU bombs (a scan repeated
thousands of times, megabytes of comments), declared sizes the bytes do not
hold, and animations whose canvas dwarfs their frames. ``status`` is what the
app must answer: 413 or 415 from the structural pre-scan (``by_scan``) or from
the header's size, or ``None`` where the file is accepted and must be costed
by its canvas. ``hostile_files(seed, count)`` yields them by name, for the
hostile memory burst; ``tests/test_formats.py`` runs every attack.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from classifier import formats
from tests.support.images import png_chunk, png_declaring, save_heic

Build = Callable[[random.Random], tuple[str, bytes]]
"""rng -> (what the file holds, its bytes)."""


@dataclass(frozen=True)
class Attack:
    name: str
    build: Build
    status: int | None
    """413 or 415; ``None``: accepted by the scan, costed by its canvas."""
    by_scan: bool = True
    """Refused by the structural scan, before Pillow opens it (else by the header's size)."""


def photo(rng: random.Random, format: str, **options: object) -> bytes:
    """A small real image (noise over a gradient) in ``format``, as Pillow writes it."""
    size = (rng.randint(24, 96), rng.randint(24, 96))
    ramp = Image.linear_gradient("L").resize(size)
    noise = Image.effect_noise(size, rng.randint(10, 60))
    image = Image.merge("RGB", (ramp, noise, ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    buffer = io.BytesIO()
    if format == "HEIC":
        save_heic(image, buffer, quality=50)
    else:
        image.save(buffer, format, **options)
    return buffer.getvalue()


# --- JPEG ---------------------------------------------------------------------


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def split_jpeg(data: bytes) -> tuple[bytes, list[bytes]]:
    """A JPEG -> (its segments up to the first scan, each scan with its coded data)."""
    position, scans = 2, []
    while data[position + 1] != 0xDA:
        (length,) = struct.unpack_from(">H", data, position + 2)
        position += 2 + length
    head, rest = data[:position], data[position:-2]
    starts = [i for i in range(len(rest) - 1) if rest[i] == 0xFF and rest[i + 1] == 0xDA]
    for start, end in zip(starts, [*starts[1:], len(rest)], strict=True):
        scans.append(rest[start:end])  # DHTs between scans ride along with the scan before
    return head, scans


def jpeg_scan_repeated(rng: random.Random) -> tuple[str, bytes]:
    head, scans = split_jpeg(photo(rng, "JPEG", progressive=True))
    times = rng.randint(formats.MAX_JPEG_SCANS + 1, 3000)
    return f"a progressive JPEG whose last scan repeats {times} times", (
        head + b"".join(scans) + scans[-1] * times + b"\xff\xd9"
    )


def jpeg_comment_block(rng: random.Random) -> tuple[str, bytes]:
    megabytes = rng.randint(2, 6)
    comment = jpeg_segment(0xFE, bytes(rng.randrange(32, 127) for _ in range(64)) * 1023)
    data = photo(rng, "JPEG")
    return f"{megabytes} MB of comments", data[:2] + comment * (megabytes * 16) + data[2:]


def jpeg_app_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_JPEG_MARKERS + 1, 200_000)
    data = photo(rng, "JPEG")
    return f"{count} empty APP15 segments", data[:2] + jpeg_segment(0xEF, b"") * count + data[2:]


def jpeg_table_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_JPEG_TABLES + 1, 50_000)
    table = jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
    data = photo(rng, "JPEG")
    return f"{count} quantisation tables", data[:2] + table * count + data[2:]


def jpeg_restart_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(100, 100_000)
    data = photo(rng, "JPEG")
    markers = b"".join(bytes([0xFF, 0xD0 + i % 8]) for i in range(count))
    return f"{count} restart markers without a restart interval", data[:-2] + markers + data[-2:]


def jpeg_fill_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(200_000, 4_000_000)
    data = photo(rng, "JPEG")
    return f"{count} fill bytes before a marker", data[:2] + b"\xff" * count + data[2:]


def jpeg_exif_overlap(rng: random.Random) -> tuple[str, bytes]:
    exif = b"Exif\x00\x00" + tiff_overlapping(rng, rng.randint(200, 900), 50_000)
    data = photo(rng, "JPEG")
    return "EXIF whose tags all point at one 50 kB blob", data[:2] + jpeg_segment(
        0xE1, exif
    ) + data[2:]


def jpeg_declared_size(rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(photo(rng, "JPEG"))
    sof = data.index(b"\xff\xc0")
    width, height = rng.randint(8000, 30000), rng.randint(8000, 30000)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return f"a JPEG declaring {width} x {height} pixels", bytes(data)


# --- PNG ----------------------------------------------------------------------


def png_with(rng: random.Random, extra: bytes, before_data: bool = False) -> bytes:
    """A real PNG with ``extra`` chunks inserted before its image data or its end."""
    data = photo(rng, "PNG")
    at = data.index(b"IDAT") - 4 if before_data else len(data) - 12
    return data[:at] + extra + data[at:]


def png_text_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_PNG_TEXT_CHUNKS + 1, 150_000)
    return f"{count} tEXt chunks", png_with(rng, png_chunk(b"tEXt", b"Comment\x00hi") * count)


def png_empty_data_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_PNG_CHUNKS + 1, 200_000)
    return f"{count} empty IDAT chunks", png_with(rng, png_chunk(b"IDAT", b"") * count, True)


def png_unknown_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_PNG_UNKNOWN_CHUNKS + 1, 150_000)
    return f"{count} private chunks", png_with(rng, png_chunk(b"prVt", b"x") * count)


def png_palette_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_PNG_PALETTES + 1, 5000)
    palette = png_chunk(b"sPLT", b"name\x00\x08" + b"\x00" * 6)
    return f"{count} suggested palettes", png_with(rng, palette * count)


def png_metadata_bytes(rng: random.Random) -> tuple[str, bytes]:
    megabytes = rng.randint(9, 16)
    text = png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + b" " * 2**20)
    return f"{megabytes} MB of XMP", png_with(rng, text * megabytes)


def png_frame_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_FRAMES + 1, 60_000)
    control = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 1, 1, 0, 0, 1, 10, 0, 0))
    animation = png_chunk(b"acTL", struct.pack(">II", count, 0))
    return f"an APNG of {count} frames", png_with(rng, animation + control * count, True)


def png_exif_overlap(rng: random.Random) -> tuple[str, bytes]:
    exif = tiff_overlapping(rng, rng.randint(200, 900), 100_000)
    return "eXIf whose tags all point at one 100 kB blob", png_with(
        rng, png_chunk(b"eXIf", exif), True
    )


def png_declared_size(rng: random.Random) -> tuple[str, bytes]:
    width, height = rng.randint(7000, 60000), rng.randint(7000, 60000)
    return f"a PNG declaring {width} x {height} pixels", png_declaring(width, height)


def apng_large_canvas(rng: random.Random) -> tuple[str, bytes]:
    """Inside the pixel limit: accepted, and costed by its canvas."""
    width, height = rng.randint(3000, 6000), rng.randint(3000, 6000)
    compressor, row = zlib.compressobj(9), bytes(1 + 3 * width)  # black rows, a row at a time
    rows = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    frame = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 1, 1, 0, 0, 1, 10, 0, 0))
    data = png_declaring(width, height, rows)
    at = data.index(b"IDAT") - 4
    animation = png_chunk(b"acTL", struct.pack(">II", 2, 0)) + frame
    return f"an APNG of {width} x {height} with 1-pixel frames", data[:at] + animation + data[at:]


# --- GIF ----------------------------------------------------------------------


def sub_blocks(data: bytes) -> bytes:
    pieces = [data[i : i + 255] for i in range(0, len(data), 255)]
    return b"".join(bytes([len(piece)]) + piece for piece in pieces) + b"\x00"


def gif_frame(left: int = 0, top: int = 0, width: int = 1, height: int = 1) -> bytes:
    return b"," + struct.pack("<HHHHB", left, top, width, height, 0) + b"\x02\x02\x44\x01\x00"


def gif_of(width: int, height: int, body: bytes) -> bytes:
    """A GIF89a with a two-colour table and ``body`` (frames and extensions)."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return b"GIF89a" + screen + body + b";"


def gif_comment_block(rng: random.Random) -> tuple[str, bytes]:
    megabytes = rng.randint(2, 6)
    comment = b"!\xfe" + sub_blocks(b"x" * (megabytes * 2**20))
    return f"{megabytes} MB of GIF comment", gif_of(64, 64, comment + gif_frame())


def gif_extension_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_GIF_EXTENSIONS + 1, 300_000)
    control = b"!\xf9\x04\x00\x00\x00\x00\x00"
    return f"{count} extension blocks", gif_of(64, 64, control * count + gif_frame())


def gif_frame_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_FRAMES + 1, 100_000)
    return f"{count} one-pixel frames", gif_of(64, 64, gif_frame() * count)


def gif_garbage_before_frame(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(1, 1_000_000)
    return f"{count} stray bytes before the first frame", gif_of(
        64, 64, b"\x01" * count + gif_frame()
    )


def gif_large_canvas(rng: random.Random) -> tuple[str, bytes]:
    """Inside the pixel limit: accepted, and costed by its canvas."""
    width, height = rng.randint(4000, 7000), rng.randint(4000, 5700)
    return f"a GIF canvas of {width} x {height} with one 1-pixel frame", gif_of(
        width, height, gif_frame(rng.randrange(width), rng.randrange(height))
    )


# --- WebP ---------------------------------------------------------------------


def riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)


def webp_extended(rng: random.Random, extra: bytes) -> bytes:
    """A real lossy WebP in the extended layout, with ``extra`` chunks after its image."""
    image = photo(rng, "WEBP", quality=50)[12:]
    canvas = Image.open(io.BytesIO(riff(image))).size
    header = webp_chunk(b"VP8X", b"\x00" * 4 + _u24(canvas[0] - 1) + _u24(canvas[1] - 1))
    return riff(header + image + extra)


def _u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def webp_animation(width: int, height: int, frames: int) -> bytes:
    """An animated WebP: a ``width`` x ``height`` canvas of 8 x 8 lossless frames."""
    tiny = io.BytesIO()
    Image.new("RGBA", (8, 8), (200, 30, 30, 255)).save(tiny, "WEBP", lossless=True)
    frame_image = tiny.getvalue()[12:]
    frame = webp_chunk(b"ANMF", _u24(0) * 2 + _u24(7) * 2 + _u24(100) + b"\x00" + frame_image)
    header = webp_chunk(b"VP8X", b"\x12\x00\x00\x00" + _u24(width - 1) + _u24(height - 1))
    return riff(header + webp_chunk(b"ANIM", b"\x00" * 6) + frame * frames)


def webp_chunk_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_WEBP_CHUNKS + 1, 200_000)
    return f"{count} unknown chunks", webp_extended(rng, webp_chunk(b"ABCD", b"") * count)


def webp_frame_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_FRAMES + 1, 20_000)
    return f"an animated WebP of {count} frames", webp_animation(64, 64, count)


def webp_metadata_bytes(rng: random.Random) -> tuple[str, bytes]:
    megabytes = rng.randint(9, 16)
    return f"{megabytes} MB of XMP", webp_extended(
        rng, webp_chunk(b"XMP ", b" " * megabytes * 2**20)
    )


def webp_exif_overlap(rng: random.Random) -> tuple[str, bytes]:
    exif = tiff_overlapping(rng, rng.randint(200, 900), 100_000)
    return "EXIF whose tags all point at one 100 kB blob", webp_extended(
        rng, webp_chunk(b"EXIF", exif)
    )


def webp_large_canvas(rng: random.Random) -> tuple[str, bytes]:
    """Inside the pixel limit: accepted, and costed by its canvas."""
    width, height = rng.randint(4000, 7296), rng.randint(4000, 5472)
    return f"an animated WebP canvas of {width} x {height} with 8-pixel frames", webp_animation(
        width, height, 2
    )


# --- BMP ----------------------------------------------------------------------


def bmp_header(width: int, height: int, depth: int, compression: int, data: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, depth, compression, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(data), 0, 0, 54) + info + data


def bmp_declared_size(rng: random.Random) -> tuple[str, bytes]:
    width, height = rng.randint(1000, 6000), rng.randint(1000, 6000)
    return f"a BMP declaring {width} x {height} pixels in 64 bytes", bmp_header(
        width, height, 24, 0, b"\x00" * 64
    )


def bmp_holding_png(rng: random.Random) -> tuple[str, bytes]:
    inner = photo(rng, "PNG")
    return "a BMP holding a PNG", bmp_header(64, 64, 0, 5, inner)


# --- TIFF ---------------------------------------------------------------------


def tiff_entry(tag: int, kind: int, count: int, value: int) -> bytes:
    return struct.pack("<HHII", tag, kind, count, value)


def tiff_directory(entries: list[bytes], following: int = 0) -> bytes:
    return struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", following)


def tiff_image_tags(width: int = 8, height: int = 8) -> list[bytes]:
    return [tiff_entry(256, 3, 1, width), tiff_entry(257, 3, 1, height), tiff_entry(258, 3, 1, 8)]


def tiff_overlapping(rng: random.Random, tags: int, blob: int) -> bytes:
    """A little-endian TIFF structure whose ``tags`` entries all point at one blob."""
    directory_end = 8 + 2 + 12 * tags + 4
    entries = [tiff_entry(40000 + i, 7, blob, directory_end) for i in range(tags)]
    return b"II*\x00" + struct.pack("<I", 8) + tiff_directory(entries) + rng.randbytes(blob)


def tiff_loop(rng: random.Random) -> tuple[str, bytes]:
    return "a TIFF whose directory points at itself", b"II*\x00" + struct.pack("<I", 8) + (
        tiff_directory(tiff_image_tags(), following=8)
    )


def tiff_directory_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_TIFF_DIRECTORIES + 1, 20_000)
    size = 2 + 3 * 12 + 4
    directories = b"".join(
        tiff_directory(tiff_image_tags(), 8 + size * (i + 1) if i + 1 < count else 0)
        for i in range(count)
    )
    return f"a TIFF of {count} pages", b"II*\x00" + struct.pack("<I", 8) + directories


def tiff_tag_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_TIFF_TAGS + 1, 65535)
    entries = tiff_image_tags() + [tiff_entry(40000, 3, 1, 0)] * (count - 3)
    return f"a TIFF directory of {count} tags", b"II*\x00" + struct.pack("<I", 8) + (
        tiff_directory(entries)
    )


def tiff_tag_overlap(rng: random.Random) -> tuple[str, bytes]:
    tags = rng.randint(100, 1000)
    return f"a TIFF whose {tags} tags point at one 200 kB blob", tiff_overlapping(
        rng, tags, 200_000
    )


def tiff_strip_flood(rng: random.Random) -> tuple[str, bytes]:
    count = rng.randint(formats.MAX_TIFF_STRIPS + 1, 2**30)
    entries = [*tiff_image_tags(), tiff_entry(273, 4, count, 8), tiff_entry(279, 4, count, 8)]
    return f"a TIFF declaring {count} strips", b"II*\x00" + struct.pack("<I", 8) + (
        tiff_directory(entries)
    )


# --- AVIF and HEIC ------------------------------------------------------------


def iso_box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def iso_photo(rng: random.Random) -> tuple[str, bytes]:
    format = rng.choice(["AVIF", "HEIC"])
    return format, photo(rng, format, quality=50) if format == "AVIF" else photo(rng, format)


def iso_box_flood(rng: random.Random) -> tuple[str, bytes]:
    format, data = iso_photo(rng)
    count = rng.randint(formats.MAX_BMFF_BOXES + 1, 200_000)
    return f"an {format} and {count} free boxes", data + iso_box(b"free", b"") * count


def iso_nesting(rng: random.Random) -> tuple[str, bytes]:
    format, data = iso_photo(rng)
    depth = rng.randint(formats.MAX_BMFF_DEPTH + 1, 5000)
    nested = b""
    for _ in range(depth):
        nested = iso_box(b"moov", nested)
    return f"an {format} and boxes nested {depth} deep", data + nested


def iso_item_flood(rng: random.Random) -> tuple[str, bytes]:
    format, data = iso_photo(rng)
    items = rng.randint(formats.MAX_HEIF_ITEMS + 1, 65535)
    info = iso_box(b"iinf", b"\x00\x00\x00\x00" + struct.pack(">H", items))
    return f"an {format} declaring {items} items", data + iso_box(b"meta", b"\x00" * 4 + info)


ATTACKS = [
    Attack("jpeg-scan-repeated", jpeg_scan_repeated, 413),
    Attack("jpeg-comment-block", jpeg_comment_block, 413),
    Attack("jpeg-app-flood", jpeg_app_flood, 415),
    Attack("jpeg-table-flood", jpeg_table_flood, 415),
    Attack("jpeg-restart-flood", jpeg_restart_flood, 415),
    Attack("jpeg-fill-flood", jpeg_fill_flood, 415),
    Attack("jpeg-exif-overlap", jpeg_exif_overlap, 415),
    Attack("jpeg-declared-size", jpeg_declared_size, 413, by_scan=False),
    Attack("png-text-flood", png_text_flood, 415),
    Attack("png-empty-data-flood", png_empty_data_flood, 415),
    Attack("png-unknown-flood", png_unknown_flood, 415),
    Attack("png-palette-flood", png_palette_flood, 415),
    Attack("png-metadata-bytes", png_metadata_bytes, 413),
    Attack("png-frame-flood", png_frame_flood, 415),
    Attack("png-exif-overlap", png_exif_overlap, 415),
    Attack("png-declared-size", png_declared_size, 413, by_scan=False),
    Attack("apng-large-canvas", apng_large_canvas, None),
    Attack("gif-comment-block", gif_comment_block, 413),
    Attack("gif-extension-flood", gif_extension_flood, 415),
    Attack("gif-frame-flood", gif_frame_flood, 415),
    Attack("gif-garbage-before-frame", gif_garbage_before_frame, 415),
    Attack("gif-large-canvas", gif_large_canvas, None),
    Attack("webp-chunk-flood", webp_chunk_flood, 415),
    Attack("webp-frame-flood", webp_frame_flood, 415),
    Attack("webp-metadata-bytes", webp_metadata_bytes, 413),
    Attack("webp-exif-overlap", webp_exif_overlap, 415),
    Attack("webp-large-canvas", webp_large_canvas, None),
    Attack("bmp-declared-size", bmp_declared_size, 415),
    Attack("bmp-holding-png", bmp_holding_png, 415),
    Attack("tiff-loop", tiff_loop, 415),
    Attack("tiff-directory-flood", tiff_directory_flood, 415),
    Attack("tiff-tag-flood", tiff_tag_flood, 415),
    Attack("tiff-tag-overlap", tiff_tag_overlap, 415),
    Attack("tiff-strip-flood", tiff_strip_flood, 413),
    Attack("iso-box-flood", iso_box_flood, 415),
    Attack("iso-nesting", iso_nesting, 415),
    Attack("iso-item-flood", iso_item_flood, 415),
]
"""Every attack class, for every accepted format."""


def hostile_files(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` hostile files, every attack in turn (in a seeded order), each named
    by its attack and what it holds; the same seed gives the same files."""
    rng = random.Random(seed)
    order = rng.sample(ATTACKS, len(ATTACKS))
    for index in range(count):
        attack = order[index % len(order)]
        what, data = attack.build(rng)
        yield f"{attack.name}: {what}", data
