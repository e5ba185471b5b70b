"""A user's own trained classifier: from a .keras file to its page, and clear refusals.

The test trains a small CNN on a few images of three named classes, saves it
as a ``.keras`` file, converts it with its labels and serves it as Heroku
does; the page must answer with the model's own labels, as Keras does. The
ways users write classifiers (Sequential with or without ``keras.Input``,
transfer learning on a frozen base, in-model ``Rescaling`` or
``Normalization``) each convert and answer as Keras does on real photos.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from classifier.assets import EXAMPLE_PHOTOS, ROOT
from classifier.metadata import ModelMetadata, Preprocessing, metadata_path_for
from classifier.model import Classifier, softmax
from classifier.preprocess import preprocess
from conversion.emulation import qemu_available
from tests.support.converter import ConverterRun, convert, run_converter
from tests.support.models import LABELS, SIZE, ColoursModel, colour_photo
from tests.support.photos import CAT_PHOTO, IMAGENET_SAMPLE


def convert_file(keras_file: Path, labels: Path, output: Path, *extra: str) -> ConverterRun:
    """The converter on a user's model file: the three paths each call here names."""
    return run_converter(
        "--model", str(keras_file), "--labels", str(labels), "--output", str(output), *extra
    )


def keras_top_label(keras_file: Path, photo: Path) -> str:
    import keras

    model = keras.saving.load_model(keras_file)
    spec = Preprocessing.for_mode("tf", SIZE, SIZE)
    logits = np.asarray(model(preprocess(photo, spec)[None], training=False))[0]
    return LABELS[int(logits.argmax())]


def test_metadata_describes_the_user_model(colours_model: ColoursModel) -> None:
    metadata = ModelMetadata.from_json(metadata_path_for(colours_model.model_path).read_text())
    assert metadata.name == "colours"
    assert metadata.architecture == "colours_cnn"
    assert metadata.scores == "logits"
    assert metadata.output.name == "logits"
    assert metadata.output.shape == [None, 3]
    assert metadata.input.shape == [None, SIZE, SIZE, 3]
    assert metadata.preprocessing == Preprocessing.for_mode("tf", SIZE, SIZE)
    assert metadata.weights["file"] == "colours.keras"
    assert metadata.verification["passed"] is True
    assert metadata.labels_file == "colours.labels.txt"
    shipped = colours_model.model_path.parent / metadata.labels_file
    assert shipped.read_text().split("\n")[:3] == LABELS


def test_runtime_turns_the_logits_into_probabilities(colours_model: ColoursModel) -> None:
    top = Classifier(colours_model.model_path).classify(CAT_PHOTO, k=5)
    assert sorted(prediction.label for prediction in top) == sorted(LABELS)
    assert all(0.0 < prediction.probability < 1.0 for prediction in top)
    assert sum(prediction.probability for prediction in top) == pytest.approx(1.0, abs=1e-5)


def test_served_over_http_with_its_own_labels_and_title(
    colours_model: ColoursModel, tmp_path: Path
) -> None:
    import httpx

    from tests.support.harness import serving

    rng = np.random.default_rng(1)
    photos = []
    for label in range(len(LABELS)):
        photo = tmp_path / f"photo{label}.png"
        colour_photo(label, rng).save(photo)
        photos.append(photo)
    with serving(colours_model.model_path, tmp_path / "app.log") as instance:
        url = instance.url
        client = Client(url, verbose=False)
        answers = [
            client.predict(handle_file(str(photo)), api_name="/predict")["label"]
            for photo in photos
        ]
        rest = [
            httpx.post(
                f"{url}classify", files={"file": photo.read_bytes()}, params={"k": 1}
            ).json()["predictions"][0]["label"]
            for photo in photos
        ]
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read().decode()
    assert answers == [keras_top_label(colours_model.keras_file, photo) for photo in photos]
    assert rest == answers
    assert answers == LABELS, "the little model did not learn its colours"
    assert "colours image classifier" in page


# --- models and labels the runtime cannot serve -----------------------------------


def save(model: object, path: Path) -> Path:
    model.save(path)
    return path


def assert_refused(code: int, expected: int, capsys: pytest.CaptureFixture, *phrases: str) -> None:
    err = capsys.readouterr().err
    assert code == expected, err
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    for phrase in phrases:
        assert phrase in err


