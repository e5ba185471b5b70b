"""The plain Python API: Classifier over the ONNX model, its metadata and labels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from classifier.assets import ROOT
from classifier.metadata import metadata_path_for
from classifier.model import Classifier, ModelError
from classifier.preprocess import ImageError
from tests.support.converter import Converted
from tests.support.photos import CAT_PHOTO, COFFEE_PHOTO


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> Classifier:
    return Classifier(model_path)


def copy_model(model_path: Path, folder: Path) -> Path:
    for path in model_path.parent.iterdir():
        shutil.copy(path, folder / path.name)
    return folder / model_path.name


def test_classify_returns_top_k_in_descending_order(classifier: Classifier) -> None:
    top = classifier.classify(CAT_PHOTO, k=5)
    assert len(top) == 5
    probabilities = [prediction.probability for prediction in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 < p < 1.0 for p in probabilities)
    assert len({prediction.index for prediction in top}) == 5
    assert all("_" not in prediction.label for prediction in top)


def test_classify_agrees_with_keras(classifier: Classifier, converted: Converted) -> None:
    keras_probabilities = np.asarray(
        converted.keras_model(classifier.preprocess(CAT_PHOTO)[None], training=False)
    )[0]
    keras_top = np.argsort(keras_probabilities)[::-1][:5]
    top = classifier.classify(CAT_PHOTO, k=5)
    assert [prediction.index for prediction in top] == list(keras_top)
    np.testing.assert_allclose(
        [prediction.probability for prediction in top], keras_probabilities[keras_top], atol=1e-6
    )


def test_batch_equals_one_by_one(classifier: Classifier) -> None:
    photos = [CAT_PHOTO, COFFEE_PHOTO, CAT_PHOTO.read_bytes()]
    batch = classifier.classify_batch(photos, k=3)
    for photo, top in zip(photos, batch, strict=True):
        single = classifier.classify(photo, k=3)
        assert [p.index for p in top] == [p.index for p in single]
        np.testing.assert_allclose(
            [p.probability for p in top], [p.probability for p in single], rtol=1e-5
        )


def test_labels_are_readable_and_unique(classifier: Classifier) -> None:
    names = [name for _, name in classifier.labels]
    assert len(names) == len(set(names)) == 1000
    assert names[281] == "tabby"
    assert names[134] == "crane (n02012849)"
    assert names[1] == "goldfish"


def test_bad_image_raises_image_error(classifier: Classifier) -> None:
    with pytest.raises(ImageError, match="not an image"):
        classifier.classify(b"not an image")


def test_missing_model_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("not found: run `python convert_model.py`")):
        Classifier(tmp_path / "inception_v3.onnx")


def test_missing_metadata(model_path: Path, tmp_path: Path) -> None:
    copy = copy_model(model_path, tmp_path)
    metadata_path_for(copy).unlink()
    with pytest.raises(ModelError, match=r"Metadata file .* not found"):
        Classifier(copy)


def test_truncated_model_is_refused(model_path: Path, tmp_path: Path) -> None:
    copy = copy_model(model_path, tmp_path)
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="does not match its metadata"):
        Classifier(copy)


def test_corrupt_model_with_matching_size_is_refused(model_path: Path, tmp_path: Path) -> None:
    copy = copy_model(model_path, tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="truncated, corrupt or from another conversion"):
        Classifier(copy)


def test_damaged_metadata_is_refused(model_path: Path, tmp_path: Path) -> None:
    copy = copy_model(model_path, tmp_path)
    metadata_path_for(copy).write_text("{ not json")
    with pytest.raises(ModelError, match="is damaged"):
        Classifier(copy)


def tall(metadata: dict) -> None:
    metadata["preprocessing"]["height"] = "tall"


def odds(metadata: dict) -> None:
    metadata["scores"] = "odds"


def no_source(metadata: dict) -> None:
    metadata["weights"] = {"seed": 0}


def next_format(metadata: dict) -> None:
    metadata["format_version"] = 3


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (tall, "preprocessing.height: Input should be a valid integer"),
        (odds, "scores: Input should be 'probabilities' or 'logits'"),
        (no_source, "weights.source: Field required"),
        (next_format, "format_version: Input should be 2"),
    ],
)
def test_metadata_with_a_wrong_field_is_refused_naming_it(
    model_path: Path, tmp_path: Path, edit: Callable[[dict], None], phrase: str
) -> None:
    copy = copy_model(model_path, tmp_path)
    metadata = json.loads(metadata_path_for(copy).read_text())
    edit(metadata)
    metadata_path_for(copy).write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match=re.escape(phrase)):
        Classifier(copy)


def test_metadata_fields_the_runtime_does_not_know_are_ignored(
    model_path: Path, tmp_path: Path
) -> None:
    """A newer converter's file (a new block, a new verification figure) still loads."""
    copy = copy_model(model_path, tmp_path)
    metadata = json.loads(metadata_path_for(copy).read_text())
    metadata["a_new_block"] = {"enabled": True}
    metadata["verification"]["a_new_figure"] = 0.5
    metadata_path_for(copy).write_text(json.dumps(metadata))
    loaded = Classifier(copy, warm=False).metadata
    assert loaded.verification["a_new_figure"] == 0.5
    assert loaded.weights["source"] == "random"


def test_model_onnxruntime_cannot_load_is_refused(model_path: Path, tmp_path: Path) -> None:
    """A file that matches its metadata but is no ONNX model still fails cleanly."""
    from classifier.metadata import ModelMetadata, sha256_of

    copy = copy_model(model_path, tmp_path)
    copy.write_bytes(b"garbage, but vouched for")
    metadata_path = metadata_path_for(copy)
    metadata = ModelMetadata.from_json(metadata_path.read_text())
    vouched = replace(metadata, sha256=sha256_of(copy), size_bytes=copy.stat().st_size)
    metadata_path.write_text(vouched.to_json())
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        Classifier(copy)


def test_runtime_never_imports_tensorflow(model_path: Path) -> None:
    code = (
        "import sys, app, service.page\n"
        "from classifier.model import Classifier\n"
        f"Classifier({str(model_path)!r}).classify({str(CAT_PHOTO)!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'keras', 'tf2onnx', 'onnx', 'h5py'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
