"""A seeded mutation fuzzer over the app's two ways in: ``POST /classify`` and ``/predict``.

Seeds are real files in every format the app reads (JPEG baseline and
progressive, PNG in five modes, interlaced PNG, GIF, WebP, BMP, TIFF, AVIF,
HEIC), small and over 4 megapixels (the shrinking decoders). Each case applies one to
three mutations, as file fuzzers do: bit flips, runs of bytes, truncation,
edits of header fields to edge values, and splices of two files; PNG chunk
checksums are sometimes fixed again, so edits reach past the CRC check into
the decoders. The same seed gives the same cases.

Every answer must be a 200 or a JSON 4xx (503 with ``Retry-After`` allowed);
never a 500, never a dropped connection; ``POST /classify/batch`` gets them
several to a form and must answer each in its own entry.
``tests/test_fuzz.py`` runs a few hundred cases; ``benchmarks/fuzz.py`` runs
thousands and counts them.
"""

from __future__ import annotations

import io
import random
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.support.images import save_heic

EDGE_VALUES = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
HEADER_BYTES = 512
"""Header-field edits land here: where every format keeps its sizes, modes and offsets."""


def seed_files(photo: Image.Image) -> dict[str, bytes]:
    """``photo`` saved in every format and variant the app reads, small and large."""
    small = photo.convert("RGB").resize((96, 64))
    large = photo.convert("RGB").resize((2400, 1800))  # 4.3 megapixels: the shrinking paths
    files: dict[str, bytes] = {}

    def save(name: str, image: Image.Image, format: str, **options: object) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format, **options)
        files[name] = buffer.getvalue()

    for size, image in (("small", small), ("large", large)):
        save(f"{size}.jpg", image, "JPEG", quality=85)
        save(f"{size}-progressive.jpg", image, "JPEG", quality=85, progressive=True)
        save(f"{size}.png", image, "PNG")
        save(f"{size}.webp", image, "WEBP", quality=80)
        save(f"{size}.tiff", image, "TIFF", compression="tiff_deflate")
        save(f"{size}.gif", image.quantize(64), "GIF")
        save(f"{size}.avif", image, "AVIF", quality=50, speed=10)
        files[f"{size}.heic"] = heic(image)
    rgba = small.convert("RGBA")
    rgba.putalpha(128)
    save("rgba.png", rgba, "PNG")
    save("gray16.png", Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257), "PNG")
    save("palette.png", small.quantize(16), "PNG", transparency=0)
    save("interlaced.png", small, "PNG", interlace=1)
    save("small.bmp", small, "BMP")
    save("cmyk.jpg", small.convert("CMYK"), "JPEG")
    frames = [small.quantize(32), small.rotate(90).quantize(32)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    files["animated.gif"] = buffer.getvalue()
    return files


def heic(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    save_heic(image, buffer, quality=60)
    return buffer.getvalue()


# --- mutations ---------------------------------------------------------------


def flip_bits(data: bytearray, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 16)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return "bit flips"


def byte_run(data: bytearray, rng: random.Random) -> str:
    start = rng.randrange(len(data))
    length = min(rng.choice((1, 4, 16, 64, 512)), len(data) - start)
    fill = rng.choice((b"\0", b"\xff", bytes([rng.randrange(256)]), None))
    data[start : start + length] = (
        fill * length if fill else bytes(rng.randrange(256) for _ in range(length))
    )
    return "byte run"


def truncate(data: bytearray, rng: random.Random) -> str:
    del data[rng.randrange(1, len(data)) :]
    return "truncation"


def edit_header_field(data: bytearray, rng: random.Random) -> str:
    width = rng.choice((1, 2, 4))
    offset = rng.randrange(max(1, min(len(data), HEADER_BYTES) - width))
    value = rng.choice(EDGE_VALUES) & ((1 << (8 * width)) - 1)
    data[offset : offset + width] = value.to_bytes(width, rng.choice(("big", "little")))
    return "header field"


Mutation = Callable[[bytearray, random.Random], str]
MUTATIONS: tuple[Mutation, ...] = (flip_bits, byte_run, truncate, edit_header_field)


def fix_png_checksums(data: bytes) -> bytes:
    """Recompute each PNG chunk's CRC, where the chunk structure still holds."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, position = bytearray(data[:8]), 8
    while position + 12 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        end = position + 12 + length
        if end > len(data):
            break
        body = data[position + 4 : end - 4]
        out += data[position : position + 4] + body + struct.pack(">I", zlib.crc32(body))
        position = end
    return bytes(out + data[position:])


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes


def cases(seeds: dict[str, bytes], count: int, seed: int = 0) -> Iterator[Case]:
    """``count`` mutated files, the same for the same ``seed``."""
    rng = random.Random(seed)
    names = sorted(seeds)
    for number in range(count):
        base = rng.choice(names)
        data = bytearray(seeds[base])
        steps = []
        if rng.random() < 0.15:  # a splice: one file's head on another's tail
            other = seeds[rng.choice(names)]
            data = data[: rng.randrange(1, len(data))] + other[rng.randrange(len(other)) :]
            steps.append("splice")
        for _ in range(rng.randint(1, 3)):
            if data:
                steps.append(rng.choice(MUTATIONS)(data, rng))
        mutated = bytes(data)
        if rng.random() < 0.5:
            mutated = fix_png_checksums(mutated)
        yield Case(f"{number}: {base}, {' + '.join(steps)}", mutated)


# --- sending them ------------------------------------------------------------


@dataclass
class Tally:
    """Answers by kind, and the cases that broke the rules."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, case: Case, ok: bool, detail: str = "") -> None:
        with self._lock:  # clients send from several threads
            self.counts[kind] += 1
            if not ok:
                self.failures.append(f"{case.name}: {kind} {detail}"[:300])


def send_rest(http: httpx.Client, case: Case, tally: Tally) -> None:
    """One case to ``POST /classify``: 200, or a JSON 4xx (503 with Retry-After)."""
    try:
        response = http.post("classify", files={"file": ("upload", case.data)})
    except httpx.HTTPError as error:
        tally.add("dropped", case, ok=False, detail=repr(error))
        return
    status = response.status_code
    try:
        shaped = status == 200 or set(response.json()) == {"error"}
    except ValueError:
        shaped = False
    busy = status == 503 and "retry-after" in response.headers
    allowed = status == 200 or 400 <= status < 500 or busy
    tally.add(f"REST {status}", case, ok=shaped and allowed, detail=response.text[:200])


def send_batch(http: httpx.Client, batch: list[Case], tally: Tally) -> None:
    """Cases together to ``POST /classify/batch``: 200 with one entry per file, in
    order, each its predictions or its error; or a JSON 4xx for the form."""
    case = Case(" | ".join(c.name for c in batch), b"")
    files = [("files", (f"upload{i}", c.data)) for i, c in enumerate(batch)]
    try:
        response = http.post("classify/batch", files=files)
    except httpx.HTTPError as error:
        tally.add("dropped", case, ok=False, detail=repr(error))
        return
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        tally.add(f"batch {status}", case, ok=False, detail=response.text[:200])
        return
    if status == 200:
        results = body.get("results", [])
        ok = [r.get("file") for r in results] == [f"upload{i}" for i in range(len(batch))] and all(
            ("predictions" in r) != ("error" in r) for r in results
        )
    else:
        ok = 400 <= status < 500 and set(body) == {"error"}
    tally.add(f"batch {status}", case, ok=ok, detail=response.text[:200])


def send_page(client: Client, folder: Path, case: Case, tally: Tally) -> None:
    """One case to the page's ``/predict``: a prediction or a message for people, never a bug."""
    path = folder / "upload"
    path.write_bytes(case.data)
    try:
        client.predict(handle_file(str(path)), api_name="/predict")
    except AppError as error:
        message = str(error)
        tally.add("page message", case, ok="Internal error" not in message, detail=message)
    except Exception as error:  # a dropped connection, a broken event stream
        tally.add("page failure", case, ok=False, detail=repr(error))
    else:
        tally.add("page prediction", case, ok=True)
