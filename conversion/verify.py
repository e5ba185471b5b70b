"""Prove that an ONNX model answers as the Keras model it came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from classifier.metadata import Preprocessing
from classifier.model import softmax
from classifier.options import TOP_K
from classifier.preprocess import normalize, preprocess
from conversion.checks import verdict
from conversion.export import FEATURE_MAP_NAME, with_logits_output
from conversion.keras_model import CamHead, cam_head, head, output_scores, tapped, with_feature_map
from conversion.onnx_runner import Runner


@dataclass(frozen=True)
class Tolerance:
    """How far float32 ONNX may drift from float32 Keras.

    Logits are compared relative to their largest magnitude, so the same
    bound holds for confident models and for random weights, whose logits
    can be tiny.
    """

    logits_rtol: float = 1e-3
    probabilities_atol: float = 1e-4


@dataclass(frozen=True)
class ParityReport:
    samples: int
    max_abs_logit_diff: float
    max_abs_logit: float
    max_abs_probability_diff: float
    top1_agreement: float
    top5_agreement: float
    tolerance: Tolerance
    passed: bool

    def summary(self) -> str:
        return (
            f"{verdict(self.passed)} on {self.samples} inputs: max |logit diff| "
            f"{self.max_abs_logit_diff:.3g} (largest |logit| {self.max_abs_logit:.3g}, "
            f"relative tolerance {self.tolerance.logits_rtol:g}); max |probability diff| "
            f"{self.max_abs_probability_diff:.3g} (tolerance "
            f"{self.tolerance.probabilities_atol:g}); top-1 agreement "
            f"{self.top1_agreement:.0%}; top-{TOP_K} agreement {self.top5_agreement:.0%}"
        )


def verification_inputs(
    photos: Sequence[Path], spec: Preprocessing, noise_count: int = 2, seed: int = 0
) -> np.ndarray:
    """Real photos through the app's preprocessing, plus deterministic noise images."""
    arrays = [preprocess(photo, spec) for photo in photos]
    rng = np.random.default_rng(seed)
    shape = (spec.height, spec.width, 3)
    arrays += [normalize(rng.uniform(0.0, 255.0, shape), spec) for _ in range(noise_count)]
    return np.stack(arrays)


def keras_outputs(model: Any, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keras' probabilities and logits (the softmax's input) for ``inputs``.

    The logits are reached through ``tapped``, which works for Sequential
    models as for functional ones.
    """
    import keras

    if output_scores(model) == "logits":
        outputs = np.asarray(model(inputs, training=False))
        return softmax(outputs), outputs
    layer, _ = head(model)
    outputs, features, _ = (
        np.asarray(tensor) for tensor in tapped(model, [layer])(inputs, training=False)
    )
    if not isinstance(layer, keras.layers.Dense):  # a softmax layer of its own
        return outputs, features
    bias = np.asarray(layer.bias) if layer.use_bias else 0.0
    return outputs, features @ np.asarray(layer.kernel) + bias


def onnx_outputs(
    proto: onnx.ModelProto, inputs: np.ndarray, scores: str = "probabilities"
) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's probabilities and logits for ``inputs``."""
    if scores == "logits":
        logits = _run(proto, inputs, [proto.graph.output[0].name])[0]
        return softmax(logits), logits
    with_logits = with_logits_output(proto)
    names = [with_logits.graph.output[0].name, with_logits.graph.output[-1].name]
    probabilities, logits = _run(with_logits, inputs, names)
    return probabilities, logits


def _run(proto: onnx.ModelProto, inputs: np.ndarray, names: list[str]) -> list[np.ndarray]:
    return Runner(proto.SerializeToString())(inputs, names)


