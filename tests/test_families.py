"""keras.applications families beyond InceptionV3: one per preprocessing mode.

Each family is converted once, from confident synthetic weights (seeded
random weights whose logits are scaled until the top class holds most of
the probability, so that top-1 means something), then served by the
unchanged runtime and compared with Keras fed by Keras' own preprocessing.
InceptionV3 (``tf``) is the session's ``converted`` model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from classifier.assets import EXAMPLE_PHOTOS
from classifier.metadata import ModelMetadata, Preprocessing, metadata_path_for, sha256_of
from classifier.model import Classifier
from classifier.preprocess import preprocess
from tests.support.converter import Converted, convert
from tests.support.photos import CAT_PHOTO, IMAGENET_SAMPLE

# family -> its preprocess_input mode, for the three modes InceptionV3 does not cover.
FAMILIES = {"ResNet50": "caffe", "DenseNet121": "torch", "EfficientNetB0": "none"}
SAMPLE_PHOTOS = 8


@dataclass(frozen=True)
class Family:
    name: str
    model_path: Path
    keras_model: object
    stdout: str


def real_photos() -> list[Path]:
    """The examples, and some ImageNet sample photos where they are present."""
    sample = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[:SAMPLE_PHOTOS]
    return [*EXAMPLE_PHOTOS, *sample]


def keras_inputs(photos: list[Path], mode: str, size: int) -> np.ndarray:
    """Keras' own pipeline: ``load_img`` and the family's ``preprocess_input``."""
    import keras
    from keras.applications.imagenet_utils import preprocess_input

    images = [
        keras.utils.img_to_array(
            keras.utils.load_img(photo, target_size=(size, size), interpolation="bilinear")
        )
        for photo in photos
    ]
    batch = np.stack(images)
    return batch if mode == "none" else preprocess_input(batch, mode=mode)


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Family:
    import keras

    from conversion.synthetic import write_confident_weights

    name = request.param
    folder = tmp_path_factory.mktemp(name)
    weights = folder / f"{name}.weights.h5"
    write_confident_weights(weights, family=name)
    model_path = folder / "model.onnx"
    stdout = convert("--model", name, "--weights", str(weights), "--output", str(model_path))
    keras_model = getattr(keras.applications, name)(weights=str(weights))
    return Family(name, model_path, keras_model, stdout)


def read_metadata(model_path: Path) -> ModelMetadata:
    return ModelMetadata.from_json(metadata_path_for(model_path).read_text())


def test_metadata_records_the_family_and_its_preprocessing(family: Family) -> None:
    metadata = read_metadata(family.model_path)
    assert metadata.name == metadata.architecture == family.name
    assert metadata.preprocessing == Preprocessing.for_mode(FAMILIES[family.name], 224, 224)
    assert metadata.input.shape == [None, 224, 224, 3]
    assert metadata.output.shape == [None, 1000]
    assert metadata.scores == "probabilities"
    assert metadata.labels_file == "imagenet_class_index.json"
    assert metadata.weights["source"] == "file"
    assert metadata.verification["passed"] is True
    assert f"Building {family.name}" in family.stdout
    # Only the family that scales its pixels itself starts with scaling layers.
    found = [layer["type"] for layer in metadata.in_model_preprocessing]
    assert found[:2] == (["Rescaling", "Normalization"] if family.name == "EfficientNetB0" else [])


def test_served_model_answers_as_keras_on_real_photos(family: Family) -> None:
    """The runtime's own preprocessing and ONNX against Keras' pipeline and model."""
    photos = real_photos()
    expected = np.asarray(
        family.keras_model(keras_inputs(photos, FAMILIES[family.name], 224), training=False)
    )
    classifier = Classifier(family.model_path)
    actual = classifier.predict(np.stack([classifier.preprocess(photo) for photo in photos]))
    assert np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(actual - expected).max() <= 1e-3
    assert np.median(expected.max(axis=1)) > 0.5, "the test model is not confident"


def test_inception_v3_answers_as_keras_on_real_photos(converted: Converted) -> None:
    """The ``tf`` mode, on the session's InceptionV3 (random weights)."""
    photos = real_photos()
    expected = np.asarray(converted.keras_model(keras_inputs(photos, "tf", 299), training=False))
    classifier = Classifier(converted.model_path)
    actual = classifier.predict(np.stack([classifier.preprocess(photo) for photo in photos]))
    assert np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(actual - expected).max() <= 1e-3


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_each_mode_matches_keras_preprocess_input(mode: str) -> None:
    spec = Preprocessing.for_mode(mode, 224, 224)
    np.testing.assert_allclose(
        preprocess(CAT_PHOTO, spec), keras_inputs([CAT_PHOTO], mode, 224)[0], rtol=1e-6, atol=1e-5
    )


def test_the_parity_check_catches_the_wrong_preprocessing(family: Family) -> None:
    """Fed InceptionV3's preprocessing instead of its own, the model answers
    differently: the comparison above would fail, so its passing means something."""
    photos = real_photos()
    expected = np.asarray(
        family.keras_model(keras_inputs(photos, FAMILIES[family.name], 224), training=False)
    )
    classifier = Classifier(family.model_path)
    wrong = Preprocessing.for_mode("tf", 224, 224)
    actual = classifier.predict(np.stack([preprocess(photo, wrong) for photo in photos]))
    assert np.abs(actual - expected).max() > 1e-3


@pytest.mark.parametrize("family", ["EfficientNetB0"], indirect=True)
def test_same_weights_give_identical_bytes(family: Family, tmp_path: Path) -> None:
    """tf2onnx names, orders and optimizes some nodes differently from run to run
    (EfficientNet's, MobileNetV3's); the converter makes them stable."""
    weights = family.model_path.parent / f"{family.name}.weights.h5"
    second = tmp_path / "model.onnx"
    convert("--model", family.name, "--weights", str(weights), "--output", str(second))
    assert sha256_of(second) == sha256_of(family.model_path)


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("InceptionV3", "inception_v3"),
        ("ResNet50", "resnet50"),
        ("ResNet50V2", "resnet50v2"),
        ("MobileNetV2", "mobilenet_v2"),
        ("EfficientNetV2B0", "efficientnet_v2b0"),
    ],
)
def test_default_file_names(name: str, stem: str) -> None:
    from conversion.keras_model import file_stem

    assert file_stem(name) == stem
