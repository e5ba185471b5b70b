"""Assemble the metadata that the converter writes beside a model."""

from __future__ import annotations

from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import onnx

from classifier.metadata import Heatmap, ModelMetadata, Preprocessing, TensorSpec
from conversion.artifacts import sha256_of_bytes
from conversion.export import INPUT_NAME, heatmap_spec
from conversion.keras_model import Interface, WeightsSource, cam_head
from conversion.quantize import Int8Verification
from conversion.verify import HeatmapReport, ParityReport

TOOLCHAIN = ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "pillow")


def toolchain_versions() -> dict[str, str]:
    return {name: version(name) for name in TOOLCHAIN}


def model_metadata(
    model_path: Path,
    model_bytes: bytes,
    *,
    name: str,
    architecture: str,
    weights: WeightsSource,
    shape: Interface,
    preprocessing: Preprocessing,
    labels_file: str,
    opset: int,
    report: ParityReport,
    in_model_preprocessing: list[dict[str, Any]],
    heatmap: Heatmap | None = None,
) -> ModelMetadata:
    """``in_model_preprocessing``: the scaling layers found at the model's start."""
    return ModelMetadata(
        model_file=model_path.name,
        sha256=sha256_of_bytes(model_bytes),
        size_bytes=len(model_bytes),
        name=name,
        architecture=architecture,
        precision="float32",
        weights=weights.describe(),
        input=TensorSpec(INPUT_NAME, [None, shape.height, shape.width, 3]),
        output=TensorSpec(shape.scores, [None, shape.classes]),
        preprocessing=preprocessing,
        labels_file=labels_file,
        opset=opset,
        scores=shape.scores,
        versions=toolchain_versions(),
        verification={"against": "Keras", **asdict(report)},
        in_model_preprocessing=in_model_preprocessing,
        heatmap=heatmap,
    )


def heatmap_metadata(
    proto: onnx.ModelProto,
    keras_model: Any,
    report: HeatmapReport | None,
    weights_file: str,
    weights: bytes | None,
) -> Heatmap | None:
    """The ``heatmap`` block, with its verification against Keras; None: "no heatmap"."""
    spec = heatmap_spec(proto, cam_head(keras_model), weights_file, weights or b"")
    if spec is None or report is None:
        return None
    return replace(spec, verification={"against": "Keras", **asdict(report)})


def int8_metadata(
    float_metadata: ModelMetadata,
    model_path: Path,
    model_bytes: bytes,
    calibration: dict[str, Any],
    verification: Int8Verification,
) -> ModelMetadata:
    """The float32 model's metadata, restated for its int8 quantization, with its
    agreement per CPU class and the instruction sets each was measured with."""
    return replace(
        float_metadata,
        model_file=model_path.name,
        sha256=sha256_of_bytes(model_bytes),
        size_bytes=len(model_bytes),
        precision="int8",
        versions=toolchain_versions(),
        verification=verification.describe(),
        calibration=calibration,
    )
