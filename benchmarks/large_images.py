"""Large images: the shrink-on-load path against the exact Keras path, per format.

Images over 4 megapixels are shrunk while they decode (libvips, or Pillow
strip by strip) before the final resize, instead of being decoded whole and
resized at once as Keras' ``load_img`` does. This measures what that costs
in answers: each photo is upscaled to 2400 x 1800 and saved in each format,
then classified both ways by the same model; top-1 agreement, the largest
probability difference, and each path's time (median).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import models, options, report
from classifier.model import Classifier
from classifier.preprocess import preprocess
from tests.support.photos import IMAGENET_SAMPLE

SIZE = (2400, 1800)
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "JPEG": (".jpg", {"quality": 90}),
    "PNG": (".png", {}),
    "RGBA PNG": (".png", {}),
    "WebP": (".webp", {"quality": 90}),
}


def upscaled(photo: Path, kind: str, folder: Path) -> Path:
    suffix, save_options = FORMATS[kind]
    path = folder / f"{photo.stem}-{kind.replace(' ', '-')}{suffix}"
    with Image.open(photo) as image:
        big = image.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
    if kind == "RGBA PNG":
        big.putalpha(255)
    big.save(path, **save_options)
    return path


def timed(call: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def compare(classifier: Classifier, photos: list[Path], kind: str, folder: Path) -> dict[str, Any]:
    spec = classifier.metadata.preprocessing
    agree, differences, shrunk_s, exact_s = 0, [], [], []
    for photo in photos:
        path = upscaled(photo, kind, folder)
        shrunk, seconds = timed(lambda path=path: preprocess(path, spec))
        shrunk_s.append(seconds)
        # A PIL image takes the exact path at any size: decoded whole, resized at once.
        exact, seconds = timed(lambda path=path: preprocess(Image.open(path), spec))
        exact_s.append(seconds)
        both = classifier.predict(np.stack([shrunk, exact]))
        agree += int(np.argmax(both[0]) == np.argmax(both[1]))
        differences.append(float(np.max(np.abs(both[0] - both[1]))))
        path.unlink()
    return {
        "format": kind,
        "photos": len(photos),
        "top1_agreement_%": 100 * agree / len(photos),
        "max_prob_diff": max(differences),
        "shrunk_ms": statistics.median(shrunk_s) * 1e3,
        "exact_ms": statistics.median(exact_s) * 1e3,
    }


def main() -> None:
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument("--photos", type=int, default=100, help="how many sample photos")
    args = arguments.parse_args()
    photos = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[: args.photos]
    if not photos:
        raise SystemExit(f"error: no photos in {IMAGENET_SAMPLE}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="large-") as folder:
        for model in models(args):
            classifier = Classifier(model)
            for kind in FORMATS:
                rows.append(
                    {"model": model.name, **compare(classifier, photos, kind, Path(folder))}
                )
    title = f"Photos upscaled to {SIZE[0]} x {SIZE[1]}: shrunk on load against Keras' exact path"
    report(args, "large_images", {title: rows})


if __name__ == "__main__":
    main()
