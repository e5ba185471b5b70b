"""A user's own trained classifier: from a .keras file to its page, and clear refusals.

The test trains a small CNN on a few images of three named classes, saves it
as a ``.keras`` file, converts it with its labels and serves it as Heroku
does; the page must answer with the model's own labels, as Keras does.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import CAT_PHOTO, run_converter
from gradio_client import Client, handle_file
from PIL import Image

from classifier.metadata import ModelMetadata, Preprocessing, metadata_path_for
from classifier.model import Classifier
from classifier.preprocess import preprocess

LABELS = ["red apple", "green leaf", "blue sky"]
SIZE = 32


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
class UserModel:
    keras_file: Path
    model_path: Path
    stdout: str


def convert(keras_file: Path, labels: Path, output: Path, *extra: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_converter(
            "--model", str(keras_file), "--labels", str(labels), "--output", str(output), *extra
        )
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> UserModel:
    folder = tmp_path_factory.mktemp("user-model")
    keras_file = folder / "colours.keras"
    train(keras_file)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    model_path = folder / "models" / "colours.onnx"
    code, stdout = convert(
        keras_file, labels, model_path, "--preprocessing", "tf", "--input-size", str(SIZE)
    )
    assert code == 0, stdout
    return UserModel(keras_file, model_path, stdout)


def keras_top_label(keras_file: Path, photo: Path) -> str:
    import keras

    model = keras.saving.load_model(keras_file)
    spec = Preprocessing.for_mode("tf", SIZE, SIZE)
    logits = np.asarray(model(preprocess(photo, spec)[None], training=False))[0]
    return LABELS[int(logits.argmax())]


def test_metadata_describes_the_user_model(user_model: UserModel) -> None:
    metadata = ModelMetadata.from_json(metadata_path_for(user_model.model_path).read_text())
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
    shipped = user_model.model_path.parent / metadata.labels_file
    assert shipped.read_text().split("\n")[:3] == LABELS


def test_runtime_turns_the_logits_into_probabilities(user_model: UserModel) -> None:
    top = Classifier(user_model.model_path).classify(CAT_PHOTO, k=5)
    assert sorted(prediction.label for prediction in top) == sorted(LABELS)
    assert all(0.0 < prediction.probability < 1.0 for prediction in top)
    assert sum(prediction.probability for prediction in top) == pytest.approx(1.0, abs=1e-5)


def test_served_over_http_with_its_own_labels_and_title(
    user_model: UserModel, tmp_path: Path
) -> None:
    import httpx
    from harness import serving

    rng = np.random.default_rng(1)
    photos = []
    for label in range(len(LABELS)):
        photo = tmp_path / f"photo{label}.png"
        colour_photo(label, rng).save(photo)
        photos.append(photo)
    with serving(user_model.model_path, tmp_path / "app.log") as instance:
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
    assert answers == [keras_top_label(user_model.keras_file, photo) for photo in photos]
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


def test_a_model_that_takes_no_images_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import keras

    tabular = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    code, _ = convert(
        save(tabular, tmp_path / "tabular.keras"),
        labels,
        tmp_path / "t.onnx",
        "--preprocessing",
        "none",
    )
    assert_refused(code, 7, capsys, "(None, 4)", "(batch, height, width, 3)")
    assert not (tmp_path / "t.onnx").exists()


def test_a_model_with_two_inputs_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import keras

    first, second = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    merged = keras.layers.Concatenate()([first, second])
    scores = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(merged))
    model = keras.Model([first, second], scores)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    code, _ = convert(
        save(model, tmp_path / "two.keras"), labels, tmp_path / "t.onnx", "--preprocessing", "tf"
    )
    assert_refused(code, 7, capsys, "2 inputs")


def test_a_model_ending_in_sigmoid_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="sigmoid"),
        ]
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    code, _ = convert(
        save(model, tmp_path / "multi.keras"), labels, tmp_path / "t.onnx", "--preprocessing", "tf"
    )
    assert_refused(code, 7, capsys, "sigmoid")


def test_labels_of_the_wrong_length_are_refused(
    user_model: UserModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("red apple\ngreen leaf\n")
    code, _ = convert(
        user_model.keras_file,
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
    user_model: UserModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    code, _ = convert(user_model.keras_file, labels, tmp_path / "t.onnx", "--preprocessing", "tf")
    assert_refused(code, 7, capsys, "--input-size")


def test_a_keras_file_needs_its_preprocessing_named(user_model: UserModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    with pytest.raises(SystemExit) as exit_info:
        convert(user_model.keras_file, labels, tmp_path / "t.onnx")
    assert exit_info.value.code == 2


def test_name_sets_the_name_the_page_shows(user_model: UserModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    output = tmp_path / "colours.onnx"
    code, stdout = convert(
        user_model.keras_file,
        labels,
        output,
        *("--preprocessing", "tf", "--input-size", str(SIZE), "--name", "Colour guesser"),
    )
    assert code == 0, stdout
    assert ModelMetadata.from_json(metadata_path_for(output).read_text()).name == "Colour guesser"


def test_weights_are_refused_for_a_keras_file(user_model: UserModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    with pytest.raises(SystemExit) as exit_info:
        convert(user_model.keras_file, labels, tmp_path / "t.onnx", "--weights", "random")
    assert exit_info.value.code == 2


def test_int8_quantization_keeps_the_model_s_name_labels_and_answers(
    user_model: UserModel, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(12):
        colour_photo(index % 3, rng).save(photos / f"{index:02}.png")
    float_model = tmp_path / "colours.onnx"
    for path in user_model.model_path.parent.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    code, stdout = convert(
        user_model.keras_file,
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
    int8, float32 = Classifier(int8_model), Classifier(float_model)
    for photo in sorted(photos.iterdir())[1::2]:
        assert int8.classify(photo, k=1)[0].label == float32.classify(photo, k=1)[0].label
