"""Confident random weights: a stand-in for ImageNet's where they cannot be had.

Seeded random weights give near-uniform probabilities (every class about
0.001), where comparing two models' top classes means nothing. Scaling the
final dense layer sharpens the softmax until the top class takes most of the
probability, as a trained model's does, without changing which class is on
top. The convolutional features stay random, so they carry far less of the
image than trained features do: measurements on this model are a floor for
int8 agreement, not a forecast for ImageNet weights.

On its random features, a few photos are near ties, and rounding decides
them. ``--prototypes DIR`` makes a model that is decided about every photo
of a folder by construction: the dense layer's column for each photo's
class is that photo's own pooled feature, centred and normalised, so any
loss of fidelity (int8, another CPU) shows as lost agreement.

    python -m conversion.synthetic --seed 0 --output /tmp/confident.weights.h5
    python -m conversion.synthetic --model ResNet50 --output /tmp/resnet50.weights.h5
    python -m conversion.synthetic --prototypes ../shared/assets/imagenet-sample \
        --output /tmp/prototypes.weights.h5
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classifier.assets import EXAMPLE_PHOTOS
from classifier.metadata import Preprocessing
from classifier.preprocess import preprocess
from conversion.keras_model import (
    DEFAULT_FAMILY,
    FAMILIES,
    WeightsSource,
    build_model,
    head,
    interface,
    tapped,
)
from conversion.verify import keras_outputs

PROTOTYPE_BATCH = 10


def _median_top_probability(logits: np.ndarray) -> float:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return float(np.median(shifted.max(axis=1) / shifted.sum(axis=1)))


def _scale_to(logits: np.ndarray, confidence: float) -> float:
    """The factor on ``logits`` at which the median top probability is ``confidence``."""
    low, high = 0.0, 1.0
    while _median_top_probability(logits * high) < confidence:
        low, high = high, high * 2.0
    for _ in range(40):  # bisection: the median top probability grows with the scale
        middle = (low + high) / 2
        low, high = (
            (middle, high)
            if _median_top_probability(logits * middle) < confidence
            else (low, middle)
        )
    return high


def write_confident_weights(
    path: Path,
    seed: int = 0,
    photos: Sequence[Path] = EXAMPLE_PHOTOS,
    confidence: float = 0.7,
    family: str = DEFAULT_FAMILY,
) -> float:
    """Write seeded random weights for ``family`` whose top class holds
    ``confidence`` (median over ``photos``) of the probability; return the
    scale of the last layer with weights, the one that makes the logits."""
    model = build_model(WeightsSource("random", seed=seed), family)
    shape = interface(model)
    spec = Preprocessing.for_mode(FAMILIES[family].mode, shape.height, shape.width)
    inputs = np.stack([preprocess(photo, spec) for photo in photos])
    _, logits = keras_outputs(model, inputs)
    scale = 1.0
    while _median_top_probability(logits * scale) < confidence:
        scale *= 2.0
    logits_layer = next(layer for layer in reversed(model.layers) if layer.weights)
    logits_layer.set_weights([weight * scale for weight in logits_layer.get_weights()])
    model.save_weights(path)
    return scale


def labelled_photos(folder: Path) -> dict[Path, int]:
    """The photos of a folder whose ``labels.csv`` gives each one's Keras class index
    (``file,...,keras_index,...``, as in ../shared/assets/imagenet-sample)."""
    with (folder / "labels.csv").open(newline="") as stream:
        return {folder / row["file"]: int(row["keras_index"]) for row in csv.DictReader(stream)}


def write_prototype_weights(
    path: Path,
    photos: dict[Path, int],
    seed: int = 0,
    confidence: float = 0.8,
    family: str = DEFAULT_FAMILY,
) -> float:
    """Write seeded random weights for ``family`` whose dense layer knows ``photos``
    (photo -> class index): class i's column is the centred, normalised pooled
    feature of its photo, scaled until the top class holds ``confidence``
    (median over the photos). Every photo's top class is then its own, by a
    wide margin. Classes without a photo score 0. Returns the scale."""
    model = build_model(WeightsSource("random", seed=seed), family)
    shape = interface(model)
    spec = Preprocessing.for_mode(FAMILIES[family].mode, shape.height, shape.width)
    layer, _ = head(model)
    features_of = tapped(model, [layer])
    paths = list(photos)
    batches = []
    for start in range(0, len(paths), PROTOTYPE_BATCH):
        batch = np.stack([preprocess(photo, spec) for photo in paths[start:][:PROTOTYPE_BATCH]])
        batches.append(np.asarray(features_of(batch, training=False)[1]))
    features = np.concatenate(batches)
    mean = features.mean(axis=0)
    centred = features - mean
    prototypes = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    kernel = np.zeros((features.shape[1], shape.classes), np.float32)
    kernel[:, list(photos.values())] = prototypes.T
    scale = _scale_to(centred @ kernel, confidence)
    kernel *= scale
    layer.set_weights([kernel, (-mean @ kernel).astype(np.float32)])
    model.save_weights(path)
    return scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a .weights.h5 file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    parser.add_argument(
        "--prototypes",
        type=Path,
        metavar="DIR",
        help="a folder of photos with a labels.csv (file, keras_index): the dense layer "
        "is made of their features, so the model is decided about each of them",
    )
    args = parser.parse_args()
    if args.prototypes:
        photos = labelled_photos(args.prototypes)
        scale = write_prototype_weights(args.output, photos, args.seed, family=args.model)
    else:
        scale = write_confident_weights(args.output, args.seed, family=args.model)
    print(f"Wrote {args.output} ({args.model}, logits scaled by {scale:g})")


if __name__ == "__main__":
    main()
