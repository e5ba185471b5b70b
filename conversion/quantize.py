"""Static int8 quantization of the float32 ONNX model, with its agreement proven.

onnxruntime's static quantization in QDQ form, per-channel int8 weights and
uint8 activations, after ``quant_pre_process``. Activation ranges are
calibrated on real photos run through the app's own preprocessing; the
result is then compared with the float32 model on photos that calibration
never saw, on this CPU and, under qemu-user, as an AVX2 CPU and as an ARM64 one.

Why 7-bit weights by default (``reduce_range``): on x86 CPUs with AVX2 or
AVX-512 but without VNNI, ONNX Runtime multiplies uint8 by int8 with
``vpmaddubsw``, which sums pairs of products into 16 bits and saturates
when 8-bit weights meet large activations; 7-bit weights keep every pair
sum within range, so the model answers alike on every CPU. Full 8-bit
weights (``--int8-scheme vnni``) are kept for CPUs with VNNI.

The classifier head (the dense layer and softmax) stays float32: quantized,
its output would hold 256 levels, so near classes would tie and swap ranks,
while it costs 2% of the compute. The feature map a heatmap is made of stays
a float32 output (its values dequantized).

Before quantizing, each stride-1 average pooling that feeds a 1x1
convolution alone is moved after it (``pool_after_projection``): both are
linear, so the float32 answer is the same, but ONNX Runtime's int8 average
pooling is slow (15-20% of InceptionV3's int8 time, against 2% for float32's)
and after the projection it pools 4 to 10 times fewer channels.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from classifier.cpu import CpuFeatures
from classifier.metadata import Preprocessing
from classifier.model import softmax
from classifier.options import TOP_K
from classifier.preprocess import ImageError, preprocess
from conversion.checks import verdict
from conversion.emulation import HASWELL, EmulatedCpu, emulated_probabilities
from conversion.errors import CalibrationError
from conversion.onnx_runner import Runner

log = logging.getLogger(__name__)

HEAD_OPERATORS = {"Softmax", "MatMul", "Gemm", "Add", "Squeeze", "Reshape", "Flatten"}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Int8Scheme:
    """One way to quantize, and the CPUs whose answers it is meant to hold on."""

    name: str
    activations: QuantType
    weights: QuantType
    reduce_range: bool
    """7-bit weights: no pair of uint8 x int8 products can overflow 16 bits."""
    portable: bool
    """Meant for every CPU, so the converter checks it as an AVX2 CPU too."""
    cpus: str
    per_channel: bool = True
    operators: tuple[str, ...] = ()
    """Operator types to quantize; empty: every one onnxruntime can."""

    def describe(self) -> dict[str, Any]:
        bits = 7 if self.reduce_range else 8
        return {
            "scheme": self.name,
            "format": "QDQ",
            "weights": f"{self.weights.name}, {bits}-bit, "
            + ("per channel" if self.per_channel else "per tensor"),
            "activations": self.activations.name,
            "operators": ", ".join(self.operators) or "all that onnxruntime quantizes",
            "calibration_method": "MinMax",
            "float32": "classifier head (dense layer and softmax)",
            "graph": "stride-1 average pooling moved after the 1x1 convolution it feeds",
            "for_cpus": self.cpus,
        }


PORTABLE = Int8Scheme(
    "portable",
    QuantType.QUInt8,
    QuantType.QInt8,
    reduce_range=True,
    portable=True,
    cpus="every x86-64 CPU: 7-bit weights cannot saturate onnxruntime's AVX2 and AVX-512 kernels",
)
VNNI = Int8Scheme(
    "vnni",
    QuantType.QUInt8,
    QuantType.QInt8,
    reduce_range=False,
    portable=False,
    cpus="x86-64 CPUs with VNNI only, where it is a little closer to float32: on AVX2 or "
    "AVX-512 without VNNI its 8-bit weights saturate and answers go wrong",
)
SCHEMES = {scheme.name: scheme for scheme in (PORTABLE, VNNI)}


@dataclass(frozen=True)
class PhotoSplit:
    """Photos for calibration and the disjoint photos the result is checked on."""

    calibration: list[Path]
    verification: list[Path]

    def describe(self) -> dict[str, Any]:
        """The calibration set's size and checksum, for the metadata."""
        digest = hashlib.sha256()
        for photo in self.calibration:
            digest.update(photo.name.encode() + b"\0" + photo.read_bytes())
        return {
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


def pool_after_projection(model: onnx.ModelProto) -> int:
    """Move each stride-1 ``AveragePool`` after the 1x1 ``Conv`` that alone reads it.

    ``conv(pool(x)) == pool(conv(x))`` here: a 1x1 convolution mixes channels
    at each position, and a pooling that excludes padding averages positions
    with weights summing to one, so the bias passes through unchanged. Returns
    how many pairs were moved; the graph stays topologically sorted.
    """
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    kernels = {weights.name: list(weights.dims[2:]) for weights in graph.initializer}
    nodes = list(graph.node)
    moved = 0
    for pool in [node for node in nodes if node.op_type == "AveragePool"]:
        [conv, *others] = readers.get(pool.output[0], [None])
        if others or conv is None or conv.op_type != "Conv" or conv.input[0] != pool.output[0]:
            continue
        pooling, projection = _attributes(pool), _attributes(conv)
        if (
            pooling.get("count_include_pad", 0)
            or set(pooling.get("strides", [1])) != {1}
            or projection.get("kernel_shape", kernels.get(conv.input[1])) != [1, 1]
            or projection.get("group", 1) != 1
            or set(projection.get("strides", [1])) != {1}
            or set(projection.get("pads", [0])) != {0}
        ):
            continue
        # x -> pool -> pooled -> conv -> out   becomes   x -> conv -> pooled -> pool -> out
        pooled, out = pool.output[0], conv.output[0]
        conv.input[0], conv.output[0] = pool.input[0], pooled
        pool.input[0], pool.output[0] = pooled, out
        first, second = nodes.index(pool), nodes.index(conv)
        nodes[first], nodes[second] = conv, pool
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.value_info[:]  # shapes of the moved tensors changed: inferred again
    return moved


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def quantize_int8(
    float_model: Path,
    photos: Sequence[Path],
    spec: Preprocessing,
    input_name: str,
    scheme: Int8Scheme = PORTABLE,
) -> bytes:
    """The float32 model at ``float_model``, statically quantized by ``scheme``."""
    with tempfile.TemporaryDirectory() as work:
        reordered = Path(work) / "reordered.onnx"
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "int8.onnx"
        model = onnx.load(float_model)
        log.info("Moved %d average poolings after their projection.", pool_after_projection(model))
        onnx.save(model, reordered)
        quant_pre_process(str(reordered), str(prepared))
        quantize_static(
            prepared,
            quantized,
            PhotoReader(photos, spec, input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(scheme.operators) or None,
            per_channel=scheme.per_channel,
            reduce_range=scheme.reduce_range,
            activation_type=scheme.activations,
            weight_type=scheme.weights,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=head_nodes(onnx.load(prepared, load_external_data=False)),
        )
        return quantized.read_bytes()


@dataclass(frozen=True)
class AgreementReport:
    """How one CPU's int8 answers compare with float32's on the same photos."""

    samples: int
    top1_agreement: float
    top5_overlap: float
    max_abs_probability_diff: float
    min_top1_agreement: float
    passed: bool

    def summary(self) -> str:
        return (
            f"{verdict(self.passed)} on {self.samples} held-out photos: top-1 agreement "
            f"{self.top1_agreement:.1%} (at least {self.min_top1_agreement:.1%} required), "
            f"top-{TOP_K} overlap {self.top5_overlap:.1%}, max |probability diff| "
            f"{self.max_abs_probability_diff:.3g}"
        )


def compare(expected: np.ndarray, actual: np.ndarray, min_top1_agreement: float) -> AgreementReport:
    """Compare int8 probabilities ``actual`` with float32's ``expected``, row by row."""
    k = min(TOP_K, expected.shape[1])  # a user's model may have fewer classes
    expected_top = np.argsort(expected, axis=1)[:, ::-1][:, :k]
    actual_top = np.argsort(actual, axis=1)[:, ::-1][:, :k]
    top1 = float(np.mean(expected_top[:, 0] == actual_top[:, 0]))
    overlap = float(
        np.mean([len(set(e) & set(a)) / k for e, a in zip(expected_top, actual_top, strict=True)])
    )
    return AgreementReport(
        samples=len(expected),
        top1_agreement=top1,
        top5_overlap=overlap,
        max_abs_probability_diff=float(np.max(np.abs(expected - actual))),
        min_top1_agreement=min_top1_agreement,
        passed=top1 >= min_top1_agreement,
    )


def probabilities(model: Path | bytes, inputs: np.ndarray) -> np.ndarray:
    return Runner(model).row_by_row(inputs)


@dataclass(frozen=True)
class CpuCheck:
    """The agreement measured on one CPU class, and how that CPU was had."""

    cpu_class: str
    measured_on: str
    instruction_sets: list[str]
    agreement: AgreementReport
    cpu_difference: float | None = None
    """Largest probability difference from this machine's int8 answers (emulated only)."""
    max_cpu_difference: float | None = None

    @property
    def passed(self) -> bool:
        return self.agreement.passed and (
            self.cpu_difference is None or self.cpu_difference <= self.max_cpu_difference
        )

    def summary(self) -> str:
        text = f"{self.cpu_class}, {self.measured_on}: {self.agreement.summary()}"
        if self.cpu_difference is not None:
            verdict = "within" if self.cpu_difference <= self.max_cpu_difference else "BEYOND"
            text += (
                f"; max |probability diff| from this machine's int8 {self.cpu_difference:.3g} "
                f"({verdict} {self.max_cpu_difference:g})"
            )
        return text

    def describe(self) -> dict[str, Any]:
        return {
            "cpu_class": self.cpu_class,
            "measured_on": self.measured_on,
            "instruction_sets": self.instruction_sets,
            **asdict(self.agreement),
            "cpu_difference": self.cpu_difference,
            "max_cpu_difference": self.max_cpu_difference,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Int8Verification:
    """The int8 model's agreement with float32 on every CPU class it was checked on."""

    checks: list[CpuCheck]
    note: str = ""
    """Why a CPU class that should have been checked was not."""

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def summary(self) -> str:
        return "; ".join([check.summary() for check in self.checks] + [self.note] * bool(self.note))

    def describe(self) -> dict[str, Any]:
        """For the metadata: this machine's figures on top (as before), every CPU's below."""
        return {
            "against": "float32 ONNX",
            **asdict(self.checks[0].agreement),
            "passed": self.passed,
            "cpus": [check.describe() for check in self.checks],
            **({"note": self.note} if self.note else {}),
        }


class Verifier:
    """Checks an int8 model against float32 on held-out photos, on several CPUs.

    The float32 answers are computed once, on this machine: float32 kernels
    do not saturate, and emulating them would cost minutes.
    """

    def __init__(
        self,
        float_model: Path,
        photos: Sequence[Path],
        spec: Preprocessing,
        min_top1_agreement: float,
        scores: str = "probabilities",
    ) -> None:
        self.inputs = np.concatenate(list(model_inputs(photos, spec)))
        # A model that outputs logits is compared on the probabilities it serves.
        self._normalize = softmax if scores == "logits" else np.asarray
        self.expected = self._normalize(probabilities(float_model, self.inputs))
        self.min_top1_agreement = min_top1_agreement

    def on_this_machine(self, int8_model: Path | bytes) -> tuple[CpuCheck, np.ndarray]:
        """The check here, and the int8 answers it was made on."""
        actual = self._normalize(probabilities(int8_model, self.inputs))
        features = CpuFeatures.detect()
        check = CpuCheck(
            features.cpu_class,
            "this machine",
            features.instruction_sets,
            compare(self.expected, actual, self.min_top1_agreement),
        )
        return check, actual

    def emulated(
        self,
        int8_model: Path | bytes,
        native: np.ndarray,
        photos: int,
        max_cpu_difference: float,
        cpu: EmulatedCpu = HASWELL,
    ) -> CpuCheck:
        """The check as ``cpu`` under qemu, on the first ``photos`` held-out photos;
        its answers must also stay within ``max_cpu_difference`` of ``native``."""
        actual = self._normalize(emulated_probabilities(int8_model, self.inputs[:photos], cpu))
        return CpuCheck(
            cpu.features.cpu_class,
            cpu.command,
            cpu.features.instruction_sets,
            compare(self.expected[:photos], actual, self.min_top1_agreement),
            cpu_difference=float(np.max(np.abs(actual - native[:photos]))),
            max_cpu_difference=max_cpu_difference,
        )
