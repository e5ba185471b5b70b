"""Latency in process: our Python API against Keras on the same weights, and the floor.

Both run in this one process, taking turns (A B C A B C ...) after warm-up,
so a shared machine's drift falls on all of them alike. Keras is timed two
ways: ``model.predict`` (what the original Keras app called) and a compiled
``tf.function`` (Keras at its fastest). The floor is InceptionV3's 5.71 G
multiply-adds at this machine's float32 matmul rate, measured here too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CAT_PHOTO,
    SAMPLE_PHOTOS,
    interleaved,
    keras_weights,
    milliseconds,
    models,
    options,
    report,
)
from PIL import Image

MULTIPLY_ADDS = 5.71e9
"""InceptionV3's multiply-adds for one 299 x 299 image."""
TYPICAL_SIZE = (500, 375)
LARGE_SIZE = (6000, 4000)
BATCH = 8
TOP_K = 5


def matmul_flops(n: int = 4096, repeats: int = 3) -> float:
    """This machine's float32 matmul rate (numpy ``@``, all cores): the best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool and page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def photos(folder: Path) -> dict[str, Path]:
    """A typical 500x375 JPEG (a real ImageNet photo where present) and a 6000x4000 one.

    The large one is the typical photo upscaled, as a phone camera's photo
    would arrive, so Pillow's JPEG draft mode has something to skip.
    """
    typical = next(
        (
            path
            for path in sorted(SAMPLE_PHOTOS.glob("*.JPEG"))
            if Image.open(path).size == TYPICAL_SIZE
        ),
        None,
    )
    if typical is None:
        typical = folder / "typical.jpg"
        with Image.open(CAT_PHOTO) as cat:
            cat.convert("RGB").resize(TYPICAL_SIZE, Image.Resampling.BICUBIC).save(
                typical, quality=90
            )
    large = folder / "large.jpg"
    with Image.open(typical) as image:
        image.convert("RGB").resize(LARGE_SIZE, Image.Resampling.BICUBIC).save(large, quality=90)
    return {"500x375": typical, "6000x4000": large}


def keras_model(model: Path, cache: dict[Any, Any]) -> Any:
    """Keras' InceptionV3 on the weights ``model`` was converted from (built once per weights)."""
    from conversion.keras_model import build_model

    weights = keras_weights(model)
    if weights not in cache:
        cache[weights] = build_model(weights)
    return cache[weights]


