"""The metadata file that sits beside every converted model.

The converter writes it; the runtime reads its input size, preprocessing and
labels from it, so a different Keras classifier can be served without code
changes. It also pins the model file by sha256, so a truncated or swapped
model is caught before it is served.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor.

    The image is resized to ``height`` x ``width`` with Pillow's ``resize``
    method, then each 0..255 channel value ``v`` becomes ``v * scale + offset``
    (Keras' ``inception_v3.preprocess_input``: ``v / 127.5 - 1``).
    """

    height: int = 299
    width: int = 299
    resize: str = "bilinear"
    scale: float = 1 / 127.5
    offset: float = -1.0
    channel_order: str = "RGB"
    layout: str = "NHWC"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | None]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to serve, trust and reproduce one model file."""

    model_file: str
    sha256: str
    size_bytes: int
    architecture: str
    precision: str
    weights: dict[str, Any]
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    labels_file: str
    opset: int
    versions: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def weights_source(self) -> str:
        return str(self.weights.get("source", "unknown"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported metadata format_version {data.get('format_version')!r}")
        data["input"] = TensorSpec(**data["input"])
        data["output"] = TensorSpec(**data["output"])
        data["preprocessing"] = Preprocessing(**data["preprocessing"])
        return cls(**data)


def metadata_path_for(model_path: Path) -> Path:
    """``models/inception_v3.onnx`` -> ``models/inception_v3.json``."""
    return model_path.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
