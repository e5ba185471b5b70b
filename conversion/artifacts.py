"""Write the verified model, its metadata and labels, atomically.

Every file is written to a temporary name in its own folder, synced, then
renamed over the target, so an interrupted or failed run never leaves a
half-written file in ``models/`` and never damages a good model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from classifier.metadata import ModelMetadata, metadata_path_for
from conversion.errors import OutputError


def check_writable(folder: Path) -> None:
    """Fail fast, before a long conversion, if ``folder`` cannot take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(
            f"Cannot write to the output folder {folder}: {error.strerror or error}. "
            "Choose another with --output."
        ) from error


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, or leave it untouched."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def publish(model_path: Path, model_bytes: bytes, metadata: ModelMetadata, labels: bytes) -> None:
    """Write the labels, then the model, then its metadata (which vouches for it)."""
    labels_path = model_path.parent / metadata.labels_file
    if not labels_path.is_file() or labels_path.read_bytes() != labels:
        write_atomic(labels_path, labels)
    write_atomic(model_path, model_bytes)
    write_atomic(metadata_path_for(model_path), metadata.to_json().encode())


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
