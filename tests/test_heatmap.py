"""Class activation maps: equal to Keras' own, where they point, and on every surface.

Keras' map is computed here from Keras alone: the model cut at its global
average pooling layer gives the last feature map, times the dense kernel's
column for a class (Zhou et al., CVPR 2016). One family per preprocessing
mode that has such a head (``tf``, ``caffe``, ``torch``), built small with
random weights and converted as a user's ``.keras`` model (the converter's
head detection is the same for both), plus InceptionV3 (the session's model)
and a user's Sequential model with a logits head.
"""

from __future__ import annotations

import base64
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from classifier.heatmap import NoHeatmapError, normalise
from classifier.metadata import ModelMetadata, metadata_path_for, sha256_of
from classifier.model import Classifier
from tests.support.converter import Converted, convert
from tests.support.harness import classify
from tests.support.models import LABELS, SIZE, ColoursModel, colour_photo
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO

RTOL = 1e-4
PHOTOS = [CAT_PHOTO, COFFEE_PHOTO]
# keras.applications family -> (its preprocess_input mode, a small input size it allows)
SMALL_FAMILIES = {
    "MobileNetV2": ("tf", 96),
    "ResNet50": ("caffe", 64),
    "DenseNet121": ("torch", 64),
}


@dataclass(frozen=True)
class Model:
    """A converted model and the Keras model it came from."""

    model_path: Path
    keras_model: object


def convert_keras_file(keras_file: Path, labels: Path, mode: str, *extra: str) -> Path:
    output = keras_file.parent / "models" / f"{keras_file.stem}.onnx"
    convert(
        "--model", str(keras_file), "--labels", str(labels), "--preprocessing", mode,
        "--output", str(output), *extra,
    )  # fmt: skip
    return output


@pytest.fixture(scope="module", params=list(SMALL_FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    import keras

    from classifier.assets import LABELS as IMAGENET_LABELS

    name = request.param
    mode, size = SMALL_FAMILIES[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    keras_file = tmp_path_factory.mktemp(name) / f"{name.lower()}.keras"
    model.save(keras_file)
    return Model(convert_keras_file(keras_file, IMAGENET_LABELS, mode), model)


@pytest.fixture(scope="module")
def user_model(colours_model: ColoursModel) -> Model:
    """The user's little Sequential CNN of ``test_user_model``: trained, logits, any size."""
    import keras

    return Model(colours_model.model_path, keras.saving.load_model(colours_model.keras_file))


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier whose head is Flatten and Dense: no class activation maps."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(features))
    folder = tmp_path_factory.mktemp("flat")
    keras_file = folder / "flat.keras"
    keras.Model(inputs, outputs, name="flat").save(keras_file)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return convert_keras_file(keras_file, labels, "tf")


def keras_class_maps(model: object, inputs: np.ndarray) -> np.ndarray:
    """Keras' raw class activation maps ``(n, h, w, classes)``, from Keras alone.

    A Sequential model's layers are called in turn; a functional model is cut
    at its pooling layer's input.
    """
    import keras

    pooling = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)
    )
    dense = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense))
    if isinstance(model, keras.Sequential):
        features = inputs
        for layer in model.layers[: model.layers.index(pooling)]:
            features = layer(features, training=False)
    else:
        features = keras.Model(model.inputs[0], pooling.input)(inputs, training=False)
    return np.asarray(features) @ np.asarray(dense.kernel)


def min_max(class_map: np.ndarray) -> np.ndarray:
    return (class_map - class_map.min()) / (class_map.max() - class_map.min())


def all_class_maps(classifier: Classifier, features: np.ndarray) -> np.ndarray:
    """Every class's raw map ``(n, h, w, classes)`` from the runtime's feature maps and
    the class weights file the converter wrote beside the model."""
    weights = np.load(classifier.model_path.parent / classifier.metadata.heatmap.class_weights)
    return features @ weights.T


