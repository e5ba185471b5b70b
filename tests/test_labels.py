"""Labels files: Keras' class index, a JSON list, or one label per line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from classifier.labels import LabelsError, read_labels
from classifier.metadata import ModelMetadata, metadata_path_for
from classifier.model import Classifier, ModelError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_one_label_per_line_ignoring_blank_lines_and_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, "labels.txt", "daisy\n  rose \n\ntulip\n")
    assert read_labels(path) == [("daisy", "daisy"), ("rose", "rose"), ("tulip", "tulip")]


def test_a_json_list(tmp_path: Path) -> None:
    path = write(tmp_path, "labels.json", json.dumps(["cat", "dog"]))
    assert read_labels(path) == [("cat", "cat"), ("dog", "dog")]


def test_keras_class_index_keeps_its_ids_and_makes_names_unique(tmp_path: Path) -> None:
    index = {"0": ["n1", "crane"], "1": ["n2", "great_white_shark"], "2": ["n3", "crane"]}
    path = write(tmp_path, "index.json", json.dumps(index))
    assert read_labels(path) == [
        ("n1", "crane (n1)"),
        ("n2", "great white shark"),
        ("n3", "crane (n3)"),
    ]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "holds no labels"),
        ("cat\ndog\ncat\n", "names cat more than once"),
        ('["cat", ', "not valid JSON"),
        ('["cat", 3]', "list of strings"),
        ('["cat", " "]', "a label is empty"),
        ('{"0": ["n1", "cat"], "2": ["n3", "dog"]}', "class '1' is missing"),
    ],
)
def test_bad_labels_files_say_what_is_wrong(tmp_path: Path, text: str, phrase: str) -> None:
    with pytest.raises(LabelsError, match=phrase):
        read_labels(write(tmp_path, "labels.txt", text))


def test_runtime_refuses_labels_that_do_not_fit_the_model(model_path: Path, tmp_path: Path) -> None:
    for path in model_path.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    copy = tmp_path / model_path.name
    metadata = ModelMetadata.from_json(metadata_path_for(copy).read_text())
    write(tmp_path, metadata.labels_file, json.dumps(["cat", "dog"]))
    with pytest.raises(ModelError, match="has 2 labels for the model's 1000 classes"):
        Classifier(copy)
