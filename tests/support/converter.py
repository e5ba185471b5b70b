"""``convert_model.py`` run in this process, as every test that converts calls it."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SEED = 0
"""The seed of the session's random-weights InceptionV3."""


@dataclass(frozen=True)
class Converted:
    """A model the converter wrote, with the Keras model it came from."""

    model_path: Path
    keras_model: object
    stdout: str


class ConverterRun(NamedTuple):
    """What the converter returned and printed (stderr is left to ``capsys``)."""

    code: int
    stdout: str


def run_converter(*args: str) -> ConverterRun:
    """Run the converter's ``main`` here, so TensorFlow loads once per session."""
    import convert_model

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = convert_model.main(list(args))
    return ConverterRun(code, stdout.getvalue())


def convert(*args: str) -> str:
    """Run the converter where it must succeed; its stdout, or a failure showing it."""
    code, stdout = run_converter(*args)
    assert code == 0, stdout
    return stdout


def linked(folder: Path, photos: list[Path]) -> Path:
    """``folder`` of symbolic links to ``photos``: a calibration or verification set."""
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    return folder
