"""Class labels, read from the file that ships beside the model.

Three formats, told apart by content: Keras' ImageNet class index (a JSON
object ``{"0": [class_id, name], ...}``), a JSON list of names, or a text
file with one name per line. Every class gets its own, unique label.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from classifier.errors import ClassifierError


class LabelsError(ClassifierError, ValueError):
    """A labels file that cannot label the model's classes; the message says why."""

    exit_code = 8


Label = tuple[str, str]
"""``(class_id, readable name)``; for plain name lists the id is the name."""


def read_labels(path: Path) -> list[Label]:
    """The labels in ``path``, by class index."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LabelsError(f"Labels file {path} cannot be read ({error}).") from error
    try:
        labels = parse_labels(text)
    except LabelsError as error:
        raise LabelsError(f"Labels file {path}: {error}") from error
    duplicates = sorted(name for name, count in Counter(n for _, n in labels).items() if count > 1)
    if duplicates:
        raise LabelsError(f"Labels file {path} names {', '.join(duplicates)} more than once.")
    return labels


def parse_labels(text: str) -> list[Label]:
    if not text.strip():
        raise LabelsError("it holds no labels")
    if text.lstrip()[0] not in "[{":
        return _names([line.strip() for line in text.splitlines() if line.strip()])
    try:
        data = json.loads(text)
    except ValueError as error:
        raise LabelsError(f"it is not valid JSON ({error})") from error
    if isinstance(data, dict):
        return _class_index(data)
    if not all(isinstance(name, str) for name in data):
        raise LabelsError("a JSON labels file must be a list of strings")
    return _names([name.strip() for name in data])


def _names(names: list[str]) -> list[Label]:
    if not all(names):
        raise LabelsError("a label is empty")
    return [(name, name) for name in names]


def _class_index(index: dict[str, list[str]]) -> list[Label]:
    """Keras' ImageNet class index; names lose their underscores, and the two
    names ImageNet uses twice ("crane", "maillot") get their WordNet id."""
    try:
        entries = [(str(index[str(i)][0]), str(index[str(i)][1])) for i in range(len(index))]
    except KeyError as error:
        raise LabelsError(f"class {error} is missing from the class index") from error
    except (TypeError, IndexError) as error:
        raise LabelsError("class index entries must be [class_id, name] pairs") from error
    names = Counter(name for _, name in entries)
    return [
        (class_id, name.replace("_", " ") + (f" ({class_id})" if names[name] > 1 else ""))
        for class_id, name in entries
    ]
