"""The converter's two pipelines: a Keras model to a verified float32 ONNX model, and
that model to a verified int8 one. ``convert_model.py`` parses the arguments.

Nothing is written unless it is verified; every refusal is a
``conversion.errors`` class carrying its exit code. TensorFlow's native
stderr goes to the log (``conversion.native_stderr``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from classifier.assets import LABELS
from classifier.labels import LabelsError, read_labels
from classifier.metadata import Preprocessing
from classifier.model import load_metadata
from conversion.artifacts import check_writable, publish, write_atomic
from conversion.checks import Check
from conversion.errors import EmulationError, PreprocessingError, VerificationError
from conversion.keras_model import FAMILIES, MODEL_SUFFIXES, WeightsSource, describe_scaling
from conversion.metadata import int8_metadata, model_metadata
from conversion.native_stderr import import_tensorflow, native_stderr_to_log
from conversion.quantize import SCHEMES
from conversion.verify import Tolerance

NO_HEATMAP = (
    "no heatmap: the model does not end in global average pooling and a dense layer, "
    "so it gets no class activation maps (the metadata says so)"
)


def is_keras_file(model: str) -> bool:
    """``--model`` names a file (a user's model), not a keras.applications family."""
    return model.lower().endswith(MODEL_SUFFIXES) or Path(model).exists()


def require(check: Check, what: str) -> None:
    """Refuse, writing nothing, where a check failed."""
    if not check.passed:
        raise VerificationError(f"{what} ({check.summary()}); nothing was written.")


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a long step's start and its time, so the user sees progress."""
    print(f"{title} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"{title}: done in {time.perf_counter() - start:.1f} s", flush=True)


def convert(args: argparse.Namespace) -> None:
    """Build, convert, verify, then write; nothing is written unless verified."""
    from conversion.export import class_weights, class_weights_file, to_onnx
    from conversion.keras_model import (
        build_model,
        cam_head,
        in_model_scaling,
        interface,
        load_keras_file,
    )
    from conversion.metadata import heatmap_metadata
    from conversion.verify import check_heatmap, check_parity, verification_inputs

    check_writable(args.output.parent)
    import_tensorflow()
    if is_keras_file(args.model):
        weights = WeightsSource("file", path=Path(args.model))
        with step(f"Loading {args.model}"), native_stderr_to_log():
            keras_model = load_keras_file(Path(args.model))
        scaling = in_model_scaling(keras_model)
        name, architecture = Path(args.model).stem, keras_model.name
        mode = choose_preprocessing(args.preprocessing, scaling)
    else:
        weights = WeightsSource.parse(args.weights, args.seed)
        with step(f"Building {args.model} with {args.weights} weights"), native_stderr_to_log():
            keras_model = build_model(weights, args.model)
        scaling = in_model_scaling(keras_model)
        name, architecture, mode = args.model, args.model, FAMILIES[args.model].mode
    shape = interface(keras_model, args.input_size)
    check_labels(args.labels, shape.classes)
    preprocessing = Preprocessing.for_mode(mode, shape.height, shape.width)
    with step(f"Converting to ONNX (opset {args.opset})"), native_stderr_to_log():
        proto = to_onnx(keras_model, args.opset, shape)
        model_bytes = proto.SerializeToString()
    with step("Verifying ONNX against Keras"):
        inputs = verification_inputs(args.photos, preprocessing)
        tolerance = Tolerance(args.logits_rtol, args.probabilities_atol)
        with native_stderr_to_log():
            report = check_parity(keras_model, proto, inputs, tolerance)
            heatmap = check_heatmap(keras_model, proto, inputs, tolerance)
        print(f"  {report.summary()}")
        print(f"  {heatmap.summary() if heatmap else NO_HEATMAP}")
    for check in (report, heatmap):
        if check is not None:
            require(check, "The ONNX model does not match Keras")
    with step(f"Writing {args.output}"):
        cam = cam_head(keras_model)
        weights_file = class_weights_file(args.output)
        weights_bytes = class_weights(cam) if heatmap else None
        metadata = model_metadata(
            args.output,
            model_bytes,
            name=args.name or name,
            architecture=architecture,
            weights=weights,
            shape=shape,
            preprocessing=preprocessing,
            labels_file=shipped_labels_name(args.labels, args.output),
            opset=args.opset,
            report=report,
            in_model_preprocessing=scaling,
            heatmap=heatmap_metadata(proto, keras_model, heatmap, weights_file, weights_bytes),
        )
        if weights_bytes is not None:  # before the metadata that vouches for it
            write_atomic(args.output.parent / weights_file, weights_bytes)
        publish(args.output, model_bytes, metadata, args.labels.read_bytes())
    print(
        f"Wrote {args.output} ({len(model_bytes) / 1e6:.1f} MB, sha256 {metadata.sha256[:12]}...)"
    )


def choose_preprocessing(given: str | None, scaling: list[dict[str, Any]]) -> str:
    """The preprocessing mode for a user's model: ``given``, or ``none`` where the
    model scales its pixels itself; warns where ``given`` would scale them twice."""
    if scaling and given not in (None, "none"):
        print(
            f"warning: the model scales its pixels itself ({describe_scaling(scaling)}), "
            f"so --preprocessing {given} scales them twice; leave it out unless the "
            "training images were scaled twice too.",
            file=sys.stderr,
        )
    if given is not None:
        return given
    if not scaling:
        raise PreprocessingError(
            "The model does not scale its pixels itself (no Rescaling or Normalization "
            "layer at its start): give --preprocessing tf|caffe|torch|none, how its "
            "training images were scaled."
        )
    print(
        f"  Preprocessing: none, the model scales its pixels itself ({describe_scaling(scaling)})"
    )
    return "none"


def check_labels(path: Path, classes: int) -> None:
    """Refuse labels that are not one for each of the model's classes."""
    labels = read_labels(path)
    if len(labels) != classes:
        raise LabelsError(
            f"Labels file {path} has {len(labels)} labels, but the model has {classes} "
            "classes: give one label per class, in the order of the model's outputs."
        )


def shipped_labels_name(labels: Path, output: Path) -> str:
    """ImageNet's class index ships under its own name, shared by every ImageNet
    model in the folder; other labels are named after their model."""
    if labels.resolve() == LABELS:
        return LABELS.name
    return f"{output.stem}.labels{labels.suffix}"


def quantize(args: argparse.Namespace) -> None:
    """Quantize the verified float32 model; nothing is written unless it agrees
    with float32 here and, for the portable scheme, as an AVX2 and an ARM64 CPU too."""
    from conversion.emulation import PORTABLE_CHECKS, unavailable
    from conversion.quantize import Int8Verification, Verifier, quantize_int8, split_photos

    float_metadata = load_metadata(args.output)  # ModelError: missing or damaged
    scheme = SCHEMES[args.int8_scheme]
    print(f"Quantizing {args.output} (weights: {float_metadata.weights_source})")
    spec = float_metadata.preprocessing
    split = split_photos(args.calibration, args.verification)
    output = args.output.with_suffix(".int8.onnx")
    with step(f"Calibrating on {len(split.calibration)} photos, quantizing ({scheme.name})"):
        model_bytes = quantize_int8(
            args.output, split.calibration, spec, float_metadata.input.name, scheme
        )
    verifier = Verifier(
        args.output, split.verification, spec, args.min_top1_agreement, float_metadata.scores
    )
    with step(f"Comparing int8 with float32 on {len(split.verification)} held-out photos"):
        native_check, native = verifier.on_this_machine(model_bytes)
        print(f"  {native_check.summary()}")
    checks, notes = [native_check], []
    if not scheme.portable:
        notes.append(f"not checked as other CPUs: the {scheme.name} scheme is for {scheme.cpus}")
    elif native_check.passed:
        photos = min(args.emulated_photos, len(split.verification))
        for cpu in PORTABLE_CHECKS:
            reason = unavailable(cpu)
            if reason is not None:
                notes.append(f"not checked as {cpu.description}: {reason}")
                continue
            with step(
                f"Comparing again as {cpu.description} ({cpu.command}, {photos} photos, slow)"
            ):
                try:
                    emulated = verifier.emulated(
                        model_bytes, native, photos, args.max_cpu_difference, cpu
                    )
                except EmulationError as error:
                    raise VerificationError(f"{error}; nothing was written.") from error
                print(f"  {emulated.summary()}")
            checks.append(emulated)
    note = "; ".join(notes)
    verification = Int8Verification(checks, note)
    require(verification, "The int8 model disagrees with float32")
    if note:
        print(f"  NOTE {note}")
    with step(f"Writing {output}"):
        calibration = {**scheme.describe(), **split.describe()}
        metadata = int8_metadata(float_metadata, output, model_bytes, calibration, verification)
        labels = (args.output.parent / float_metadata.labels_file).read_bytes()
        publish(output, model_bytes, metadata, labels)
    print(f"Wrote {output} ({len(model_bytes) / 1e6:.1f} MB, sha256 {metadata.sha256[:12]}...)")
