"""The int8 model: calibrated on real photos, checked against float32 on others.

Random weights give near-uniform outputs, where top-1 agreement means
nothing, so these tests quantize a confident test model: seeded random
weights with the dense layer scaled until the top class holds most of the
probability (``conversion.synthetic``). The converter's own bar, 99% top-1
agreement on the held-out photos, applies to it unchanged.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CAT_PHOTO, IMAGENET_SAMPLE, imagenet_sample_photos, run_converter
from PIL import Image

from classifier.metadata import ModelMetadata, sha256_of
from classifier.model import Classifier
from conversion.synthetic import write_confident_weights


@dataclass(frozen=True)
class Quantized:
    float_model: Path
    int8_model: Path
    stdout: str


def quantize(float_model: Path, *args: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_converter("--output", str(float_model), "--quantize", "int8", *args)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    imagenet_sample_photos()  # skips where the photos are absent
    folder = tmp_path_factory.mktemp("confident")
    weights = folder / "confident.weights.h5"
    write_confident_weights(weights)
    float_model = folder / "inception_v3.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_converter("--weights", str(weights), "--output", str(float_model)) == 0
    code, stdout = quantize(float_model, "--calibration", str(IMAGENET_SAMPLE))
    assert code == 0, stdout
    return Quantized(float_model, folder / "inception_v3.int8.onnx", stdout)


def test_int8_model_is_written_with_its_metadata(quantized: Quantized) -> None:
    metadata = ModelMetadata.from_json(quantized.int8_model.with_suffix(".json").read_text())
    float_metadata = ModelMetadata.from_json(quantized.float_model.with_suffix(".json").read_text())
    assert metadata.precision == "int8"
    assert metadata.sha256 == sha256_of(quantized.int8_model)
    assert metadata.weights == float_metadata.weights
    assert metadata.preprocessing == float_metadata.preprocessing
    assert metadata.input == float_metadata.input
    assert metadata.calibration["photos"] == 50
    assert metadata.calibration["verification_photos"] == 50
    assert len(metadata.calibration["sha256"]) == 64
    verification = metadata.verification
    assert verification["against"] == "float32 ONNX"
    assert verification["samples"] == 50
    assert verification["top1_agreement"] >= 0.99
    assert 0.0 < verification["top5_overlap"] <= 1.0
    assert "held-out photos: top-1 agreement" in quantized.stdout


def test_int8_model_is_about_three_times_smaller(quantized: Quantized) -> None:
    # int8 weights are a quarter of float32's; the float32 head adds 8 MB.
    ratio = quantized.int8_model.stat().st_size / quantized.float_model.stat().st_size
    assert 0.25 < ratio < 0.35


def test_int8_model_holds_quantized_weights(quantized: Quantized) -> None:
    graph = onnx.load(quantized.int8_model).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(t.dims) for t in int8_weights) > 20_000_000


def test_the_app_api_serves_the_int8_model(quantized: Quantized) -> None:
    int8 = Classifier(quantized.int8_model)
    assert int8.metadata.precision == "int8"
    top = int8.classify(CAT_PHOTO)
    reference = Classifier(quantized.float_model).classify(CAT_PHOTO)
    assert len(top) == 5
    assert top[0].probability > 0.3  # the confident test model is confident
    assert top[0].index == reference[0].index


def test_disagreeing_int8_model_is_refused_and_nothing_is_kept(
    quantized: Quantized, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calibrated on flat gray images, activation ranges are far too narrow for
    real photos, so the int8 model disagrees and must be refused."""
    gray = tmp_path / "gray"
    gray.mkdir()
    for level in (100, 120, 140, 160):
        Image.new("RGB", (64, 64), (level, level, level)).save(gray / f"gray{level}.png")
    float_copy = tmp_path / "model" / "inception_v3.onnx"
    float_copy.parent.mkdir()
    for name in ("inception_v3.onnx", "inception_v3.json", "imagenet_class_index.json"):
        shutil.copy(quantized.float_model.parent / name, float_copy.parent / name)
    before = sorted(p.name for p in float_copy.parent.iterdir())

    code, stdout = quantize(
        float_copy,
        "--calibration",
        str(gray),
        "--verification",
        str(IMAGENET_SAMPLE),
    )

    assert code == 1, stdout
    assert "disagrees with float32" in capsys.readouterr().err
    assert "FAILED" in stdout
    assert sorted(p.name for p in float_copy.parent.iterdir()) == before


def test_calibration_folder_must_exist(quantized: Quantized, tmp_path: Path, capsys) -> None:
    code, _ = quantize(quantized.float_model, "--calibration", str(tmp_path / "nowhere"))
    assert code == 5
    assert "not found" in capsys.readouterr().err
