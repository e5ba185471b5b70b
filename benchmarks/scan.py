"""The structural pre-scan: what it adds to every upload, and how soon it refuses.

``classifier.formats.scan`` runs before every decode. This times it (median
and slowest of each group, and the throughput over the group's bytes) on the
ImageNet sample photos, on each kind of 40-megapixel upload the memory tests
use, on 14 MB of noise as a baseline and a progressive JPEG (the files whose
coded data the scan must read whole), and on the seeded hostile files of
``tests/support/hostile.py``, which it must refuse (or pass, for the large
canvases) in bounded time. No model is loaded.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import options, report
from classifier import formats
from classifier.formats import ImageError
from tests.support.hostile import hostile_files
from tests.support.images import write_large_images
from tests.support.photos import IMAGENET_SAMPLE


def scanned(data: bytes) -> tuple[float, str]:
    """Seconds the scan took on ``data``, and what it answered."""
    start = time.perf_counter()
    try:
        formats.scan(io.BytesIO(data))
        outcome = "passed"
    except ImageError as error:
        outcome = str(error.status)
    return time.perf_counter() - start, outcome


def row(group: str, files: list[bytes]) -> dict[str, Any]:
    results = [scanned(data) for data in files]
    seconds = [result[0] for result in results]
    outcomes = sorted({result[1] for result in results})
    return {
        "files": group,
        "count": len(files),
        "MB": sum(map(len, files)) / 1e6,
        "median_ms": statistics.median(seconds) * 1e3,
        "slowest_ms": max(seconds) * 1e3,
        "MB/s": sum(map(len, files)) / 1e6 / sum(seconds),
        "outcomes": " ".join(outcomes),
    }


def noise_jpegs() -> list[bytes]:
    """12 MP of noise, baseline and progressive: 0xFF all through their coded data."""
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    files = []
    for progressive in (False, True):
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, "JPEG", quality=95, progressive=progressive)
        files.append(buffer.getvalue())
    return files


def main() -> None:
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument("--photos", type=int, default=100, help="how many sample photos")
    arguments.add_argument("--hostile", type=int, default=360, help="how many hostile files")
    arguments.add_argument("--seed", type=int, default=0, help="the hostile files' seed")
    args = arguments.parse_args()
    photos = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[: args.photos]
    rows = []
    if photos:
        rows.append(row("ImageNet sample", [photo.read_bytes() for photo in photos]))
    with tempfile.TemporaryDirectory(prefix="scan-") as folder:
        large = [path.read_bytes() for path in write_large_images(Path(folder))]
    rows.append(row("40 MP uploads, every kind", large))
    rows.append(row("12 MP noise JPEGs", noise_jpegs()))
    rows.append(row("hostile", [data for _, data in hostile_files(args.seed, args.hostile)]))
    report(args, "scan", {"The structural pre-scan, per file": rows})


if __name__ == "__main__":
    main()
