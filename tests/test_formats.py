"""The allow-list of formats and the structural pre-scan, by attack class.

- Formats: every format Pillow or libvips can write, and a crafted header for
  each one Pillow only reads, is refused (415) before any decoder runs, unless
  it is one of the README's; those are accepted by their bytes, whatever their
  name or declared type.
- Hostile files (``tests/support/hostile.py``, seeded): metadata floods, CPU
  bombs and declared sizes in each accepted format are refused 413/415 before
  any decoder runs, in bounded work; animations with a huge canvas are costed
  by it.
- Real photos: every one of the sample, every accepted format as Pillow and
  libvips write it by default, animations, camera JPEGs with EXIF and a
  thumbnail, are accepted, and their model input is the one Pillow's own
  decode of the same file gives.
- Over HTTP: a few of each class answer 415/413 with ``{"error": ...}``.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import pyvips
from PIL import Image, ImageFile

from classifier import formats
from classifier.formats import ImageError, UnsupportedImageError
from classifier.metadata import Preprocessing
from classifier.options import BASE_COST
from classifier.preprocess import decode_cost, open_image, preprocess
from tests.support.hostile import ATTACKS, Attack, hostile_files, tiff_directory, tiff_entry
from tests.support.images import cat, png_chunk, save_heic
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO, imagenet_sample_photos

SPEC = Preprocessing()


def forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("a decoder ran on a file the scan should have refused")


@contextmanager
def no_decoder(headers: bool = False) -> Iterator[None]:
    """Pillow's decoders and libvips' loaders fail the test if they run; so does
    ``Image.open`` (Pillow's header parsers) unless ``headers``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", forbidden)
        for loader in ("thumbnail_source", "new_from_source", "new_from_file", "new_from_buffer"):
            patch.setattr(pyvips.Image, loader, forbidden)
        if not headers:
            patch.setattr(Image, "open", forbidden)
        yield


def saved(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


# --- the allow-list, over every format Pillow and libvips know -----------------

ACCEPTED_PLUGINS = {plugin for format in formats.SCANNERS for plugin in format.plugins}
ACCEPTED_PLUGINS |= {"MPO"}  # a JPEG with more JPEGs after it
SAVE_MODES = ("RGB", "L", "P", "1", "RGBA", "F", "I;16")


def pillow_written(plugin: str) -> bytes | None:
    """A small image as Pillow's ``plugin`` writes it, in the first mode it takes."""
    for mode in SAVE_MODES:
        try:
            return saved(cat().resize((32, 24)).convert(mode), plugin)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def fits_header() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8"]
    cards += ["NAXIS   =                    2", "NAXIS1  =                    8"]
    cards += ["NAXIS2  =                    8", "END"]
    return "".join(card.ljust(80) for card in cards).ljust(2880).encode() + bytes(64)


CRAFTED: dict[str, bytes] = {
    "BUFR": b"BUFR" + bytes(60),
    "CUR": b"\x00\x00\x02\x00\x01\x00" + struct.pack("<BBBBHHII", 8, 8, 0, 0, 0, 0, 40, 22),
    "DCX": struct.pack("<II", 987654321, 12) + bytes(64),
    "EPS": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
    "FITS": fits_header(),
    "FLI": struct.pack("<IHHHH", 128, 0xAF11, 1, 8, 8) + bytes(116),
    "FTEX": b"FTEX" + bytes(60),
    "GBR": struct.pack(">IIIII", 28, 2, 8, 8, 1) + b"GIMP" + struct.pack(">I", 10) + bytes(64),
    "GRIB": b"GRIB" + bytes(60),
    "HDF5": b"\x89HDF\r\n\x1a\n" + bytes(56),
    "IMT": b"width 8\nheight 8\npixel n8\n\x0c" + bytes(64),
    "IPTC": b"\x1c\x01\x5a\x00\x03\x1b%G" + bytes(56),
    "MCIDAS": b"\x00\x00\x00\x00\x00\x00\x00\x04" + bytes(1024),
    "MPEG": b"\x00\x00\x01\xb3\x00\x80\x08\x00" + bytes(56),
    "PCD": bytes(2048) + b"PCD_IPI" + bytes(64),
    "PIXAR": b"\x80\xe8\x00\x00" + bytes(1024),
    "PSD": b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 8, 8, 8, 3) + bytes(64),
    "SUN": struct.pack(">IIIIIIII", 0x59A66A95, 8, 8, 8, 64, 1, 0, 0) + bytes(64),
    "WMF": b"\xd7\xcd\xc6\x9a" + bytes(60),
    "XPM": b'/* XPM */\nstatic char *x[] = {\n"1 1 1 1",\n"a c #000000",\n"a"};\n',
    "XVTHUMB": b"P7 332\n#END_OF_COMMENTS\n1 1 255\n\x00",
}
"""A header Pillow's plugin recognises, for each format it reads but does not write
(or writes only with software the app lacks)."""
NOT_PILLOW: dict[str, bytes] = {
    "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
    "PDF": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
    "JPEG XL": b"\xff\x0a\xfa\x7f" + bytes(60),
    "HTML": b"<!doctype html><img src=x>",
    "DOS EPS": b"\xc5\xd0\xd3\xc6" + struct.pack("<II", 32, 40) + bytes(20) + b"%!PS-Adobe-3.0",
    "MP4": struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2" + bytes(32),
    "BigTIFF": b"II+\x00\x08\x00\x00\x00" + bytes(56),
    "empty": b"",
}


def pillow_plugins() -> list[str]:
    Image.init()
    return sorted(set(Image.OPEN) | set(Image.SAVE))


def refused_sample(plugin: str) -> bytes:
    """What Pillow's ``plugin`` writes, or a header it recognises."""
    written = pillow_written(plugin)
    if written is None and plugin not in CRAFTED:
        pytest.fail(f"Pillow has a new format, {plugin}: add a header for it to CRAFTED")
    return written if written is not None else CRAFTED[plugin]


@pytest.mark.parametrize("plugin", sorted(set(pillow_plugins()) - ACCEPTED_PLUGINS))
def test_every_other_format_pillow_knows_is_refused_before_any_decoder(plugin: str) -> None:
    sample = refused_sample(plugin)
    with no_decoder(), pytest.raises(UnsupportedImageError, match="not an image") as refused:
        open_image(sample)
    assert refused.value.status == 415
    assert formats.ACCEPTED in str(refused.value)


@pytest.mark.parametrize("kind", NOT_PILLOW)
def test_formats_pillow_does_not_know_are_refused_before_any_decoder(kind: str) -> None:
    with no_decoder(), pytest.raises(UnsupportedImageError):
        open_image(NOT_PILLOW[kind])


def test_an_icon_holding_a_large_png_is_refused() -> None:
    """The PNG inside would be accepted on its own; wrapped, it is an ICO."""
    inner = saved(cat(), "PNG")
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22)
    with no_decoder(), pytest.raises(UnsupportedImageError):
        open_image(b"\x00\x00\x01\x00\x01\x00" + entry + inner)