def assert_maps_equal_keras(model_path: Path, keras_model: object) -> None:
    """Raw maps within RTOL of Keras' largest; each top-5 map, 0..1, within RTOL of Keras'."""
    classifier = Classifier(model_path)
    inputs = np.stack([classifier.preprocess(photo) for photo in PHOTOS])
    expected = keras_class_maps(keras_model, inputs)
    raw = all_class_maps(classifier, classifier.predict_explained(inputs)[1])
    assert raw.shape == expected.shape
    assert np.abs(raw - expected).max() <= RTOL * np.abs(expected).max()
    for photo, expected_maps in zip(PHOTOS, expected, strict=True):
        predictions = classifier.classify(photo, k=5, explain=True)
        for prediction in predictions:
            assert prediction.heatmap.shape == expected_maps.shape[:2]
            assert prediction.heatmap.dtype == np.float32
            keras_map = min_max(expected_maps[..., prediction.index])
            assert np.abs(prediction.heatmap - keras_map).max() <= RTOL


# --- the maps equal Keras' ------------------------------------------------------------


def test_inception_v3_maps_equal_keras(converted: Converted) -> None:
    assert_maps_equal_keras(converted.model_path, converted.keras_model)


def test_family_maps_equal_keras(family: Model) -> None:
    assert_maps_equal_keras(family.model_path, family.keras_model)


def test_user_logits_model_maps_equal_keras(user_model: Model) -> None:
    assert_maps_equal_keras(user_model.model_path, user_model.keras_model)


def test_the_map_comparison_catches_another_class(converted: Converted) -> None:
    """The parity above fails for the map of a neighbouring class: it can fail."""
    classifier = Classifier(converted.model_path)
    inputs = classifier.preprocess(CAT_PHOTO)[None]
    expected = keras_class_maps(converted.keras_model, inputs)[0]
    top = classifier.classify(CAT_PHOTO, k=1, explain=True)[0]
    wrong = min_max(expected[..., (top.index + 1) % expected.shape[-1]])
    assert np.abs(top.heatmap - wrong).max() > 10 * RTOL


def test_maps_average_to_the_logits(converted: Converted) -> None:
    """Each raw map's mean plus the dense bias is that class's logit: the maps are the
    head's own arithmetic (random weights have no bias: the converter records none)."""
    classifier = Classifier(converted.model_path)
    inputs = classifier.preprocess(CAT_PHOTO)[None]
    probabilities, features = classifier.predict_explained(inputs)
    logits = all_class_maps(classifier, features).mean(axis=(1, 2))
    assert classifier.metadata.heatmap.bias is None
    np.testing.assert_allclose(
        probabilities, np.exp(logits) / np.exp(logits).sum(), rtol=1e-4, atol=1e-9
    )


# --- the metadata ------------------------------------------------------------------


def test_metadata_describes_the_heatmap(converted: Converted) -> None:
    import onnx

    metadata = ModelMetadata.from_json(metadata_path_for(converted.model_path).read_text())
    heatmap = metadata.heatmap
    assert heatmap.feature_map.name == "feature_map"
    assert heatmap.feature_map.shape == [None, 8, 8, 2048]
    assert heatmap.verification["passed"] is True
    assert (
        heatmap.verification["max_abs_class_map_diff"]
        <= 1e-3 * heatmap.verification["max_abs_class_map"]
    )
    graph = onnx.load(converted.model_path).graph
    assert [output.name for output in graph.output] == ["probabilities", "feature_map"]
    kernel = np.asarray(converted.keras_model.layers[-1].kernel)
    initializer = next(i for i in graph.initializer if i.name == heatmap.kernel)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(initializer), kernel)
    weights = converted.model_path.parent / heatmap.class_weights
    assert weights.name == "inception_v3.class_weights.npy"
    assert sha256_of(weights) == heatmap.class_weights_sha256
    np.testing.assert_array_equal(np.load(weights), kernel.T)
    assert "heatmap PASSED" in converted.stdout


def test_user_model_records_its_bias(user_model: Model) -> None:
    import onnx

    heatmap = Classifier(user_model.model_path).metadata.heatmap
    assert heatmap.feature_map.shape == [None, SIZE - 2, SIZE - 2, 8]
    bias = next(
        i for i in onnx.load(user_model.model_path).graph.initializer if i.name == heatmap.bias
    )
    dense = user_model.keras_model.layers[-1]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(bias), np.asarray(dense.bias))


