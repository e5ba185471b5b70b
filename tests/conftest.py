"""Shared fixtures: one converted random-weights model for the whole session.

Models converted from random weights are written to pytest's temporary
folders only; they must never land in ``models/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from classifier.assets import ROOT

EXAMPLES = ROOT / "examples"
CAT_PHOTO = EXAMPLES / "chelsea.png"
COFFEE_PHOTO = EXAMPLES / "coffee.png"
IMAGENET_SAMPLE = ROOT.parent / "shared" / "assets" / "imagenet-sample"
SEED = 0


@dataclass(frozen=True)
class Converted:
    """A model the converter wrote, with the Keras model it came from."""

    model_path: Path
    keras_model: object
    stdout: str


def run_converter(*args: str) -> int:
    """Run ``convert_model.py`` in this process (TensorFlow stays loaded)."""
    import convert_model

    return convert_model.main(list(args))


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The converter's output for seeded random weights, built once."""
    import contextlib
    import io

    from conversion.keras_model import WeightsSource, build_model

    model_path = tmp_path_factory.mktemp("random-model") / "inception_v3.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_converter(
            "--weights", "random", "--seed", str(SEED), "--output", str(model_path)
        )
    assert code == 0, stdout.getvalue()
    keras_model = build_model(WeightsSource("random", seed=SEED))
    return Converted(model_path, keras_model, stdout.getvalue())


@pytest.fixture(scope="session")
def model_path(converted: Converted) -> Path:
    return converted.model_path


@pytest.fixture(scope="session")
def app_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free port, started by the Procfile's command, for the session."""
    from harness import serving

    log = tmp_path_factory.mktemp("app") / "app.log"
    with serving(model_path, log) as instance:
        yield instance.url


def imagenet_sample_photos() -> list[Path]:
    """The 100 ImageNet photos in ../shared (local only; never committed)."""
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"{IMAGENET_SAMPLE} is absent: the ImageNet sample photos are local-only")
    return sorted(IMAGENET_SAMPLE.glob("*.JPEG"))