def vips_written(suffix: str, folder: Path) -> bytes | None:
    """A small image as libvips' saver for ``suffix`` writes it, if this libvips has one."""
    image = pyvips.Image.new_from_array(np.asarray(cat().resize((32, 24))))
    try:
        return image.write_to_buffer(suffix)
    except pyvips.Error:
        pass
    try:  # some savers write only to files
        image.write_to_file(str(folder / f"image{suffix}"))
    except pyvips.Error:
        return None
    return (folder / f"image{suffix}").read_bytes()


VIPS_ACCEPTED = {".gif", ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff"}
VIPS_ACCEPTED |= {".heic", ".heif", ".avif"}


@pytest.mark.parametrize("suffix", sorted(set(pyvips.base.get_suffixes()) - VIPS_ACCEPTED))
def test_every_other_format_libvips_writes_is_refused_before_any_decoder(
    suffix: str, tmp_path: Path
) -> None:
    data = vips_written(suffix, tmp_path)
    assert data is not None
    with no_decoder(), pytest.raises(UnsupportedImageError):
        open_image(data)


@pytest.mark.parametrize("suffix", sorted(VIPS_ACCEPTED))
def test_every_accepted_format_libvips_writes_is_accepted(suffix: str, tmp_path: Path) -> None:
    data = vips_written(suffix, tmp_path)
    if data is None:  # HEVC: patented, left out of libvips' wheel; pillow-heif writes HEIC
        pytest.skip(f"this libvips cannot write {suffix}")
    assert preprocess(data, SPEC).shape == (299, 299, 3)


ACCEPTED_SAMPLES: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg": lambda image: saved(image, "JPEG"),
    "progressive jpeg": lambda image: saved(image, "JPEG", progressive=True, quality=90),
    "mpo": lambda image: saved(image, "MPO", save_all=True, append_images=[image.rotate(90)]),
    "png": lambda image: saved(image, "PNG"),
    "16-bit png": lambda image: saved(
        Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257), "PNG"
    ),
    "apng": lambda image: saved(
        image, "PNG", save_all=True, append_images=[image.rotate(180)], duration=100
    ),
    "gif": lambda image: saved(image.quantize(64), "GIF"),
    "animated gif": lambda image: saved(
        image.quantize(64), "GIF", save_all=True, append_images=[image.rotate(180).quantize(64)]
    ),
    "webp": lambda image: saved(image, "WEBP"),
    "lossless webp": lambda image: saved(image.convert("RGBA"), "WEBP", lossless=True),
    "animated webp": lambda image: saved(
        image, "WEBP", save_all=True, append_images=[image.rotate(180)], duration=100
    ),
    "bmp": lambda image: saved(image, "BMP"),
    "palette bmp": lambda image: saved(image.quantize(16), "BMP"),
    "tiff": lambda image: saved(image, "TIFF"),
    "tiff lzw": lambda image: saved(image, "TIFF", compression="tiff_lzw"),
    "tiff jpeg": lambda image: saved(image, "TIFF", compression="jpeg"),
    "multi-page tiff": lambda image: saved(
        image, "TIFF", save_all=True, append_images=[image.rotate(180)]
    ),
    "avif": lambda image: saved(image, "AVIF", quality=80),
    "heic": lambda image: heic(image),
    "vips interlaced png": lambda image: vips(image, ".png", interlace=True),
    "vips tiled tiff": lambda image: vips(image, ".tif", tile=True, pyramid=True),
    "vips jpeg": lambda image: vips(image, ".jpg"),
    "vips webp": lambda image: vips(image, ".webp"),
    "vips gif": lambda image: vips(image, ".gif"),
    "vips avif": lambda image: vips(image, ".avif"),
}
"""Every accepted format as Pillow (or libvips, or pillow-heif) writes it by default."""