def compare(
    expected: tuple[np.ndarray, np.ndarray],
    actual: tuple[np.ndarray, np.ndarray],
    tolerance: Tolerance = Tolerance(),
) -> ParityReport:
    """Compare (probabilities, logits) pairs; near-ties may swap ranks."""
    expected_probabilities, expected_logits = expected
    actual_probabilities, actual_logits = actual
    logit_diff = float(np.max(np.abs(expected_logits - actual_logits)))
    logit_scale = float(np.max(np.abs(expected_logits)))
    logit_bound = tolerance.logits_rtol * max(logit_scale, float(np.finfo(np.float32).tiny))
    probability_diff = float(np.max(np.abs(expected_probabilities - actual_probabilities)))
    top1 = _rank_agreement(expected_logits, actual_logits, 1, logit_bound)
    top5 = _rank_agreement(expected_logits, actual_logits, TOP_K, logit_bound)
    passed = (
        logit_diff <= logit_bound
        and probability_diff <= tolerance.probabilities_atol
        and top5 == 1.0
    )
    return ParityReport(
        samples=len(expected_logits),
        max_abs_logit_diff=logit_diff,
        max_abs_logit=logit_scale,
        max_abs_probability_diff=probability_diff,
        top1_agreement=top1,
        top5_agreement=top5,
        tolerance=tolerance,
        passed=passed,
    )


def _rank_agreement(expected: np.ndarray, actual: np.ndarray, k: int, tie: float) -> float:
    """Share of rows whose top-k classes match rank by rank.

    Two classes whose expected logits are within ``tie`` of each other are a
    near-tie that float rounding may order either way, so they count as equal.
    """
    agreeing = 0
    for expected_row, actual_row in zip(expected, actual, strict=True):
        expected_top = np.argsort(expected_row)[::-1][:k]
        actual_top = np.argsort(actual_row)[::-1][:k]
        agreeing += all(
            abs(expected_row[e] - expected_row[a]) <= tie
            for e, a in zip(expected_top, actual_top, strict=True)
        )
    return agreeing / len(expected)


def check_parity(
    keras_model: Any,
    proto: onnx.ModelProto,
    inputs: np.ndarray,
    tolerance: Tolerance = Tolerance(),
) -> ParityReport:
    """Run both models on ``inputs`` and compare their answers."""
    expected = keras_outputs(keras_model, inputs)
    actual = onnx_outputs(proto, inputs, output_scores(keras_model))
    return compare(expected, actual, tolerance)


@dataclass(frozen=True)
class HeatmapReport:
    """How far ONNX's feature map and class maps are from Keras', each relative to
    its largest magnitude (as the logits are)."""

    samples: int
    max_abs_feature_diff: float
    max_abs_feature: float
    max_abs_class_map_diff: float
    max_abs_class_map: float
    rtol: float
    passed: bool

    def summary(self) -> str:
        return (
            f"heatmap {verdict(self.passed)} on {self.samples} inputs: max |feature map diff| "
            f"{self.max_abs_feature_diff:.3g} (largest {self.max_abs_feature:.3g}), max "
            f"|class map diff| {self.max_abs_class_map_diff:.3g} (largest "
            f"{self.max_abs_class_map:.3g}), relative tolerance {self.rtol:g}"
        )


def keras_class_maps(model: Any, cam: CamHead, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keras' last feature map for ``inputs`` and, from it, every class's activation
    map: the feature map times the dense kernel's column for that class."""
    _, features = with_feature_map(model, cam)(inputs, training=False)
    features = np.asarray(features)
    return features, features @ np.asarray(cam.dense.kernel)


def check_heatmap(
    keras_model: Any, proto: onnx.ModelProto, inputs: np.ndarray, tolerance: Tolerance = Tolerance()
) -> HeatmapReport | None:
    """Compare the ONNX model's feature map, and the class maps the runtime makes of
    it, with Keras'; None for a model without a heatmap."""
    cam = cam_head(keras_model)
    if cam is None:
        return None
    expected = keras_class_maps(keras_model, cam, inputs)
    features = _run(proto, inputs, [FEATURE_MAP_NAME])[0]
    # The runtime's maps: ONNX's feature map times the kernel (its class weights file).
    actual = (features, features @ np.asarray(cam.dense.kernel))
    (feature_diff, feature_scale), (map_diff, map_scale) = (
        (float(np.max(np.abs(e - a))), float(np.max(np.abs(e))))
        for e, a in zip(expected, actual, strict=True)
    )
    passed = all(
        diff <= tolerance.logits_rtol * max(scale, float(np.finfo(np.float32).tiny))
        for diff, scale in ((feature_diff, feature_scale), (map_diff, map_scale))
    )
    return HeatmapReport(
        samples=len(inputs),
        max_abs_feature_diff=feature_diff,
        max_abs_feature=feature_scale,
        max_abs_class_map_diff=map_diff,
        max_abs_class_map=map_scale,
        rtol=tolerance.logits_rtol,
        passed=passed,
    )