def test_a_model_without_the_head_says_no_heatmap(flat_model: Path) -> None:
    metadata = ModelMetadata.from_json(metadata_path_for(flat_model).read_text())
    assert metadata.heatmap is None
    assert '"heatmap": null' in metadata_path_for(flat_model).read_text()
    assert not list(flat_model.parent.glob("*.npy"))
    classifier = Classifier(flat_model)
    assert not classifier.explains
    with pytest.raises(NoHeatmapError, match="no heatmap"):
        classifier.classify(CAT_PHOTO, explain=True)
    assert classifier.classify(CAT_PHOTO, k=3)[0].heatmap is None


# --- where the maps point ------------------------------------------------------------


def quadrant_ratio(classifier: Classifier, photo: Image.Image, label: str) -> float:
    """The photo pasted into the top-left quadrant of a grey canvas: ``label``'s map
    over that quadrant, over its mean over the rest."""
    width, height = photo.size
    canvas = Image.new("RGB", (2 * width, 2 * height), (128, 128, 128))
    canvas.paste(photo, (0, 0))
    predictions = classifier.classify(canvas, k=len(classifier.labels), explain=True)
    class_map = next(p.heatmap for p in predictions if p.label == label)
    rows, columns = class_map.shape
    quadrant = np.zeros(class_map.shape, bool)
    quadrant[: rows // 2, : columns // 2] = True
    return float(class_map[quadrant].mean() / class_map[~quadrant].mean())


def test_a_trained_model_looks_where_its_class_is(user_model: Model) -> None:
    """The colours model learnt red, green and blue: a red photo in one quadrant
    lights that quadrant up in the "red apple" map."""
    classifier = Classifier(user_model.model_path)
    red = colour_photo(0, np.random.default_rng(3))
    assert classifier.classify(red, k=1)[0].label == LABELS[0]
    ratio = quadrant_ratio(classifier, red, LABELS[0])
    print(f"trained colours model: red quadrant / rest = {ratio:.2f}")
    assert ratio > 2.0


def test_inception_v3_map_is_higher_over_the_photo(converted: Converted) -> None:
    """Random (or synthetic confident: the scale drops out of a 0..1 map) weights:
    the cat's class map over the cat's quadrant of a grey canvas."""
    classifier = Classifier(converted.model_path)
    cat = Image.open(CAT_PHOTO).convert("RGB")
    label = classifier.classify(cat, k=1)[0].label
    ratio = quadrant_ratio(classifier, cat, label)
    print(f"random InceptionV3: {label!r} map, cat quadrant / rest = {ratio:.2f}")
    assert ratio > 1.0


# --- the overlay ---------------------------------------------------------------------


def test_overlay_is_the_upright_photo_with_heat_where_the_map_is_hot(
    converted: Converted, tmp_path: Path
) -> None:
    """A photo stored on its side with EXIF orientation 6 is overlaid upright, at its
    own size; a map hot on the left reddens the left half only."""
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.open(CAT_PHOTO).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
        sideways, exif=exif, quality=95
    )
    classifier = Classifier(converted.model_path)
    decoded = classifier.classify_photo(sideways).photo
    photo = classifier.overlay(decoded, np.zeros((8, 8), np.float32))
    cat = Image.open(CAT_PHOTO)
    assert photo.size == cat.size
    left = np.zeros((8, 8), np.float32)
    left[:, :2] = 1.0
    heated = np.asarray(classifier.overlay(decoded, left), np.float32)
    bare = np.asarray(photo, np.float32)
    redder = heated[..., 0] - heated[..., 2] - (bare[..., 0] - bare[..., 2])
    width = cat.size[0]
    assert redder[:, : width // 8].mean() > 25  # jet's 1 is dark red, at 60% opacity
    assert np.abs(heated[:, width // 2 :] - bare[:, width // 2 :]).max() <= 1


def test_normalise_spans_zero_to_one_and_flat_maps_are_zero() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3) * 3 - 4
    assert normalise(values).min() == 0.0
    assert normalise(values).max() == 1.0
    assert not normalise(np.full((8, 8), 5.0, np.float32)).any()


# --- int8 ------------------------------------------------------------------------------


def test_int8_model_keeps_its_heatmap(colours_model: ColoursModel, tmp_path: Path) -> None:
    """Quantized with the converter, the model still gives float32 maps, near float32's."""
    import onnx

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    rng = np.random.default_rng(5)
    for index in range(12):
        colour_photo(index % 3, rng).save(calibration / f"{index:02}.png")
    # In a folder of its own: the session's model stays as the other tests expect it.
    folder = tmp_path / "user"
    shutil.copytree(colours_model.model_path.parent.parent, folder)
    float_model = convert_keras_file(
        folder / "colours.keras", folder / "labels.txt", "tf", "--quantize", "int8",
        "--calibration", str(calibration), "--emulated-photos", "1",
    )  # fmt: skip
    int8 = Classifier(float_model.with_suffix(".int8.onnx"))
    assert int8.metadata.heatmap == Classifier(float_model).metadata.heatmap
    initializers = {i.name for i in onnx.load(int8.model_path).graph.initializer}
    assert {int8.metadata.heatmap.kernel, int8.metadata.heatmap.bias} <= initializers
    float32 = Classifier(float_model)
    for photo in sorted(calibration.iterdir())[1::2]:
        expected = float32.classify(photo, k=1, explain=True)[0]
        actual = int8.classify(photo, k=1, explain=True)[0]
        assert actual.index == expected.index
        assert actual.heatmap.dtype == np.float32
        assert np.abs(actual.heatmap - expected.heatmap).max() < 0.1


# --- REST and page ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(app_url: str) -> httpx.Client:
    with httpx.Client(base_url=app_url, timeout=120) as client:
        yield client


def test_rest_explain_returns_maps_and_the_top_overlay(
    http: httpx.Client, model_path: Path
) -> None:
    response = classify(http, CAT_PHOTO, explain="true", k=3)
    assert response.status_code == 200
    body = response.json()
    expected = Classifier(model_path).classify(CAT_PHOTO, k=3, explain=True)
    for answered, prediction in zip(body["predictions"], expected, strict=True):
        assert answered["index"] == prediction.index
        assert np.asarray(answered["heatmap"]).shape == (8, 8)
        np.testing.assert_allclose(answered["heatmap"], prediction.heatmap, atol=1e-6)
    prefix = "data:image/jpeg;base64,"
    assert body["overlay"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"].removeprefix(prefix))))
    assert overlay.format == "JPEG"
    assert overlay.size == Image.open(CAT_PHOTO).size


def test_rest_without_explain_is_unchanged(http: httpx.Client) -> None:
    body = classify(http, CAT_PHOTO).json()
    assert set(body) == {"predictions", "model"}
    assert all(set(p) == {"label", "index", "probability"} for p in body["predictions"])


def test_rest_explain_on_a_model_without_heatmap_is_a_422(flat_model: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api import build_api

    with TestClient(build_api(Classifier(flat_model))) as client:
        response = classify(client, CAT_PHOTO, explain="true")
        plain = classify(client, CAT_PHOTO)
    assert response.status_code == 422
    assert response.json()["error"].startswith("explain: ")
    assert "no heatmap" in response.json()["error"]
    assert plain.status_code == 200


def test_page_shows_no_heatmap_for_a_model_without_one(flat_model: Path, model_path: Path) -> None:
    from service.page import build_demo

    def elements(path: Path) -> set[str]:
        config = build_demo(Classifier(path), []).get_config_file()
        return {c["props"].get("elem_id") for c in config["components"]} - {None}

    assert "heatmap" not in elements(flat_model)
    assert {"heatmap", "heatmap-class", "heatmap-on"} <= elements(model_path)


def test_a_missing_class_weights_file_is_a_clear_error(user_model: Model, tmp_path: Path) -> None:
    from classifier.model import ModelError

    for path in user_model.model_path.parent.iterdir():
        if path.suffix != ".npy":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match=r"Class weights file .* is missing"):
        Classifier(tmp_path / user_model.model_path.name)