def heic(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    save_heic(image, buffer)
    return buffer.getvalue()


def vips(image: Image.Image, suffix: str, **options: object) -> bytes:
    return pyvips.Image.new_from_array(np.asarray(image)).write_to_buffer(suffix, **options)


@pytest.mark.parametrize("kind", ACCEPTED_SAMPLES)
def test_each_accepted_format_gives_the_input_pillows_own_decode_gives(kind: str) -> None:
    """The scan and ``formats=`` change nothing for a real file: its input is bit-identical
    to the one from Pillow's own decode of it (a trusted ``Image``)."""
    data = ACCEPTED_SAMPLES[kind](cat())
    ours = preprocess(data, SPEC)  # first: a HEIC registers pillow-heif
    np.testing.assert_array_equal(ours, preprocess(Image.open(io.BytesIO(data)), SPEC))


@pytest.mark.parametrize("kind", ["jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic"])
def test_an_accepted_format_named_as_another_is_read_by_its_bytes(
    kind: str, tmp_path: Path
) -> None:
    path = tmp_path / ("photo.txt" if kind == "jpeg" else "photo.jpg")
    path.write_bytes(ACCEPTED_SAMPLES[kind](cat()))
    assert preprocess(path, SPEC).shape == (299, 299, 3)


# --- hostile files: floods, CPU bombs, declared sizes, canvases -----------------


class CountingStream(io.BytesIO):
    """A stream that counts what was read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.reads += 1
        self.bytes_read += len(data)
        return data


READS_BOUND = 2 * formats.MAX_PNG_CHUNKS + 1_000
"""Reads the scan may take before it refuses: two for each item under the largest
count limit. The floods hold up to 300,000 items."""

REFUSED = [attack for attack in ATTACKS if attack.status is not None]
COSTED = [attack for attack in ATTACKS if attack.status is None]


@pytest.mark.parametrize("attack", REFUSED, ids=lambda attack: attack.name)
def test_hostile_files_are_refused_before_decoding_in_bounded_work(attack: Attack) -> None:
    for seed in range(3):
        what, data = attack.build(random.Random(seed))
        stream = CountingStream(data)
        with no_decoder(headers=not attack.by_scan), pytest.raises(ImageError) as refused:
            open_image(stream)
        assert refused.value.status == attack.status, (what, str(refused.value))
        assert stream.reads <= READS_BOUND, what
        if len(data) > 2**21:  # megabytes of metadata: refused from their headers
            assert stream.bytes_read < len(data) / 2, what


@pytest.mark.parametrize("attack", COSTED, ids=lambda attack: attack.name)
def test_an_animation_is_costed_by_its_canvas(attack: Attack) -> None:
    """A canvas far larger than its frames: the decode costs the whole canvas, at
    least a byte a pixel, however small the frames (and the file)."""
    for seed in range(3):
        what, data = attack.build(random.Random(seed))
        with no_decoder(headers=True):
            image = open_image(data)
        width, height = image.size
        assert decode_cost(image, io.BytesIO(data)) - BASE_COST >= width * height, what


def test_an_animated_webp_is_costed_as_a_full_decode() -> None:
    """libvips cannot shrink an animation on load: 5.5 bytes a canvas pixel measured."""
    from tests.support.hostile import webp_animation

    still = saved(Image.new("RGB", (2400, 2000)), "WEBP")
    animated = webp_animation(2400, 2000, 2)
    costs = [
        decode_cost(open_image(data), io.BytesIO(data)) - BASE_COST for data in (still, animated)
    ]
    assert costs[1] >= 5 * 2400 * 2000 > 4 * costs[0]


def test_the_generator_is_seeded_and_names_every_file() -> None:
    first = list(hostile_files(7, 2 * len(ATTACKS)))
    assert [name for name, _ in first] == [name for name, _ in hostile_files(7, 2 * len(ATTACKS))]
    assert {name.split(":")[0] for name, _ in first} == {attack.name for attack in ATTACKS}
    assert all(data for _, data in first)


# --- real photos -----------------------------------------------------------------


def test_every_sample_photo_and_example_passes_the_scan() -> None:
    for photo in [CAT_PHOTO, COFFEE_PHOTO, *imagenet_sample_photos()]:
        structure = formats.scan(photo)
        assert structure.canvas == Image.open(photo).size, photo


def camera_exif(thumbnail: bytes) -> bytes:
    """EXIF as a camera writes it: IFD0, an EXIF IFD of 40 tags and a 30 kB maker
    note, and IFD1 pointing at a JPEG thumbnail."""
    maker_note = random.Random(0).randbytes(30_000)
    exif_tags = [tiff_entry(0x9000 + i, 3, 1, i) for i in range(39)]
    ifd0_at, exif_at = 8, 8 + 2 + 12 * 3 + 4
    note_at = exif_at + 2 + 12 * 40 + 4
    ifd1_at = note_at + len(maker_note)
    thumbnail_at = ifd1_at + 2 + 12 * 3 + 4
    ifd0 = [tiff_entry(0x010F, 2, 4, 0x006E6143), tiff_entry(0x0112, 3, 1, 1)]
    ifd0.append(tiff_entry(0x8769, 4, 1, exif_at))
    exif = [*exif_tags, tiff_entry(0x927C, 7, len(maker_note), note_at)]
    ifd1 = [tiff_entry(0x0103, 3, 1, 6), tiff_entry(0x0201, 4, 1, thumbnail_at)]
    ifd1.append(tiff_entry(0x0202, 4, 1, len(thumbnail)))
    return (
        b"Exif\x00\x00II*\x00"
        + struct.pack("<I", ifd0_at)
        + tiff_directory(ifd0, following=ifd1_at)
        + tiff_directory(exif)
        + maker_note
        + tiff_directory(ifd1)
        + thumbnail
    )


def test_a_camera_jpeg_with_exif_and_a_thumbnail_is_accepted() -> None:
    thumbnail = saved(cat().resize((160, 120)), "JPEG", quality=80)
    exif = camera_exif(thumbnail)
    data = saved(cat(), "JPEG", exif=exif, quality=95)
    assert len(exif) > 35_000
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 1
    assert formats.scan(io.BytesIO(data)).canvas == cat().size
    np.testing.assert_array_equal(
        preprocess(data, SPEC), preprocess(Image.open(io.BytesIO(data)), SPEC)
    )


def test_a_png_with_text_an_icc_profile_and_exif_is_accepted() -> None:
    data = saved(cat(), "PNG", exif=camera_exif(b"")[6:], icc_profile=b"\x00" * 3000)
    text = png_chunk(b"tEXt", b"Software\x00an editor")
    data = data[:33] + text * 10 + data[33:]
    assert preprocess(data, SPEC).shape == (299, 299, 3)


# --- over HTTP ------------------------------------------------------------------

HTTP_CASES: dict[str, tuple[bytes, int]] = {
    "eps": (CRAFTED["EPS"], 415),
    "fits": (CRAFTED["FITS"], 415),
    "icon holding a png": (saved(Image.new("RGB", (64, 64)), "ICO"), 415),
}


def attack_case(name: str) -> tuple[bytes, int | None]:
    attack = next(attack for attack in ATTACKS if attack.name == name)
    return attack.build(random.Random(1))[1], attack.status


HTTP_ATTACKS = [
    "jpeg-scan-repeated",
    "jpeg-comment-block",
    "gif-comment-block",
    "png-text-flood",
    "webp-chunk-flood",
    "tiff-tag-overlap",
    "iso-box-flood",
    "bmp-declared-size",
    "png-declared-size",
]


@pytest.fixture(scope="module")
def http(app_url: str) -> httpx.Client:
    with httpx.Client(base_url=app_url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("case", [*HTTP_CASES, *HTTP_ATTACKS])
def test_refusals_over_http_are_json_413_or_415(http: httpx.Client, case: str) -> None:
    data, status = HTTP_CASES[case] if case in HTTP_CASES else attack_case(case)
    raw = http.post("classify", content=data, headers={"Content-Type": "image/jpeg"})
    form = http.post("classify", files={"file": ("photo.png", data)})
    for response in (raw, form):
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"}


def test_an_animation_with_a_huge_canvas_is_never_a_5xx(http: httpx.Client) -> None:
    for name in ("webp-large-canvas", "gif-large-canvas", "apng-large-canvas"):
        data, _ = attack_case(name)
        response = http.post("classify", content=data, headers={"Content-Type": "image/webp"})
        assert response.status_code in {200, 413}, (name, response.text)


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "heic"])
def test_a_photo_with_a_wrong_type_or_name_is_classified_over_http(
    http: httpx.Client, kind: str
) -> None:
    data = ACCEPTED_SAMPLES[kind](cat())
    raw = http.post("classify", content=data, headers={"Content-Type": "image/gif"})
    form = http.post("classify", files={"file": ("notes.txt", data, "text/plain")})
    assert raw.status_code == form.status_code == 200, (raw.text, form.text)
