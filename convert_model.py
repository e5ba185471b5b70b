"""Convert a Keras image classifier to a verified ONNX model in models/.

The model is one of keras.applications' ImageNet classifiers (InceptionV3 by
default) or your own trained .keras file with its labels. Run once, offline,
on a developer's machine; commit the result. With ``--quantize int8`` it also
makes a verified int8 model beside it. See --help.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Keep TensorFlow's C++ start-up chatter off the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from classifier.assets import DEFAULT_MODEL_PATH, EXAMPLE_PHOTOS, LABELS
from classifier.errors import ClassifierError
from classifier.labels import LabelsError, read_labels
from classifier.metadata import NORMALIZATIONS, Preprocessing
from classifier.model import ModelError, load_metadata
from conversion.artifacts import OutputError, check_writable, publish, write_atomic
from conversion.export import DEFAULT_OPSET
from conversion.keras_model import (
    DEFAULT_FAMILY,
    FAMILIES,
    MODEL_SUFFIXES,
    UnservableModelError,
    WeightsError,
    WeightsSource,
    describe_scaling,
    file_stem,
    one_line,
)
from conversion.metadata import int8_metadata, model_metadata
from conversion.quantize import SCHEMES, CalibrationError
from conversion.verify import Tolerance

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_EMULATED_PHOTOS = 8
DEFAULT_MAX_CPU_DIFFERENCE = 0.01
NO_HEATMAP = (
    "no heatmap: the model does not end in global average pooling and a dense layer, "
    "so it gets no class activation maps (the metadata says so)"
)


class VerificationError(ClassifierError):
    """A model does not answer as its reference does; nothing was written."""

    exit_code = 1


class PreprocessingError(ClassifierError):
    """The model does not scale its pixels itself and --preprocessing is missing."""

    exit_code = 2


class DamagedModelError(ClassifierError):
    """The float32 model to quantize is missing or damaged."""

    exit_code = 6


class UnfitLabelsError(ClassifierError):
    """The labels do not fit the model."""

    exit_code = 8


REFUSALS: tuple[type[ClassifierError], ...] = (
    VerificationError,
    PreprocessingError,
    WeightsError,
    OutputError,
    CalibrationError,
    DamagedModelError,
    UnservableModelError,
    UnfitLabelsError,
)
"""The converter's errors, for --help; each carries its own exit code."""


def exit_codes() -> str:
    """``--help``'s list of exit codes, from the error classes themselves."""
    meanings = {0: "written and verified", 2: "bad arguments"}
    for error in REFUSALS:
        meaning = (error.__doc__ or "").split(";")[0].rstrip(".")
        meanings.setdefault(error.exit_code, meaning[:1].lower() + meaning[1:])
    return "; ".join(f"{code} {meaning}" for code, meaning in sorted(meanings.items()))


def is_keras_file(model: str) -> bool:
    """``--model`` names a file (a user's model), not a keras.applications family."""
    return model.lower().endswith(MODEL_SUFFIXES) or Path(model).exists()


