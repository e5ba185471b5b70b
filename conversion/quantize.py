"""Static int8 quantization of the float32 ONNX model, with its agreement proven.

onnxruntime's static quantization in QDQ form, per-channel int8 weights and
uint8 activations (the pair x86's VNNI instructions multiply fastest), after
``quant_pre_process``. Activation ranges are calibrated on real photos run
through the app's own preprocessing; the result is then compared with the
float32 model on photos that calibration never saw.

The classifier head (the dense layer and softmax) stays float32: quantized,
its output would hold 256 levels, so near classes would tie and swap ranks,
while it costs 2% of the compute.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from classifier.metadata import Preprocessing
from classifier.preprocess import ImageError, preprocess

log = logging.getLogger(__name__)

SCHEME = {
    "format": "QDQ",
    "weights": "int8, per channel",
    "activations": "uint8",
    "calibration_method": "MinMax",
    "float32": "classifier head (dense layer and softmax)",
}
HEAD_OPERATORS = {"Softmax", "MatMul", "Gemm", "Add", "Squeeze", "Reshape", "Flatten"}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TOP_K = 5


class CalibrationError(Exception):
    """The calibration or verification photos cannot be used; the message says why."""


@dataclass(frozen=True)
class PhotoSplit:
    """Photos for calibration and the disjoint photos the result is checked on."""

    calibration: list[Path]
    verification: list[Path]

    def describe(self) -> dict[str, Any]:
        """The scheme, and the calibration set's size and checksum, for the metadata."""
        digest = hashlib.sha256()
        for photo in self.calibration:
            digest.update(photo.name.encode() + b"\0" + photo.read_bytes())
        return {
            **SCHEME,
            "photos": len(self.calibration),
            "sha256": digest.hexdigest(),
            "verification_photos": len(self.verification),
        }


def list_photos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CalibrationError(f"Photo folder {folder} not found.")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise CalibrationError(f"{folder} holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))}).")
    return photos


def split_photos(calibration: Path, verification: Path | None = None) -> PhotoSplit:
    """Calibrate on ``calibration``; verify on ``verification``, or, without it,
    hold every other photo of ``calibration`` out of calibration to verify on."""
    photos = list_photos(calibration)
    if verification is not None:
        return PhotoSplit(photos, list_photos(verification))
    if len(photos) < 4:
        raise CalibrationError(
            f"{calibration} holds {len(photos)} photos; at least 4 are needed to "
            "calibrate on half and verify on the other half (or pass --verification)."
        )
    return PhotoSplit(photos[0::2], photos[1::2])


def model_inputs(photos: Sequence[Path], spec: Preprocessing) -> Iterator[np.ndarray]:
    """Photos through the app's own preprocessing, one ``(1, h, w, 3)`` batch each."""
    for photo in photos:
        try:
            yield preprocess(photo, spec)[None]
        except ImageError as error:
            raise CalibrationError(f"{photo}: {error}") from error


class PhotoReader(CalibrationDataReader):
    """Feeds calibration photos to onnxruntime's calibrator, one at a time."""

    def __init__(self, photos: Sequence[Path], spec: Preprocessing, input_name: str) -> None:
        self._inputs = model_inputs(photos, spec)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._inputs, None)
        return None if batch is None else {self._input_name: batch}


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes from the pooled features to the output: the classifier head."""
    producers = {output: node for node in model.graph.node for output in node.output}
    names = []
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type in HEAD_OPERATORS:
        names.append(node.name)
        node = producers.get(node.input[0])
    return names


def quantize_int8(
    float_model: Path, photos: Sequence[Path], spec: Preprocessing, input_name: str
) -> bytes:
    """The float32 model at ``float_model``, statically quantized to int8."""
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "int8.onnx"
        quant_pre_process(str(float_model), str(prepared))
        quantize_static(
            prepared,
            quantized,
            PhotoReader(photos, spec, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=head_nodes(onnx.load(prepared, load_external_data=False)),
        )
        return quantized.read_bytes()


@dataclass(frozen=True)
class AgreementReport:
    samples: int
    top1_agreement: float
    top5_overlap: float
    max_abs_probability_diff: float
    min_top1_agreement: float
    passed: bool

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"{verdict} on {self.samples} held-out photos: top-1 agreement "
            f"{self.top1_agreement:.1%} (at least {self.min_top1_agreement:.1%} required), "
            f"top-{TOP_K} overlap {self.top5_overlap:.1%}, max |probability diff| "
            f"{self.max_abs_probability_diff:.3g}"
        )


def probabilities(model: Path | bytes, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in inputs])


def check_agreement(
    float_model: Path,
    int8_model: bytes,
    photos: Sequence[Path],
    spec: Preprocessing,
    min_top1_agreement: float,
) -> AgreementReport:
    """Compare the int8 model's answers with the float32 model's on ``photos``."""
    inputs = np.concatenate(list(model_inputs(photos, spec)))
    expected = probabilities(float_model, inputs)
    actual = probabilities(int8_model, inputs)
    expected_top = np.argsort(expected, axis=1)[:, ::-1][:, :TOP_K]
    actual_top = np.argsort(actual, axis=1)[:, ::-1][:, :TOP_K]
    top1 = float(np.mean(expected_top[:, 0] == actual_top[:, 0]))
    overlap = float(
        np.mean(
            [len(set(e) & set(a)) / TOP_K for e, a in zip(expected_top, actual_top, strict=True)]
        )
    )
    return AgreementReport(
        samples=len(inputs),
        top1_agreement=top1,
        top5_overlap=overlap,
        max_abs_probability_diff=float(np.max(np.abs(expected - actual))),
        min_top1_agreement=min_top1_agreement,
        passed=top1 >= min_top1_agreement,
    )