def keras_runners(model: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``model.predict`` and a compiled ``tf.function`` over a fixed input signature."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, 299, 299, 3], tf.float32)]
    compiled = tf.function(
        lambda batch: model(batch, training=False), input_signature=signature, jit_compile=False
    )
    return {
        "predict": lambda batch: model.predict(batch, verbose=0),
        "tf.function": lambda batch: compiled(tf.constant(batch)).numpy(),
    }


def keras_path(run: Callable[[np.ndarray], np.ndarray], photo: Path) -> Callable[[], list[int]]:
    """The original app's whole path: ``load_img``, ``preprocess_input``, run, top 5."""
    import keras

    def keras_classify() -> list[int]:
        image = keras.utils.load_img(photo, target_size=(299, 299), interpolation="bilinear")
        batch = keras.applications.inception_v3.preprocess_input(
            keras.utils.img_to_array(image)[np.newaxis]
        )
        return list(np.argsort(run(batch)[0])[::-1][:TOP_K])

    return keras_classify


def compare_with_keras(
    name: str, classifier: Any, keras: Any, photo: Path, repeats: int
) -> list[dict[str, Any]]:
    """Ours against both Keras runs: one image, a batch of 8, and the whole path."""
    runners = keras_runners(keras)
    single = classifier.preprocess(photo)[np.newaxis]
    batch = np.repeat(single, BATCH, axis=0)
    cases: dict[str, dict[str, Callable[[], object]]] = {
        "inference, 1 image": {
            "ours": lambda: classifier.predict(single),
            **{key: (lambda run=run: run(single)) for key, run in runners.items()},
        },
        f"inference, batch of {BATCH}": {
            "ours": lambda: classifier.predict(batch),
            **{key: (lambda run=run: run(batch)) for key, run in runners.items()},
        },
        "whole path, 500x375 JPEG": {
            "ours": lambda: classifier.classify(photo, TOP_K),
            **{key: keras_path(run, photo) for key, run in runners.items()},
        },
    }
    rows = []
    for case, calls in cases.items():
        times = {key: milliseconds(values) for key, values in interleaved(calls, repeats).items()}
        ours = times["ours"]["median_ms"]
        row: dict[str, Any] = {"model": name, "case": case}
        for key, figures in times.items():
            row[f"{key}_ms"] = figures["median_ms"]
            row[f"{key}_p95_ms"] = figures["p95_ms"]
        row["ours/predict"] = ours / times["predict"]["median_ms"]
        row["ours/tf.function"] = ours / times["tf.function"]["median_ms"]
        rows.append(row)
    return rows


def classify_with_draft(classifier: Any, photo: Path, draft: bool) -> list[Any]:
    """``Classifier.classify`` with JPEG draft mode chosen: decode, preprocess, run, rank."""
    from classifier.preprocess import preprocess

    spec = classifier.metadata.preprocessing
    batch = preprocess(photo, spec, classifier.max_pixels, draft)[np.newaxis]
    return classifier.top_k(classifier.predict(batch)[0], TOP_K)


def photo_path(
    name: str, classifier: Any, photo: Path, label: str, repeats: int
) -> list[dict[str, Any]]:
    """One photo's whole path beside inference alone, and preprocessing's share of it.

    Both with Pillow's JPEG draft mode (the default) and without, so the
    lever's effect shows.
    """
    from classifier.preprocess import preprocess

    spec, limit = classifier.metadata.preprocessing, classifier.max_pixels
    single = classifier.preprocess(photo)[np.newaxis]
    calls: dict[str, Callable[[], object]] = {"inference": partial(classifier.predict, single)}
    for draft in (True, False):
        calls[f"preprocess {draft}"] = partial(preprocess, photo, spec, limit, draft)
        calls[f"whole {draft}"] = partial(classify_with_draft, classifier, photo, draft)
    medians = {
        key: statistics.median(values) * 1e3 for key, values in interleaved(calls, repeats).items()
    }
    return [
        {
            "model": name,
            "photo": label,
            "draft": "on (default)" if draft else "off",
            "preprocess_ms": medians[f"preprocess {draft}"],
            "inference_ms": medians["inference"],
            "whole_path_ms": medians[f"whole {draft}"],
            "preprocess_share_%": 100 * medians[f"preprocess {draft}"] / medians[f"whole {draft}"],
        }
        for draft in (True, False)
    ]


def main() -> None:
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=20, help="timed runs of each call")
    args = arguments.parse_args()
    paths = models(args)

    from classifier.model import Classifier

    flops_before = matmul_flops()
    comparison: list[dict[str, Any]] = []
    whole_path: list[dict[str, Any]] = []
    keras_cache: dict[Any, Any] = {}
    with tempfile.TemporaryDirectory(prefix="latency-") as folder:
        samples = photos(Path(folder))
        for path in paths:
            name = path.name
            classifier = Classifier(path)
            keras = keras_model(path, keras_cache)
            comparison += compare_with_keras(
                name, classifier, keras, samples["500x375"], args.repeats
            )
            for label, photo in samples.items():
                whole_path += photo_path(name, classifier, photo, label, args.repeats)
    flops = max(flops_before, matmul_flops())
    report(args, "latency", tables(args, comparison, whole_path, flops))


def tables(
    args: argparse.Namespace, comparison: list[dict], whole_path: list[dict], flops: float
) -> dict[str, list[dict[str, Any]]]:
    """The comparison with Keras, the floor, and the whole path, as printed tables."""
    floor_ms = 2 * MULTIPLY_ADDS / flops * 1e3
    floor = [
        {
            "model": row["model"],
            "case": row["case"],
            "matmul_GFLOP/s": flops / 1e9,
            "floor_ms_per_image": floor_ms,
            "ours_ms_per_image": row["ours_ms"] / images,
            "x_floor": row["ours_ms"] / images / floor_ms,
        }
        for row in comparison
        for images in [BATCH if "batch" in row["case"] else 1]
        if row["case"].startswith("inference")
    ]
    return {
        f"Ours against Keras, same weights ({args.repeats} interleaved runs each)": comparison,
        "Inference against the float32 floor (2 x 5.71 G multiply-adds / numpy matmul rate)": floor,
        "One photo, decode + preprocess + inference (medians, ms)": whole_path,
    }


if __name__ == "__main__":
    main()