def input_size(text: str) -> tuple[int, int]:
    """``224`` -> (224, 224); ``240x320`` -> (240, 320): height x width."""
    height, _, width = text.lower().partition("x")
    try:
        size = (int(height), int(width or height))
    except ValueError:
        size = (0, 0)
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, got {text!r}")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Exit codes: {exit_codes()}.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_FAMILY,
        metavar="NAME|PATH",
        help=f"a keras.applications classifier ({DEFAULT_FAMILY}, the default; any of "
        f"{', '.join(sorted(FAMILIES))}) or the PATH of your own trained model: a .keras "
        "file, or a Keras 2 full-model .h5 that Keras 3 can still load",
    )
    parser.add_argument(
        "--weights",
        help="for keras.applications models: 'imagenet' (the default: Keras' download "
        "and cache, honouring KERAS_HOME), 'random' (seeded random weights, for offline "
        "tests), or the PATH of a Keras weights file (Keras' published .h5 or a Keras 3 "
        ".weights.h5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random (0)")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="the .onnx file to write; its metadata .json and the labels go beside "
        "it (models/inception_v3.onnx for InceptionV3, models/NAME.onnx otherwise)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (%(default)s)")
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="PATH",
        help="the class names, shipped beside the model: one per line, a JSON list, or "
        "a Keras class index (the default for keras.applications models: "
        "models/imagenet_class_index.json); required for a .keras model",
    )
    parser.add_argument(
        "--preprocessing",
        choices=list(NORMALIZATIONS),
        help="for your own model: how its training images were scaled, as in "
        "keras.applications' preprocess_input: tf (x/127.5 - 1), caffe (BGR minus "
        "ImageNet's mean), torch (x/255, ImageNet's mean and std) or none (raw 0..255, "
        "the model scales them itself). Default: none where the model starts with a "
        "Rescaling or Normalization layer (also inside a nested first block); "
        "required otherwise",
    )
    parser.add_argument(
        "--input-size",
        type=input_size,
        metavar="SIZE",
        help="the image size, SIZE or HEIGHTxWIDTH, for a model that accepts any size",
    )
    parser.add_argument(
        "--name", help="the name the page shows (the model's name, or the .keras file's stem)"
    )
    parser.add_argument(
        "--photos",
        type=Path,
        nargs="+",
        default=EXAMPLE_PHOTOS,
        metavar="PHOTO",
        help="real photos to verify on (examples/*.png); deterministic noise is always added",
    )
    parser.add_argument(
        "--logits-rtol",
        type=float,
        default=Tolerance.logits_rtol,
        metavar="R",
        help="largest logit difference allowed, relative to the largest logit (%(default)s)",
    )
    parser.add_argument(
        "--probabilities-atol",
        type=float,
        default=Tolerance.probabilities_atol,
        metavar="A",
        help="largest probability difference allowed (%(default)s)",
    )
    quantization = parser.add_argument_group(
        "int8 quantization",
        "Quantize the float32 model at --output (converting it first if it is not "
        "there) to an int8 model beside it, e.g. models/inception_v3.int8.onnx.",
    )
    quantization.add_argument("--quantize", choices=["int8"], help="also write an int8 model")
    quantization.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="folder of real photos to calibrate on (required with --quantize)",
    )
    quantization.add_argument(
        "--verification",
        type=Path,
        metavar="DIR",
        help="folder of photos to verify on; without it, every other calibration "
        "photo is held out of calibration and verified on",
    )
    quantization.add_argument(
        "--min-top1-agreement",
        type=float,
        default=DEFAULT_MIN_TOP1_AGREEMENT,
        metavar="SHARE",
        help="refuse an int8 model whose top-1 class agrees with float32's on a "
        "smaller share of the verification photos, on any CPU checked (%(default)s)",
    )
    quantization.add_argument(
        "--int8-scheme",
        choices=sorted(SCHEMES),
        default="portable",
        help="; ".join(f"{name}: for {scheme.cpus}" for name, scheme in SCHEMES.items())
        + " (%(default)s)",
    )
    quantization.add_argument(
        "--emulated-photos",
        type=int,
        default=DEFAULT_EMULATED_PHOTOS,
        metavar="N",
        help="verification photos also run as an AVX2 CPU without VNNI under "
        "qemu-x86_64 -cpu Haswell, when installed, ~10 s each, and as an ARM64 CPU "
        "under qemu-aarch64 -cpu neoverse-n1, where `make arm64-root` prepared it, "
        "~3 s each (%(default)s)",
    )
    quantization.add_argument(
        "--max-cpu-difference",
        type=float,
        default=DEFAULT_MAX_CPU_DIFFERENCE,
        metavar="P",
        help="refuse an int8 model whose probabilities as an emulated CPU differ "
        "from this machine's by more than P (%(default)s)",
    )
    args = parser.parse_args(argv)
    if is_keras_file(args.model):
        check_keras_file_args(parser, args)
    else:
        check_application_args(parser, args)
    if args.output is None:
        stem = Path(args.model).stem if is_keras_file(args.model) else file_stem(args.model)
        args.output = DEFAULT_MODEL_PATH.parent / f"{stem}.onnx"
    if args.output.suffix != ".onnx":
        parser.error(f"--output must end in .onnx, got {args.output}")
    if args.emulated_photos < 1:
        parser.error("--emulated-photos must be at least 1")
    if args.quantize and args.calibration is None:
        parser.error("--quantize int8 needs --calibration DIR, a folder of real photos")
    if not args.labels.is_file():
        parser.error(f"labels file {args.labels} not found")
    return args


