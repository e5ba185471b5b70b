"""Which uploads may reach a decoder: an allow-list of formats by their bytes, and a
structural pre-scan that refuses what no camera or editor writes.

An upload's format is read from its first bytes (its magic number), never
from its name or declared type: exactly JPEG (MPO is a JPEG), PNG (APNG is a
PNG), GIF, WebP, BMP, TIFF, AVIF and HEIC/HEIF. Anything else is refused
(415) before any decoder sees it, and Pillow is then opened with only the
identified format's plugin, so no other plugin (EPS, PSD, ICO, FITS...) can
claim the file.

Then ``scan`` walks the file's structure as a stream: markers, chunks,
blocks, directories and boxes, each read by a bounded ``read`` and skipped
by ``seek``, nothing decoded. It counts what decoders spend their time and
memory on (metadata chunks and segments, scans, frames, tags, boxes, comment
bytes) and refuses a file past any limit: 413 where the limit is about cost,
415 where the structure is one no program writes. Each limit is a named
constant below whose docstring says why it is far above what real files hold;
the scan stops at the first one passed, so its own work is bounded by the
limits, not by the file. ``docs/design/formats.md`` explains the choices.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from classifier.errors import ClassifierError


class ImageError(ClassifierError, ValueError):
    """An input that cannot be classified; the message is meant for the user."""

    status = 400
    outcome = "bad_image"


class ImageTooLargeError(ImageError):
    """An image with more pixels than the configured limit."""

    status = 413
    outcome = "too_large"


class UnsupportedImageError(ImageError):
    """A file that is not an image in a format the app reads."""

    status = 415
    outcome = "unsupported"


ACCEPTED = "JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF or HEIC"
"""The allow-list, as the README and every refusal name it."""


@dataclass(frozen=True)
class Format:
    """One format of the allow-list."""

    name: str
    """As people know it, in messages."""
    plugins: tuple[str, ...]
    """The Pillow plugins that may open it (``Image.open(..., formats=plugins)``)."""


JPEG = Format("JPEG", ("JPEG",))  # Pillow's JPEG factory returns an MPO where there is one
PNG = Format("PNG", ("PNG",))
GIF = Format("GIF", ("GIF",))
WEBP = Format("WebP", ("WEBP",))
BMP = Format("BMP", ("BMP",))
TIFF = Format("TIFF", ("TIFF",))
AVIF = Format("AVIF", ("AVIF",))
HEIF = Format("HEIC", ("HEIF",))  # pillow-heif's plugin, registered when the first one arrives


@dataclass(frozen=True)
class Structure:
    """What the scan learned of a file: what ``decode_cost`` needs beyond Pillow's header."""

    format: Format
    canvas: tuple[int, int]
    """The size a decoder composes the first frame onto (an animation's canvas), as far
    as the file's own headers say; (0, 0) where the scan found none (a truncated file)."""
    frames: int = 1

    @property
    def animated(self) -> bool:
        return self.frames > 1


# --- the limits -------------------------------------------------------------

MAX_FRAMES = 5_000
"""Frames of a GIF, APNG or animated WebP. Only the first is decoded, but each is
parsed; a 20 MB upload of 5,000 frames would have 4 kB a frame, and long web
animations run to a few hundred."""
MAX_COMMENT_BYTES = 64 * 1024
"""Bytes of comments (JPEG COM, GIF comment extensions). Programs write a line or
two; Pillow joins a GIF comment's 255-byte pieces one copy at a time, so megabytes
of them cost minutes of CPU."""
MAX_EXIF_BYTES = 256 * 1024
"""One EXIF block in a PNG or WebP. JPEG caps it at 64 kB (one segment), and those
blocks, thumbnail included, are what phones copy into other formats."""
MAX_METADATA_BYTES = 8 * 1024 * 1024
"""Bytes of text and other metadata chunks (PNG text, unknown chunks; WebP XMP and
unknown chunks). XMP with an editor's whole history reaches a megabyte or two."""

