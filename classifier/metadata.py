"""The metadata file that sits beside every converted model.

The converter writes it; the runtime reads everything it needs from it: the
input size and preprocessing, the labels, whether the model outputs
probabilities or logits, and the name to show. So any Keras image classifier
the converter accepts is served without code changes. It also pins the model
file by sha256, so a truncated or swapped model is caught before it is served.

The classes are pydantic dataclasses: the file is validated as it is read
(types, allowed values, required fields), and the converter builds, copies
(``dataclasses.replace``) and writes (``asdict``) them as plain dataclasses.
Fields the runtime does not know are ignored, so a newer converter's file
still loads; a new field is one line here, with a default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Any, Literal, NotRequired, Required  # pydantic needs these on 3.11

from pydantic import ConfigDict, PositiveInt, TypeAdapter, ValidationError, with_config
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict

FORMAT_VERSION = 2

Triple = tuple[float, float, float]
OPEN = ConfigDict(extra="allow")
"""For the converter's records: what they hold beyond the fields read here is kept."""


@with_config(OPEN)
class Weights(TypedDict):
    """Where the weights came from: Keras' ImageNet download, a seed, or a file."""

    source: Literal["imagenet", "random", "file"]
    seed: NotRequired[int]
    file: NotRequired[str]
    sha256: NotRequired[str]


@with_config(OPEN)
class CpuCheck(TypedDict, total=False):
    """An int8 model's agreement with float32 on one CPU class."""

    cpu_class: Required[str]
    passed: Required[bool]
    measured_on: str
    instruction_sets: list[str]


@with_config(OPEN)
class Verification(TypedDict, total=False):
    """How the model was checked against its reference (Keras, or float32 for int8)."""

    against: str
    passed: bool
    top1_agreement: float
    max_abs_probability_diff: float
    cpus: list[CpuCheck]
    note: str


@dataclass(frozen=True)
class Normalization:
    """One of Keras' ``preprocess_input`` modes, as per-channel numbers.

    A 0..255 channel value ``v`` becomes ``(v - mean) / std``, after the
    channels are put in ``channel_order``. ``mean`` and ``std`` are in 0..255
    units, so ``torch``'s ``(v / 255 - m) / s`` is ``mean = 255 m``, ``std = 255 s``.
    """

    channel_order: str
    mean: Triple
    std: Triple


# Keras' preprocess_input modes; conversion.keras_model.FAMILIES says which model uses which.
NORMALIZATIONS: dict[str, Normalization] = {
    # x / 127.5 - 1
    "tf": Normalization("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    # RGB -> BGR, minus ImageNet's mean, no scaling
    "caffe": Normalization("BGR", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # x / 255, then ImageNet's mean and std
    "torch": Normalization("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # raw 0..255 pixels: the model preprocesses them itself
    "none": Normalization("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor.

    The image is resized to ``height`` x ``width`` with Pillow's ``resize``
    method, its channels put in ``channel_order``, then each 0..255 value
    ``v`` of channel ``c`` becomes ``(v - mean[c]) / std[c]``. ``mode`` names
    the Keras ``preprocess_input`` mode the numbers come from; the runtime
    uses the numbers. The defaults are the default model's; the runtime
    always reads the spec from the model's metadata.
    """

    height: PositiveInt = 299
    width: PositiveInt = 299
    resize: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bilinear"
    mode: str = "tf"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    mean: Triple = NORMALIZATIONS["tf"].mean
    std: Triple = NORMALIZATIONS["tf"].std
    layout: Literal["NHWC"] = "NHWC"

    @classmethod
    def for_mode(cls, mode: str, height: int, width: int) -> Preprocessing:
        """The spec for one of ``NORMALIZATIONS``' modes at the given input size."""
        if mode not in NORMALIZATIONS:
            raise ValueError(
                f"unknown preprocessing mode {mode!r}; choose one of {', '.join(NORMALIZATIONS)}"
            )
        normalization = NORMALIZATIONS[mode]
        return cls(
            height=height,
            width=width,
            mode=mode,
            channel_order=normalization.channel_order,
            mean=normalization.mean,
            std=normalization.std,
        )


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | None]
    dtype: str = "float32"


@dataclass(frozen=True)
class Heatmap:
    """Where a model's class activation maps come from (Zhou et al., CVPR 2016).

    The model ends in global average pooling and a dense layer, so its last
    feature map (``feature_map``, the pooling layer's input, a further ONNX
    output) times the dense kernel's column for a class says how much each
    region added to that class's score. ``kernel`` and ``bias`` name the dense
    layer's weights among the ONNX initializers (a zero bias is folded away by
    the converter: None); ``class_weights`` is the kernel again beside the
    model, one row per class (``.npy``, pinned by ``class_weights_sha256``),
    which the runtime maps from disk and reads a few rows of: ONNX Runtime
    does not hand its initializers out, and a class-maps node in the graph
    slowed every run, fetched or not.
    """

    feature_map: TensorSpec
    class_weights: str
    class_weights_sha256: str
    kernel: str
    bias: str | None = None
    verification: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to serve, trust and reproduce one model file.

    ``name`` is what the page and the API call the model; ``scores`` says
    whether its output is ``probabilities`` or ``logits`` (the runtime then
    applies the softmax); ``heatmap`` is None ("no heatmap") where the model
    does not end in global average pooling and a dense layer.
    """

    model_file: str
    sha256: str
    size_bytes: int
    name: str
    architecture: str
    precision: str
    weights: Weights
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    labels_file: str
    opset: int
    scores: Literal["probabilities", "logits"] = "probabilities"
    versions: dict[str, str] = field(default_factory=dict)
    verification: Verification = field(default_factory=Verification)
    calibration: dict[str, Any] = field(default_factory=dict)
    in_model_preprocessing: list[dict[str, Any]] = field(default_factory=list)
    """The Rescaling/Normalization layers the converter found at the model's start."""
    heatmap: Heatmap | None = None
    format_version: Literal[2] = FORMAT_VERSION

    @property
    def classes(self) -> int:
        return int(self.output.shape[-1])

    @property
    def weights_source(self) -> str:
        return self.weights["source"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """The metadata in ``text``; ``ValueError`` says, in one line, what is wrong."""
        try:
            return TypeAdapter(cls).validate_json(text)
        except ValidationError as error:
            problems = error.errors(include_url=False)
            where = ".".join(str(part) for part in problems[0]["loc"]) or "the file"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(f"{where}: {problems[0]['msg']}{more}") from None


def metadata_path_for(model_path: Path) -> Path:
    """``models/inception_v3.onnx`` -> ``models/inception_v3.json``."""
    return model_path.with_suffix(".json")


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
