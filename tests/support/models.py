"""The small models the suite trains or writes, each built once per session by ``conftest``.

- the colours CNN: a user's Sequential model with a logits head that takes any
  image size, trained briefly to tell red, green and blue apart;
- the prototype InceptionV3: decided about every shared photo by
  construction (``conversion.synthetic.write_prototype_weights``), so any
  loss of fidelity in int8 shows as lost agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.metadata import Preprocessing
from classifier.preprocess import preprocess
from tests.support.converter import convert, linked
from tests.support.photos import IMAGENET_SAMPLE

LABELS = ["red apple", "green leaf", "blue sky"]
SIZE = 32
"""The colours CNN's input size as converted (the Keras model takes any size)."""


def colour_photo(label: int, rng: np.random.Generator) -> Image.Image:
    """A noisy image whose channel ``label`` (R, G or B) is the brightest."""
    pixels = rng.integers(0, 120, (SIZE, SIZE, 3))
    pixels[..., label] += 120
    return Image.fromarray(pixels.astype(np.uint8))


def train(path: Path) -> None:
    """A CNN that takes any image size and outputs logits, fitted briefly."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 3
    spec = Preprocessing.for_mode("tf", SIZE, SIZE)
    images = np.stack([preprocess(colour_photo(label, rng), spec) for label in labels])
    model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS)),
        ],
        name="colours_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images, labels, epochs=30, verbose=0)
    model.save(path)


@dataclass(frozen=True)
class ColoursModel:
    """The colours CNN as a user has it (``.keras`` file, labels) and as converted."""

    keras_file: Path
    labels: Path
    model_path: Path
    stdout: str


def build_colours_model(folder: Path) -> ColoursModel:
    """Train, save and convert the colours CNN (``tf`` scaling, 32 x 32) in ``folder``."""
    keras_file = folder / "colours.keras"
    train(keras_file)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    model_path = folder / "models" / "colours.onnx"
    stdout = convert(
        "--model", str(keras_file), "--labels", str(labels), "--output", str(model_path),
        "--preprocessing", "tf", "--input-size", str(SIZE),
    )  # fmt: skip
    return ColoursModel(keras_file, labels, model_path, stdout)


EMULATED_PHOTOS = 12
"""Held-out photos the prototype's int8 gate also runs as a Haswell and a Neoverse N1
(~13 s each, emulated): a few are enough to catch saturation, which moves every photo's
probabilities (by up to 1.0 on Haswell); all 50 took nine minutes of the suite."""


@dataclass(frozen=True)
class Prototype:
    """The prototype InceptionV3, float32 and int8, and the photos each step used."""

    float_model: Path
    int8_model: Path
    calibration: list[Path]
    verification: list[Path]
    stdout: str
    """The quantization's output."""


def build_prototype(folder: Path, photos: list[Path]) -> Prototype:
    """Convert, calibrate on half the photos and gate on the other half, some emulated too."""
    from conversion.synthetic import labelled_photos, write_prototype_weights

    weights = folder / "prototypes.weights.h5"
    write_prototype_weights(weights, labelled_photos(IMAGENET_SAMPLE))
    float_model = folder / "inception_v3.onnx"
    convert("--weights", str(weights), "--output", str(float_model))
    calibration, verification = photos[0::2], photos[1::2]
    stdout = convert(
        "--output", str(float_model), "--quantize", "int8",
        "--calibration", str(linked(folder / "calibration", calibration)),
        "--verification", str(linked(folder / "verification", verification)),
        "--emulated-photos", str(EMULATED_PHOTOS),
    )  # fmt: skip
    return Prototype(
        float_model, folder / "inception_v3.int8.onnx", calibration, verification, stdout
    )