MAX_JPEG_SCANS = 100
"""Scans (SOS segments). A baseline JPEG has one (three if not interleaved), a
progressive one about 10 (libjpeg's script), mozjpeg's optimised ones under 20. The
decoder visits every block of the image once per scan, so a JPEG that repeats a scan
thousands of times holds a core for minutes."""
MAX_JPEG_TABLES = 300
"""Table segments: DHT, DQT, DRI. At most one of each kind per scan in real files."""
MAX_JPEG_MARKERS = 300
"""APPn segments: JFIF, EXIF, XMP (and its extension), ICC profile pieces, MPF,
Photoshop, Adobe. Cameras write under 20; a 3 MB ICC profile takes 48."""
MAX_JPEG_COMMENTS = 16
"""COM segments; programs write at most one or two."""

MAX_PNG_CHUNKS = 50_000
"""All chunks. Encoders cut IDAT into 8 kB (libpng) to 64 kB (Pillow) pieces: 2,500
for a 20 MB file at 8 kB."""
MAX_PNG_TEXT_CHUNKS = 256
"""tEXt, zTXt and iTXt chunks: editors write a handful (software, date, XMP)."""
MAX_PNG_PALETTES = 16
"""sPLT suggested palettes: almost never written at all."""
MAX_PNG_UNKNOWN_CHUNKS = 256
"""Ancillary chunks no PNG specification defines (editors' private chunks)."""

MAX_GIF_EXTENSIONS = 2 * MAX_FRAMES + 64
"""Extension blocks: a graphic control block per frame, a loop and an XMP block, and
slack."""

MAX_WEBP_CHUNKS = MAX_FRAMES + 64
"""RIFF chunks: one ANMF a frame, plus VP8X, ANIM, ICCP, EXIF, XMP. libwebp's demuxer
keeps a record of every chunk."""

MAX_TIFF_DIRECTORIES = 256
"""IFDs: pages, their SubIFDs (a DNG's previews) and the EXIF, GPS and interop ones."""
MAX_TIFF_TAGS = 1_000
"""Entries of one IFD: real ones hold 10 to 150."""
MAX_TIFF_STRIPS = 65_536
"""Strips or tiles of one image: one row a strip of a 40-megapixel photo in planes
is 16,416; 256-pixel tiles are 638."""
MAX_TIFF_VALUES = 262_144
"""Numbers in all tags together (Pillow makes each a Python object): the strip
arrays above, a 16-bit palette (196,608) or transfer function fit."""
TIFF_VALUE_BYTES_PER_FILE_BYTE = 2
"""Tags' data may overlap (several tags pointing at one blob) but real files never
do; Pillow reads each tag's data on its own, so overlaps multiply memory."""

MAX_BMFF_BOXES = 10_000
"""ISO media boxes (AVIF, HEIC): a 48-megapixel iPhone HEIC's 192 tiles take about
800."""
MAX_BMFF_DEPTH = 16
"""Nesting of boxes: a sequence's moov/trak/mdia/minf/stbl/stsd/codec/config is 8."""
MAX_HEIF_ITEMS = 4_096
"""Items of an AVIF or HEIC: tiles, thumbnails, EXIF, XMP, depth maps."""

CHUNK = 64 * 1024
"""How much the scan reads at once to walk GIF's sub-blocks."""
ENTROPY_CHUNK = 1024 * 1024
"""The most the scan reads at once of JPEG's coded data, to find where it ends."""


def identify(head: bytes) -> Format:
    """The format of a file starting with ``head`` (at least 32 bytes, where it has
    them), from its magic number; anything else is a 415."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"BM"):
        return BMP
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return TIFF
    if head[4:8] == b"ftyp":
        iso = _iso_format(head)
        if iso is not None:
            return iso
    raise UnsupportedImageError(f"The file is not an image that can be read (use {ACCEPTED}).")


AVIF_BRANDS = {b"avif", b"avis"}
HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
CONTAINER_BRANDS = {b"mif1", b"msf1"}
"""HEIF's container brands: an image (or sequence) whose codec the other brands name."""