def check_keras_file_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not Path(args.model).is_file():
        parser.error(f"model file {args.model} not found")
    if args.labels is None:
        parser.error("your own model needs --labels PATH: its class names, one per line")
    if args.weights is not None:
        parser.error("--weights is for keras.applications models; a model file holds its own")


def check_application_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.model not in FAMILIES:
        parser.error(
            f"unknown model {args.model!r}: give the path of a .keras file or one of "
            f"keras.applications' classifiers: {', '.join(sorted(FAMILIES))}"
        )
    if args.preprocessing is not None:
        parser.error(f"--preprocessing is for .keras models; {args.model} has its own")
    args.weights = args.weights or "imagenet"
    args.labels = args.labels or LABELS


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
    if is_keras_file(args.model):
        weights = WeightsSource("file", path=Path(args.model))
        with step(f"Loading {args.model}"):
            keras_model = load_keras_file(Path(args.model))
        scaling = in_model_scaling(keras_model)
        name, architecture = Path(args.model).stem, keras_model.name
        mode = choose_preprocessing(args.preprocessing, scaling)
    else:
        weights = WeightsSource.parse(args.weights, args.seed)
        with step(f"Building {args.model} with {args.weights} weights"):
            keras_model = build_model(weights, args.model)
        scaling = in_model_scaling(keras_model)
        name, architecture, mode = args.model, args.model, FAMILIES[args.model].mode
    shape = interface(keras_model, args.input_size)
    check_labels(args.labels, shape.classes)
    preprocessing = Preprocessing.for_mode(mode, shape.height, shape.width)
    with step(f"Converting to ONNX (opset {args.opset})"):
        proto = to_onnx(keras_model, args.opset, shape)
        model_bytes = proto.SerializeToString()
    with step("Verifying ONNX against Keras"):
        inputs = verification_inputs(args.photos, preprocessing)
        tolerance = Tolerance(args.logits_rtol, args.probabilities_atol)
        report = check_parity(keras_model, proto, inputs, tolerance)
        print(f"  {report.summary()}")
        heatmap = check_heatmap(keras_model, proto, inputs, tolerance)
        print(f"  {heatmap.summary() if heatmap else NO_HEATMAP}")
    for check in (report, heatmap):
        if check is not None and not check.passed:
            raise VerificationError(
                f"The ONNX model does not match Keras ({check.summary()}); nothing was written."
            )
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
    try:
        labels = read_labels(path)
    except LabelsError as error:
        raise UnfitLabelsError(str(error)) from error
    if len(labels) != classes:
        raise UnfitLabelsError(
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
    from conversion.emulation import PORTABLE_CHECKS, EmulationError, unavailable
    from conversion.quantize import Int8Verification, Verifier, quantize_int8, split_photos

    try:
        float_metadata = load_metadata(args.output)
    except ModelError as error:
        raise DamagedModelError(str(error)) from error
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
    if not verification.passed:
        raise VerificationError(
            f"The int8 model disagrees with float32 ({verification.summary()}); "
            "nothing was written."
        )
    if note:
        print(f"  NOTE {note}")
    with step(f"Writing {output}"):
        calibration = {**scheme.describe(), **split.describe()}
        metadata = int8_metadata(float_metadata, output, model_bytes, calibration, verification)
        labels = (args.output.parent / float_metadata.labels_file).read_bytes()
        publish(output, model_bytes, metadata, labels)
    print(f"Wrote {output} ({len(model_bytes) / 1e6:.1f} MB, sha256 {metadata.sha256[:12]}...)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not (args.quantize and args.output.is_file()):
            convert(args)
        if args.quantize:
            quantize(args)
    except ClassifierError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