def test_labels_of_the_wrong_length_are_refused(
    colours_model: ColoursModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("red apple\ngreen leaf\n")
    code, _ = convert_file(
        colours_model.keras_file,
        labels,
        tmp_path / "t.onnx",
        "--preprocessing",
        "tf",
        "--input-size",
        str(SIZE),
    )
    assert_refused(code, 8, capsys, "has 2 labels, but the model has 3 classes")
    assert not (tmp_path / "t.onnx").exists()


def test_a_model_of_any_size_needs_an_input_size(
    colours_model: ColoursModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    code, _ = convert_file(
        colours_model.keras_file, labels, tmp_path / "t.onnx", "--preprocessing", "tf"
    )
    assert_refused(code, 7, capsys, "--input-size")


def test_a_model_that_does_not_scale_needs_its_preprocessing_named(
    colours_model: ColoursModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    code, _ = convert_file(
        colours_model.keras_file, labels, tmp_path / "t.onnx", "--input-size", "32"
    )
    assert_refused(code, 2, capsys, "no Rescaling or Normalization", "--preprocessing")
    assert not (tmp_path / "t.onnx").exists()


def test_name_sets_the_name_the_page_shows(colours_model: ColoursModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    output = tmp_path / "colours.onnx"
    code, stdout = convert_file(
        colours_model.keras_file,
        labels,
        output,
        *("--preprocessing", "tf", "--input-size", str(SIZE), "--name", "Colour guesser"),
    )
    assert code == 0, stdout
    assert ModelMetadata.from_json(metadata_path_for(output).read_text()).name == "Colour guesser"


def test_weights_are_refused_for_a_keras_file(colours_model: ColoursModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    with pytest.raises(SystemExit) as exit_info:
        convert_file(colours_model.keras_file, labels, tmp_path / "t.onnx", "--weights", "random")
    assert exit_info.value.code == 2


def test_int8_quantization_keeps_the_model_s_name_labels_and_answers(
    colours_model: ColoursModel, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(12):
        colour_photo(index % 3, rng).save(photos / f"{index:02}.png")
    float_model = tmp_path / "colours.onnx"
    for path in colours_model.model_path.parent.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    code, stdout = convert_file(
        colours_model.keras_file,
        labels,
        float_model,
        *("--preprocessing", "tf", "--quantize", "int8", "--calibration", str(photos)),
    )
    assert code == 0, stdout
    int8_model = tmp_path / "colours.int8.onnx"
    metadata = ModelMetadata.from_json(metadata_path_for(int8_model).read_text())
    assert (metadata.precision, metadata.name, metadata.scores) == ("int8", "colours", "logits")
    assert metadata.verification["top1_agreement"] >= 0.99
    # Compared as the probabilities the app serves, over the model's 3 classes.
    assert 0.0 <= metadata.verification["max_abs_probability_diff"] <= 1.0
    assert metadata.verification["top5_overlap"] == 1.0
    checked_on = [cpu["measured_on"] for cpu in metadata.verification["cpus"]]
    assert ("qemu-x86_64 -cpu Haswell" in checked_on) == qemu_available()
    assert all(cpu["passed"] for cpu in metadata.verification["cpus"])
    int8, float32 = Classifier(int8_model), Classifier(float_model)
    for photo in sorted(photos.iterdir())[1::2]:
        assert int8.classify(photo, k=1)[0].label == float32.classify(photo, k=1)[0].label


# --- the ways users write classifiers: each converts and answers as Keras --------

PARITY_SIZE = 48
SAMPLE_PHOTOS = 8


def colour_images(size: int, count: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Raw 0..255 training images of the three colours, and their labels."""
    rng = np.random.default_rng(0)
    labels = np.arange(count) % 3
    images = [np.asarray(colour_photo(label, rng).resize((size, size))) for label in labels]
    return np.stack(images).astype(np.float32), labels


def frozen_base() -> object:
    """A small functional feature extractor, frozen, as a transfer-learning base."""
    import keras

    inputs = keras.Input((PARITY_SIZE, PARITY_SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    base = keras.Model(inputs, x, name="base")
    base.trainable = False
    return base


def cnn_layers() -> list[object]:
    import keras

    return [
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ]


def sequential_built_by_fit() -> object:
    import keras

    return keras.Sequential(cnn_layers())


def sequential_with_input() -> object:
    import keras

    return keras.Sequential([keras.Input((PARITY_SIZE, PARITY_SIZE, 3)), *cnn_layers()])


def sequential_transfer() -> object:
    import keras

    return keras.Sequential(
        [
            keras.Input((PARITY_SIZE, PARITY_SIZE, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),
            frozen_base(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def functional_nested_logits() -> object:
    import keras

    inputs = keras.Input((PARITY_SIZE, PARITY_SIZE, 3))
    x = frozen_base()(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def functional_normalization_first() -> object:
    import keras

    normalization = keras.layers.Normalization()
    normalization.adapt(colour_images(PARITY_SIZE)[0])
    inputs = keras.Input((PARITY_SIZE, PARITY_SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(normalization(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@dataclass(frozen=True)
class Way:
    """One way of writing a classifier, and the --preprocessing its user gives."""

    build: Callable[[], object]
    preprocessing: str | None  # None: left to the converter, which finds the scaling
    scaling: tuple[str, ...] = ()  # the layers it must find


WAYS = {
    "sequential built by fit": Way(sequential_built_by_fit, "tf"),
    "sequential with input": Way(sequential_with_input, "tf"),
    "sequential transfer, rescaling inside": Way(sequential_transfer, None, ("Rescaling",)),
    "functional nested base, logits": Way(functional_nested_logits, "tf"),
    "functional normalization first": Way(functional_normalization_first, None, ("Normalization",)),
}


@dataclass(frozen=True)
class Written:
    way: Way
    keras_file: Path
    model_path: Path


def fit_and_save(way: Way, path: Path) -> None:
    """Fit briefly on raw or ``tf``-scaled colour images, as its user would, and save."""
    import keras

    keras.utils.set_random_seed(0)
    model = way.build()
    images, labels = colour_images(PARITY_SIZE)
    if way.preprocessing == "tf":
        images = images / 127.5 - 1
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=model.layers[-1].activation.__name__ == "linear"
        ),
    )
    model.fit(images, labels, epochs=8, verbose=0)
    model.save(path)


@pytest.fixture(scope="module", params=list(WAYS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Written:
    way = WAYS[request.param]
    folder = tmp_path_factory.mktemp("way")
    keras_file = folder / "own.keras"
    fit_and_save(way, keras_file)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    model_path = folder / "models" / "own.onnx"
    extra = ("--preprocessing", way.preprocessing) if way.preprocessing else ()
    code, stdout = convert_file(keras_file, labels, model_path, *extra)
    assert code == 0, stdout
    return Written(way, keras_file, model_path)


def real_photos() -> list[Path]:
    """The examples, and some ImageNet sample photos where they are present."""
    return [*EXAMPLE_PHOTOS, *sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[:SAMPLE_PHOTOS]]


def keras_probabilities(keras_file: Path, photo: Path, mode: str) -> np.ndarray:
    """Keras' own pipeline: ``load_img`` (bilinear), ``preprocess_input``, the model."""
    import keras
    from keras.applications.imagenet_utils import preprocess_input

    model = keras.saving.load_model(keras_file)
    image = keras.utils.img_to_array(
        keras.utils.load_img(
            photo, target_size=(PARITY_SIZE, PARITY_SIZE), interpolation="bilinear"
        )
    )
    batch = image[None] if mode == "none" else preprocess_input(image[None], mode=mode)
    scores = np.asarray(model(batch, training=False))[0]
    return softmax(scores[None])[0] if model.layers[-1].activation.__name__ == "linear" else scores


def test_each_way_serves_keras_top3_on_real_photos(written: Written) -> None:
    mode = written.way.preprocessing or "none"
    classifier = Classifier(written.model_path)
    for photo in real_photos():
        expected = keras_probabilities(written.keras_file, photo, mode)
        top3 = classifier.classify(photo, k=3)
        order = np.argsort(expected)[::-1][:3]
        assert [p.label for p in top3] == [LABELS[i] for i in order], photo.name
        np.testing.assert_allclose([p.probability for p in top3], expected[order], atol=1e-4)


def test_each_way_records_the_scaling_it_found(written: Written) -> None:
    metadata = ModelMetadata.from_json(metadata_path_for(written.model_path).read_text())
    found = [layer["type"] for layer in metadata.in_model_preprocessing]
    assert tuple(found) == written.way.scaling
    assert metadata.preprocessing.mode == (written.way.preprocessing or "none")
    assert metadata.verification["passed"] is True


def test_tapped_reaches_a_layer_inside_the_nested_base_of_a_sequential_model() -> None:
    """The one way to Keras' intermediate tensors, for any model Keras can call."""
    import keras

    from conversion.keras_model import flat_layers, tapped

    model = sequential_transfer()
    base = model.layers[1]
    conv = [layer for layer in flat_layers(model) if isinstance(layer, keras.layers.Conv2D)][-1]
    images = np.random.default_rng(0).uniform(0, 255, (2, PARITY_SIZE, PARITY_SIZE, 3))
    output, conv_input, conv_output = (np.asarray(t) for t in tapped(model, [conv])(images))
    np.testing.assert_allclose(output, np.asarray(model(images)), atol=1e-6)
    inside = keras.Model(base.inputs, [conv.input, conv.output])(images / 127.5 - 1)
    np.testing.assert_allclose(conv_input, np.asarray(inside[0]), atol=1e-5)
    np.testing.assert_allclose(conv_output, np.asarray(inside[1]), atol=1e-5)


# --- preprocessing: scaling found inside the model ------------------------------


def test_rescaling_is_found_inside_a_nested_first_block_past_augmentation() -> None:
    import keras

    from conversion.keras_model import in_model_scaling

    augment = keras.Sequential([keras.layers.RandomFlip(), keras.layers.RandomRotation(0.1)])
    scale = keras.Sequential([keras.layers.Rescaling(1 / 255)], name="scale")
    model = keras.Sequential([keras.Input((16, 16, 3)), augment, scale, *cnn_layers()])
    found = in_model_scaling(model)
    assert [(layer["type"], layer["scale"]) for layer in found] == [("Rescaling", 1 / 255)]
    late = keras.Sequential(
        [keras.Input((16, 16, 3)), *cnn_layers()[:1], keras.layers.Rescaling(2.0)]
    )
    assert in_model_scaling(late) == []


@pytest.mark.slow
def test_preprocessing_given_on_a_model_that_scales_warns_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    way = WAYS["sequential transfer, rescaling inside"]
    keras_file = save(way.build(), tmp_path / "transfer.keras")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    code, stdout = convert_file(keras_file, labels, tmp_path / "t.onnx", "--preprocessing", "tf")
    err = capsys.readouterr().err
    assert code == 0, stdout
    assert err.startswith("warning: the model scales its pixels itself (Rescaling")
    assert "--preprocessing tf scales them twice" in err
    assert len(err.strip().splitlines()) == 1
    metadata = ModelMetadata.from_json(metadata_path_for(tmp_path / "t.onnx").read_text())
    assert metadata.preprocessing.mode == "tf"  # the user's word stands
    assert metadata.in_model_preprocessing[0]["scale"] == pytest.approx(1 / 127.5)


# --- more that the runtime cannot serve, each one line and an exit code ----------


def labels_for(tmp_path: Path, count: int = 3) -> Path:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join("abcdefgh"[:count]))
    return labels


def tabular() -> object:
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


def two_inputs() -> object:
    import keras

    first, second = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    merged = keras.layers.Concatenate()([first, second])
    scores = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(merged))
    return keras.Model([first, second], scores)


def sigmoid_head() -> object:
    import keras

    flat = keras.layers.Flatten()
    return keras.Sequential(
        [keras.Input((8, 8, 3)), flat, keras.layers.Dense(3, activation="sigmoid")]
    )


def two_outputs() -> object:
    import keras

    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, [keras.layers.Dense(3)(features), keras.layers.Dense(2)(features)])


def one_score() -> object:
    import keras

    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])


def grey_input() -> object:
    import keras

    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])


