"""The store as a training set: the folder-per-class layout Keras' ``image_dataset_from_directory``
reads, and ``feedback.csv`` beside it.

``OUT_DIR/<label>/<id>.jpg`` for every correction, ``OUT_DIR/feedback.csv``
with one row each (the label as sent, which a folder name may have had to
change). Labels are what people typed, so each becomes a folder name that
is safe on every file system, and two labels that one file system would
take for the same folder (``Crane`` and ``crane`` on macOS, ``café``
composed and decomposed, ``a/b`` and ``a_b``) get a short hash of their own
text each. Rows are streamed from the database, so a store of any size is
exported in the memory of ``EXPORT_BATCH`` photos.
"""

from __future__ import annotations

import csv
import hashlib
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from service.feedback.store import Store, utc

COLUMNS = ["id", "time", "file", "label", "predicted", "model", "model_sha256"]
TABLE = "feedback.csv"
UNSAFE = set('/\\:*?"<>|')
"""Characters some file system refuses in a name (Windows refuses the most)."""
RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"{port}{n}" for port in ("com", "lpt") for n in range(10)),
}
"""Names Windows keeps for devices, whatever the extension."""
MAX_NAME_BYTES = 100


def folder_names(labels: Iterable[str]) -> dict[str, str]:
    """A folder name for every label: safe, and never one two labels share on any file system."""
    names = {label: safe_name(label) for label in set(labels)}
    while True:
        same: dict[str, list[str]] = defaultdict(list)
        for label, name in names.items():
            same[folded(name)].append(label)
        clashing = [
            label
            for group in same.values()
            if len(group) > 1
            for label in group
            if names[label] == safe_name(label)
        ]
        if not clashing:
            return names
        for label in clashing:
            names[label] = f"{safe_name(label)}~{hashlib.sha256(label.encode()).hexdigest()[:8]}"


def safe_name(label: str) -> str:
    """The label as one path component: no separators or control characters, no leading dot
    or dash, no trailing dot or space, no device name, at most ``MAX_NAME_BYTES``."""
    name = "".join("_" if c in UNSAFE or not c.isprintable() else c for c in label)
    name = name.lstrip(" .-").rstrip(" .")
    name = name.encode()[:MAX_NAME_BYTES].decode(errors="ignore").rstrip(" .") or "_"
    return f"{name}_" if name.casefold() in RESERVED else name


def folded(name: str) -> str:
    """What a case-insensitive, normalising file system compares."""
    return unicodedata.normalize("NFKC", name).casefold()


def export(store: Store, out: Path, since: datetime | None = None, only_wrong: bool = False) -> int:
    """Write the corrections from ``since`` (the wrong answers only, with ``only_wrong``) to
    ``out``; how many. ``feedback.csv`` is written last, under its name only when whole."""
    upto = store.last_id()
    names = folder_names(store.labels(since, only_wrong, upto))
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{TABLE}.partial"
    count = 0
    with partial.open("w", newline="", encoding="utf-8") as table:
        writer = csv.writer(table)
        writer.writerow(COLUMNS)
        for row in store.rows(since, only_wrong, upto):
            file = Path(names[row.label]) / f"{row.id}.jpg"
            write_whole(out / file, row.photo)
            writer.writerow(
                [
                    row.id,
                    utc(row.created_at).isoformat(),
                    file.as_posix(),
                    row.label,
                    row.predicted or "",
                    row.model_name,
                    row.model_sha256,
                ]
            )
            count += 1
    partial.replace(out / TABLE)
    return count


def write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path``, then rename: no half-written photo under its name."""
    path.parent.mkdir(exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
