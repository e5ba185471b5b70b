"""Confident random weights: a stand-in for ImageNet's where they cannot be had.

Seeded random weights give near-uniform probabilities (every class about
0.001), where comparing two models' top classes means nothing. Scaling the
final dense layer sharpens the softmax until the top class takes most of the
probability, as a trained model's does, without changing which class is on
top. The convolutional features stay random, so they carry far less of the
image than trained features do: measurements on this model are a floor for
int8 agreement, not a forecast for ImageNet weights.

    python -m conversion.synthetic --seed 0 --output /tmp/confident.weights.h5
    python -m conversion.synthetic --model ResNet50 --output /tmp/resnet50.weights.h5
"""

from __future__ import annotations

import argparse
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
    interface,
)
from conversion.verify import keras_outputs


def _median_top_probability(logits: np.ndarray) -> float:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return float(np.median(shifted.max(axis=1) / shifted.sum(axis=1)))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a .weights.h5 file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    args = parser.parse_args()
    scale = write_confident_weights(args.output, args.seed, family=args.model)
    print(f"Wrote {args.output} ({args.model}, logits scaled by {scale:g})")


if __name__ == "__main__":
    main()