def model_file(build: Callable[[], object], name: str) -> Callable[[Path], Path]:
    """A writer of ``build()``'s model saved as ``name`` in a folder."""
    return lambda folder: save(build(), folder / name)


def weights_file(folder: Path) -> Path:
    path = folder / "own.weights.h5"
    sequential_with_input().save_weights(path)
    return path


@dataclass(frozen=True)
class Refusal:
    """A file a user might give, and the words the one-line refusal (exit 7) must hold."""

    write: Callable[[Path], Path]
    labels: int
    flags: tuple[str, ...]
    phrases: tuple[str, ...]


TF = ("--preprocessing", "tf")
REFUSALS = {
    "no images": Refusal(
        model_file(tabular, "tabular.keras"), 3, ("--preprocessing", "none"),
        ("(None, 4)", "(batch, height, width, 3)"),
    ),
    "two inputs": Refusal(model_file(two_inputs, "two.keras"), 3, TF, ("2 inputs",)),
    "sigmoid": Refusal(model_file(sigmoid_head, "multi.keras"), 3, TF, ("sigmoid",)),
    "two outputs": Refusal(
        model_file(two_outputs, "two.keras"), 3, TF,
        ("2 output(s)", "one output of shape (batch, classes)"),
    ),
    "one score": Refusal(
        model_file(one_score, "binary.keras"), 2, TF, ("one output unit", "Dense(2)")
    ),
    "grey images": Refusal(
        model_file(grey_input, "grey.keras"), 3, TF, ("(None, 8, 8, 1)", "RGB images")
    ),
    "weights only": Refusal(
        weights_file, 3, (), ("holds weights only", "model.load_weights('own.weights.h5')")
    ),
}  # fmt: skip


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_model_the_runtime_cannot_serve_is_refused(
    refusal: Refusal, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    user_file = refusal.write(tmp_path)
    labels = labels_for(tmp_path, refusal.labels)
    code, _ = convert_file(user_file, labels, tmp_path / "t.onnx", *refusal.flags)
    assert_refused(code, 7, capsys, *refusal.phrases)
    assert not (tmp_path / "t.onnx").exists()


def test_a_file_that_is_not_a_keras_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = tmp_path / "notes.keras"
    text.write_text("not a model\n")
    code, _ = convert_file(text, labels_for(tmp_path), tmp_path / "t.onnx")
    assert_refused(code, 7, capsys, "Keras cannot load", "model.save('name.keras')")
    png = tmp_path / "photo.h5"
    png.write_bytes(CAT_PHOTO.read_bytes())
    code, _ = convert_file(png, labels_for(tmp_path), tmp_path / "t.onnx")
    assert_refused(code, 7, capsys, "is not a Keras model file (not HDF5")


@pytest.mark.slow
def test_a_full_model_h5_that_keras_loads_converts(tmp_path: Path) -> None:
    """``model.save("own.h5")``: the legacy full-model format of Keras 2."""
    keras_file = save(sequential_with_input(), tmp_path / "own.h5")
    code, stdout = convert_file(
        keras_file, labels_for(tmp_path), tmp_path / "own.onnx", "--preprocessing", "tf"
    )
    assert code == 0, stdout
    assert "PASSED" in stdout


def test_a_keras_2_h5_that_keras_3_cannot_load_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Keras 2 wrote TensorFlow ops as ``TFOpLambda`` layers, which Keras 3 lacks."""
    keras_file = save(sequential_with_input(), tmp_path / "keras2.h5")
    with h5py.File(keras_file, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "TFOpLambda"
        file.attrs["model_config"] = json.dumps(config)
    code, _ = convert_file(
        keras_file, labels_for(tmp_path), tmp_path / "t.onnx", "--preprocessing", "tf"
    )
    assert_refused(
        code, 7, capsys, "a Keras 2 model file", "TFOpLambda", "model.load_weights('keras2.h5')"
    )


def test_labels_that_cannot_be_read_are_refused(
    colours_model: ColoursModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\n\na\nb\n")
    code, _ = convert_file(
        colours_model.keras_file,
        labels,
        tmp_path / "t.onnx",
        "--preprocessing",
        "tf",
        "--input-size",
        str(SIZE),
    )
    assert_refused(code, 8, capsys, "names a more than once")


def test_a_refusal_is_one_line_on_stderr_without_a_traceback(tmp_path: Path) -> None:
    """As a user runs it: TensorFlow loaded, nothing else on stderr."""
    text = tmp_path / "notes.keras"
    text.write_text("not a model\n")
    command = [sys.executable, str(ROOT / "convert_model.py"), "--model", str(text)]
    command += ["--labels", str(labels_for(tmp_path)), "--output", str(tmp_path / "t.onnx")]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )
    assert result.returncode == 7, result.stderr
    assert result.stderr.startswith("error: Keras cannot load"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_what_native_code_writes_to_stderr_goes_to_the_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On Intel, TensorFlow's C++ code writes start-up lines to descriptor 2 whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. Written at C level while the converter loads the
    model, such a line reaches the log, not stderr; the refusal's own line does."""
    import ctypes

    import convert_model
    from conversion.errors import UnservableModelError

    chatter = b"WARNING: All log messages before absl::InitializeLog() is called ...\n"

    def load_keras_file(path: Path) -> object:
        ctypes.CDLL(None).write(2, chatter, len(chatter))
        raise UnservableModelError(f"Keras cannot load {path.name}.")

    monkeypatch.setattr("conversion.keras_model.load_keras_file", load_keras_file)
    text = tmp_path / "notes.keras"
    text.write_text("not a model\n")
    with caplog.at_level(logging.DEBUG, logger="conversion.native_stderr"):
        labels, output = labels_for(tmp_path), tmp_path / "t.onnx"
        code = convert_model.main(
            ["--model", str(text), "--labels", str(labels), "--output", str(output)]
        )
    assert code == 7
    assert capfd.readouterr().err == "error: Keras cannot load notes.keras.\n"
    assert "absl::InitializeLog()" in caplog.text


# --- the README's own examples ------------------------------------------------------

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
FLOWER_COLOURS = [(230, 230, 230), (240, 220, 40), (200, 30, 40), (250, 150, 20), (150, 40, 160)]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def write_flowers(folder: Path) -> None:
    """A folder per class of small noisy photos, each class its own colour."""
    rng = np.random.default_rng(3)
    for name, colour in zip(FLOWERS, FLOWER_COLOURS, strict=True):
        (folder / name).mkdir(parents=True)
        for index in range(3):
            noise = rng.integers(-30, 30, (40, 48, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.png")


def mobilenet_v2_stand_in(input_shape: tuple, include_top: bool, weights: str) -> object:
    """A small functional base in place of MobileNetV2 with its ImageNet weights,
    which cannot be downloaded here."""
    import keras

    assert (include_top, weights) == (False, "imagenet")
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, x, name="mobilenetv2_stand_in")


@pytest.mark.slow
def test_the_readme_examples_train_convert_and_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    section = readme_section("Serve your own model")
    examples = code_blocks(section, "python")
    assert len(examples) == 2, "a Sequential CNN and a transfer-learning example"
    (command,) = [
        line
        for line in code_blocks(section, "bash")[0].splitlines()
        if line.startswith("python convert_model.py")
    ]
    write_flowers(tmp_path / "flowers")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(keras.applications, "MobileNetV2", mobilenet_v2_stand_in)
    photo = tmp_path / "flowers" / "roses" / "0.png"
    for number, example in enumerate(examples, 1):
        exec(compile(example, f"README.md, example {number}", "exec"), {})
        output = tmp_path / f"example{number}" / "flowers.onnx"
        convert(*shlex.split(command)[2:], "--output", str(output))
        metadata = ModelMetadata.from_json(metadata_path_for(output).read_text())
        assert metadata.preprocessing.mode == "none"
        assert metadata.in_model_preprocessing[0]["type"] == "Rescaling"
        model = keras.saving.load_model("flowers.keras")
        size = tuple(model.inputs[0].shape[1:3])
        image = keras.utils.img_to_array(
            keras.utils.load_img(photo, target_size=size, interpolation="bilinear")
        )
        expected = np.asarray(model(image[None], training=False))[0]
        top = Classifier(output).classify(photo, k=5)
        assert sorted(p.label for p in top) == FLOWERS
        assert top[0].label == FLOWERS[int(expected.argmax())]
        assert top[0].probability == pytest.approx(float(expected.max()), abs=1e-4)