def _iso_format(head: bytes) -> Format | None:
    """AVIF or HEIC by the ``ftyp`` box's brands: the major one, then the compatible ones."""
    (size,) = struct.unpack_from(">I", head)
    major = head[8:12]
    compatible = {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    if major in AVIF_BRANDS:
        return AVIF
    if major in HEIC_BRANDS:
        return HEIF
    if major in CONTAINER_BRANDS:
        return AVIF if compatible & AVIF_BRANDS else HEIF
    return None


def scan(source: str | Path | BinaryIO) -> Structure:
    """Identify ``source`` and walk its structure; raises a 413 or 415 on what no
    camera or editor writes. A stream is left at its start."""
    if isinstance(source, str | Path):
        with open(source, "rb") as stream:
            return scan(stream)
    try:
        reader = _Reader(source)
        format = identify(reader.at(0, 64))
        return SCANNERS[format](reader)
    finally:
        source.seek(0)


class _Reader:
    """Bounded reads at given offsets of a seekable stream; never past its end."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        stream.seek(0, io.SEEK_END)
        self.size = stream.tell()

    def at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``: fewer at the end of the file."""
        if offset >= self.size or length <= 0:
            return b""
        self.stream.seek(offset)
        return self.stream.read(min(length, self.size - offset))


def _count(count: int, limit: int, what: str, format: Format, costly: bool = False) -> int:
    """``count``, or a refusal where it passed ``limit``: 413 if ``costly``, else 415."""
    if count <= limit:
        return count
    error = ImageTooLargeError if costly else UnsupportedImageError
    raise error(
        f"The {format.name} file has more than {limit:,} {what}, far more than cameras "
        "and editors write, so it is not decoded. Please save it again with a photo editor."
    )


def _malformed(format: Format, what: str) -> UnsupportedImageError:
    return UnsupportedImageError(
        f"The {format.name} file is malformed ({what}), so it is not decoded. "
        "Please save it again with a photo editor."
    )


# --- JPEG -------------------------------------------------------------------

_SOF_ALLOWED = {0xC0, 0xC1, 0xC2}
"""Baseline, extended and progressive Huffman: what cameras, phones and editors write.
Lossless, hierarchical and arithmetic-coded JPEGs are refused."""
_SOF_ALL = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
_TABLES = {0xC4, 0xDB, 0xDD}  # DHT, DQT, DRI
_SOS, _EOI, _DRI, _COM, _APP1 = 0xDA, 0xD9, 0xDD, 0xFE, 0xE1


def _scan_jpeg(reader: _Reader) -> Structure:
    position = 2
    scans = tables = markers = comments = comment_bytes = restart_interval = 0
    canvas = (0, 0)
    while True:
        head = reader.at(position, 4)
        if head[:2] == b"\xff\xff":  # fill bytes before a marker: skipped in one read
            run = reader.at(position, CHUNK)
            fill = len(run) - len(run.lstrip(b"\xff"))
            if fill == len(run):
                raise _malformed(JPEG, "a run of 64 kB of fill bytes")
            position += fill - 1
            head = reader.at(position, 4)
        if len(head) < 2:
            break  # truncated: the decoder says so
        if head[0] != 0xFF:
            raise _malformed(JPEG, "no marker where one must be")
        marker = head[1]
        if marker == _EOI:
            break  # anything after (an MPO's other images) is never decoded
        if len(head) < 4:
            break
        (length,) = struct.unpack_from(">H", head, 2)
        if length < 2:
            raise _malformed(JPEG, "a segment shorter than its header")
        segment_end = position + 2 + length
        if marker in _SOF_ALL:
            if marker not in _SOF_ALLOWED:
                raise UnsupportedImageError(
                    "The JPEG is lossless, hierarchical or arithmetic-coded, which cameras "
                    "and editors do not write, so it is not decoded. Please save it as an "
                    "ordinary JPEG."
                )
            if canvas != (0, 0):
                raise _malformed(JPEG, "two frame headers")
            height, width = struct.unpack(">HH", reader.at(position + 5, 4).ljust(4, b"\0"))
            canvas = (width, height)
        elif marker in _TABLES:
            tables = _count(tables + 1, MAX_JPEG_TABLES, "table segments", JPEG)
            if marker == _DRI:
                (restart_interval,) = struct.unpack(
                    ">H", reader.at(position + 4, 2).ljust(2, b"\0")
                )
        elif 0xE0 <= marker <= 0xEF:
            markers = _count(markers + 1, MAX_JPEG_MARKERS, "metadata segments", JPEG)
            if marker == _APP1 and reader.at(position + 4, 6) == b"Exif\x00\x00":
                _check_exif(reader.at(position + 4, length - 2), JPEG)
        elif marker == _COM:
            comments = _count(comments + 1, MAX_JPEG_COMMENTS, "comment segments", JPEG)
            comment_bytes = _count(
                comment_bytes + length - 2, MAX_COMMENT_BYTES, "bytes of comments", JPEG, True
            )
        elif marker == _SOS:
            if canvas == (0, 0):
                raise _malformed(JPEG, "a scan before the frame header")
            scans = _count(scans + 1, MAX_JPEG_SCANS, "scans", JPEG, costly=True)
            blocks = -(-canvas[0] // 8) * -(-canvas[1] // 8)
            restarts_allowed = -(-blocks // restart_interval) if restart_interval else 0
            segment_end = _skip_entropy_coded(reader, segment_end, restarts_allowed)
        else:
            raise _malformed(JPEG, f"a marker 0x{marker:02X} no JPEG program writes")
        position = segment_end
    return Structure(JPEG, canvas)


def _skip_entropy_coded(reader: _Reader, position: int, restarts_allowed: int) -> int:
    """Where the coded data starting at ``position`` ends: the next marker's offset.

    Read 64 kB, then twice as much each time up to a megabyte; each 0xFF is found
    and told apart by numpy (a stuffed zero, a restart marker, or the marker that
    ends the data), so the scan runs at memory speed. Restart markers are counted
    on the way: no more than the scan's blocks and restart interval allow.
    """
    restarts, piece = 0, CHUNK
    while True:
        chunk = np.frombuffer(reader.at(position, piece), np.uint8)
        piece = min(2 * piece, ENTROPY_CHUNK)
        if len(chunk) < 2:
            return reader.size
        escapes = np.flatnonzero(chunk[:-1] == 0xFF)  # a last 0xFF is looked at again
        following = chunk[escapes + 1]
        restart = (following >= 0xD0) & (following <= 0xD7)
        ends = np.flatnonzero((following != 0) & (following != 0xFF) & ~restart)
        end = int(escapes[ends[0]]) if len(ends) else len(chunk) - 1
        restarts += int(np.count_nonzero(restart[: ends[0]] if len(ends) else restart))
        if restarts > restarts_allowed:
            raise _malformed(JPEG, "more restart markers than its restart interval allows")
        if len(ends):
            return position + end
        position += end


# --- PNG --------------------------------------------------------------------

_PNG_TEXT = {b"tEXt", b"zTXt", b"iTXt"}
_PNG_KNOWN = {
    *_PNG_TEXT,
    *(b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT"),
    *(b"sRGB", b"cICP", b"mDCv", b"cLLi", b"bKGD", b"hIST", b"pHYs", b"sPLT", b"tIME"),
    *(b"eXIf", b"acTL", b"fcTL", b"fdAT", b"oFFs", b"pCAL", b"sCAL", b"sTER", b"gIFg"),
}
_PNG_METADATA = {*_PNG_TEXT, b"iCCP", b"sPLT"}


def _scan_png(reader: _Reader) -> Structure:
    header = reader.at(8, 25)
    if header[4:8] != b"IHDR" or len(header) < 25:
        raise _malformed(PNG, "no image header first")
    width, height = struct.unpack_from(">II", header, 8)
    position = 8
    chunks = texts = palettes = unknown = frames = metadata_bytes = 0
    while True:
        head = reader.at(position, 8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise _malformed(PNG, "a chunk with an impossible length or name")
        if kind == b"IEND":
            break
        chunks = _count(chunks + 1, MAX_PNG_CHUNKS, "chunks", PNG)
        if kind in _PNG_TEXT:
            texts = _count(texts + 1, MAX_PNG_TEXT_CHUNKS, "text chunks", PNG)
        elif kind == b"sPLT":
            palettes = _count(palettes + 1, MAX_PNG_PALETTES, "suggested palettes", PNG)
        elif kind == b"fcTL":
            frames = _count(frames + 1, MAX_FRAMES, "frames", PNG)
            _check_png_frame(reader.at(position + 8, 20), (width, height))
        elif kind == b"eXIf":
            _count(length, MAX_EXIF_BYTES, "bytes of EXIF", PNG, costly=True)
            _check_exif(reader.at(position + 8, length), PNG)
        elif kind not in _PNG_KNOWN:
            if kind[0:1].isupper():
                raise _malformed(PNG, f"a critical chunk {kind!r} no PNG program writes")
            unknown = _count(unknown + 1, MAX_PNG_UNKNOWN_CHUNKS, "unknown chunks", PNG)
        if kind in _PNG_METADATA or kind not in _PNG_KNOWN:
            metadata_bytes = _count(
                metadata_bytes + length, MAX_METADATA_BYTES, "bytes of metadata", PNG, True
            )
        position += 12 + length
    return Structure(PNG, (width, height), max(frames, 1))


def _check_png_frame(control: bytes, canvas: tuple[int, int]) -> None:
    """An APNG frame lies within the canvas (its specification requires it)."""
    if len(control) < 20:
        return
    width, height, left, top = struct.unpack_from(">IIII", control, 4)
    if left + width > canvas[0] or top + height > canvas[1]:
        raise _malformed(PNG, "an animation frame outside the image")


# --- GIF --------------------------------------------------------------------


def _scan_gif(reader: _Reader) -> Structure:
    screen = reader.at(6, 7)
    if len(screen) < 7:
        raise _malformed(GIF, "no screen descriptor")
    width, height, flags = struct.unpack_from("<HHB", screen)
    canvas = (width, height)
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = extensions = comment_bytes = 0
    while True:
        introducer = reader.at(position, 1)
        if introducer in (b"", b";"):
            break
        if introducer == b",":
            descriptor = reader.at(position + 1, 10)
            if len(descriptor) < 10:
                break
            left, top, frame_width, frame_height, flags = struct.unpack_from("<HHHHB", descriptor)
            frames = _count(frames + 1, MAX_FRAMES, "frames", GIF)
            canvas = (max(canvas[0], left + frame_width), max(canvas[1], top + frame_height))
            position += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            if reader.at(position, 1) > b"\x08":
                raise _malformed(GIF, "an LZW code size over 8 bits")
            position, _ = _skip_sub_blocks(reader, position + 1)
        elif introducer == b"!":
            extensions = _count(extensions + 1, MAX_GIF_EXTENSIONS, "extension blocks", GIF)
            label = reader.at(position + 1, 1)
            position, size = _skip_sub_blocks(reader, position + 2, MAX_COMMENT_BYTES)
            if label == b"\xfe":
                comment_bytes = _count(
                    comment_bytes + size, MAX_COMMENT_BYTES, "bytes of comments", GIF, True
                )
        elif frames:
            break  # bytes after the frames are never decoded
        else:
            raise _malformed(GIF, "an unknown block before the first frame")
    return Structure(GIF, canvas, max(frames, 1))


def _skip_sub_blocks(reader: _Reader, position: int, most: int | None = None) -> tuple[int, int]:
    """The offset after a chain of sub-blocks starting at ``position``, and their bytes;
    or, past ``most`` bytes, where the walk stopped.

    Read 64 kB at a time and walked in memory, one length byte per 255 data bytes.
    """
    total = 0
    while most is None or total <= most:
        chunk = reader.at(position, CHUNK)
        if not chunk:
            return position, total
        offset = 0
        while offset < len(chunk):
            size = chunk[offset]
            if size == 0:
                return position + offset + 1, total
            total += size
            offset += size + 1
        position += offset
    return position, total


# --- WebP -------------------------------------------------------------------


def _scan_webp(reader: _Reader) -> Structure:
    (riff_size,) = struct.unpack("<I", reader.at(4, 4))
    end = min(8 + riff_size, reader.size)
    position = 12
    chunks = frames = metadata_bytes = 0
    canvas = (0, 0)
    while position + 8 <= end:
        kind, length = struct.unpack("<4sI", reader.at(position, 8))
        chunks = _count(chunks + 1, MAX_WEBP_CHUNKS, "chunks", WEBP)
        payload = reader.at(position + 8, 16).ljust(16, b"\0")
        if kind == b"VP8X":
            canvas = (_u24(payload, 4) + 1, _u24(payload, 7) + 1)
        elif kind == b"VP8 " and canvas == (0, 0):
            width, height = struct.unpack_from("<HH", payload, 6)
            canvas = (width & 0x3FFF, height & 0x3FFF)
        elif kind == b"VP8L" and canvas == (0, 0):
            (bits,) = struct.unpack_from("<I", payload, 1)
            canvas = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind == b"ANMF":
            frames = _count(frames + 1, MAX_FRAMES, "frames", WEBP)
            left, top = 2 * _u24(payload, 0), 2 * _u24(payload, 3)
            width, height = _u24(payload, 6) + 1, _u24(payload, 9) + 1
            if left + width > canvas[0] or top + height > canvas[1]:
                raise _malformed(WEBP, "an animation frame outside the image")
        elif kind == b"EXIF":
            _count(length, MAX_EXIF_BYTES, "bytes of EXIF", WEBP, costly=True)
            _check_exif(reader.at(position + 8, length), WEBP)
        elif kind not in _WEBP_IMAGE_CHUNKS:  # ICC, XMP and unknown chunks
            metadata_bytes = _count(
                metadata_bytes + length, MAX_METADATA_BYTES, "bytes of metadata", WEBP, True
            )
        position += 8 + length + (length & 1)
    return Structure(WEBP, canvas, max(frames, 1))


_WEBP_IMAGE_CHUNKS = {b"VP8X", b"VP8 ", b"VP8L", b"ANIM", b"ANMF", b"ALPH"}


def _u24(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 3], "little")


# --- BMP --------------------------------------------------------------------

_BMP_HEADERS = {12, 40, 52, 56, 64, 108, 124}
"""The sizes of the DIB headers Windows and OS/2 define."""
_BMP_COMPRESSIONS = {0: "none", 1: "RLE8", 2: "RLE4", 3: "bitfields", 6: "alpha bitfields"}


def _scan_bmp(reader: _Reader) -> Structure:
    header = reader.at(0, 54).ljust(54, b"\0")
    (pixels_at, header_size) = struct.unpack_from("<II", header, 10)
    if header_size not in _BMP_HEADERS:
        raise _malformed(BMP, "an unknown header")
    if header_size == 12:
        width, height, planes, depth = struct.unpack_from("<HHHH", header, 18)
        compression = 0
    else:
        width, height, planes, depth, compression = struct.unpack_from("<iiHHI", header, 18)
    height = abs(height)
    if compression not in _BMP_COMPRESSIONS:
        raise UnsupportedImageError(
            "The BMP holds a JPEG or PNG inside, which Windows programs do not write, "
            "so it is not decoded. Please upload the JPEG or PNG itself."
        )
    if planes != 1 or depth not in {1, 2, 4, 8, 16, 24, 32} or width < 1:
        raise _malformed(BMP, "an impossible size, plane count or depth")
    if compression in {0, 3, 6}:  # uncompressed: the rows must all be in the file
        rows_bytes = (width * depth + 31) // 32 * 4 * height
        if pixels_at + rows_bytes > reader.size:
            raise UnsupportedImageError(
                f"The BMP file declares {width} x {height} pixels but holds far fewer: it "
                "is truncated, so it is not decoded."
            )
    return Structure(BMP, (width, height))


# --- TIFF, and EXIF (a TIFF structure) in every format -----------------------

_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
}
_TIFF_BYTE_TYPES = {1, 2, 6, 7}
"""Types Pillow keeps as bytes; every other value becomes a Python number."""
_TIFF_STRIP_TAGS = {273, 279, 324, 325}  # strip and tile offsets and byte counts
_TIFF_SUB_DIRECTORIES = {330, 34665, 34853, 40965}  # SubIFDs, EXIF, GPS, interoperability
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257


def _scan_tiff(reader: _Reader) -> Structure:
    return Structure(TIFF, _walk_tiff(reader.at(0, 8), reader.at, reader.size, TIFF))


def _check_exif(blob: bytes, container: Format) -> None:
    """An EXIF block, held whole in memory (at most ``MAX_EXIF_BYTES``, 64 kB in JPEG),
    walked as the TIFF it is; a block that is not one is left to the decoders."""
    tiff = blob[6:] if blob.startswith(b"Exif\x00\x00") else blob
    if tiff[:4] in (b"II*\x00", b"MM\x00*"):
        _walk_tiff(
            tiff[:8], lambda offset, length: tiff[offset : offset + length], len(tiff), container
        )


def _walk_tiff(
    header: bytes, read: Callable[[int, int], bytes], size: int, format: Format
) -> tuple[int, int]:
    """Walk every IFD of a TIFF structure (the page chain, SubIFDs, EXIF, GPS);
    returns the first image's (width, height)."""
    order = "<" if header[:2] == b"II" else ">"
    (first,) = struct.unpack_from(order + "I", header.ljust(8, b"\0"), 4)
    pending, seen = [first], set()
    values = value_bytes = 0
    canvas = (0, 0)
    while pending:
        offset = pending.pop()
        if offset in seen:
            raise _malformed(format, "a directory that points back at itself")
        if not 8 <= offset < size:
            continue
        seen.add(offset)
        _count(len(seen), MAX_TIFF_DIRECTORIES, "directories", format)
        count_bytes = read(offset, 2)
        if len(count_bytes) < 2:
            continue
        (entries,) = struct.unpack(order + "H", count_bytes)
        _count(entries, MAX_TIFF_TAGS, "tags in a directory", format)
        table = read(offset + 2, 12 * entries + 4)
        for index in range(len(table) // 12):
            tag, kind, count, value = struct.unpack_from(order + "HHII", table, 12 * index)
            length = count * _TIFF_TYPE_SIZES.get(kind, 0)
            if tag in _TIFF_STRIP_TAGS:
                _count(count, MAX_TIFF_STRIPS, "strips or tiles", format, costly=True)
            if length > 4:
                if value + length > size:
                    continue  # data outside the file: every decoder skips the tag
                value_bytes += length
                if value_bytes > TIFF_VALUE_BYTES_PER_FILE_BYTE * size:
                    raise _malformed(format, "tags whose data overlaps many times")
            if kind not in _TIFF_BYTE_TYPES:
                values = _count(values + count, MAX_TIFF_VALUES, "numbers in tags", format, True)
            if tag in _TIFF_SUB_DIRECTORIES:
                pending.extend(_offsets(read, order, kind, count, value, length))
            if offset == first and tag == _TIFF_WIDTH:
                canvas = (_inline(order, kind, value), canvas[1])
            elif offset == first and tag == _TIFF_HEIGHT:
                canvas = (canvas[0], _inline(order, kind, value))
        if len(table) == 12 * entries + 4:
            (following,) = struct.unpack_from(order + "I", table, 12 * entries)
            if following:
                pending.append(following)
    return canvas


def _inline(order: str, kind: int, value: int) -> int:
    """A SHORT or LONG held in the entry itself (read as a LONG by the caller)."""
    if kind == 3:
        return value >> 16 if order == ">" else value & 0xFFFF
    return value


def _offsets(
    read: Callable[[int, int], bytes], order: str, kind: int, count: int, value: int, length: int
) -> list[int]:
    """The IFD offsets a SubIFDs, EXIF or GPS tag holds."""
    if kind not in {4, 13} or count > MAX_TIFF_DIRECTORIES:
        return []
    if length <= 4:
        return [value]
    data = read(value, length)
    return list(struct.unpack(f"{order}{len(data) // 4}I", data[: len(data) // 4 * 4]))


# --- AVIF and HEIC (ISO base media file format) --------------------------------

_BMFF_CONTAINERS = {b"meta": 4, b"iinf": -1, b"iprp": 0, b"ipco": 0, b"dinf": 0, b"moov": 0}
_BMFF_CONTAINERS |= {b"trak": 0, b"mdia": 0, b"minf": 0, b"stbl": 0, b"edts": 0, b"grpl": 0}
"""Boxes made of boxes -> bytes of their own fields before the first child (-1: iinf's,
which depend on its version)."""


def _scan_iso(format: Format) -> Callable[[_Reader], Structure]:
    def scan_iso(reader: _Reader) -> Structure:
        _walk_boxes(reader, 0, reader.size, 1, 0, format)
        return Structure(format, (0, 0))

    return scan_iso


def _walk_boxes(
    reader: _Reader, start: int, end: int, depth: int, boxes: int, format: Format
) -> int:
    """Count the boxes between ``start`` and ``end``, descending into containers;
    returns the running count."""
    _count(depth, MAX_BMFF_DEPTH, "levels of nested boxes", format)
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack(">I4s", reader.at(position, 8))
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", reader.at(position + 8, 8).ljust(8, b"\0"))
            header = 16
        elif size == 0:
            size = end - position
        if size < header:
            raise _malformed(format, "a box shorter than its header")
        boxes = _count(boxes + 1, MAX_BMFF_BOXES, "boxes", format)
        if position + size > end and depth > 1:
            raise _malformed(format, "a box larger than the box holding it")
        fields = _BMFF_CONTAINERS.get(kind)
        if fields is not None:
            body = position + header
            if kind == b"iinf":
                version = reader.at(body, 1)
                width = 2 if version == b"\x00" else 4
                items = int.from_bytes(reader.at(body + 4, width), "big")
                _count(items, MAX_HEIF_ITEMS, "items", format)
                fields = 4 + width
            boxes = _walk_boxes(
                reader, body + fields, min(position + size, end), depth + 1, boxes, format
            )
        position += size
    return boxes


SCANNERS: dict[Format, Callable[[_Reader], Structure]] = {
    JPEG: _scan_jpeg,
    PNG: _scan_png,
    GIF: _scan_gif,
    WEBP: _scan_webp,
    BMP: _scan_bmp,
    TIFF: _scan_tiff,
    AVIF: _scan_iso(AVIF),
    HEIF: _scan_iso(HEIF),
}
"""Each accepted format's structural scan."""
