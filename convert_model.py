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
from pathlib import Path

# TensorFlow's own log level; what its C++ code writes to stderr regardless goes to the
# log (conversion.native_stderr).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from classifier.assets import DEFAULT_MODEL_PATH, EXAMPLE_PHOTOS, LABELS
from classifier.errors import ClassifierError
from classifier.metadata import NORMALIZATIONS
from conversion.errors import exit_codes
from conversion.export import DEFAULT_OPSET
from conversion.keras_model import DEFAULT_FAMILY, FAMILIES, file_stem, one_line
from conversion.pipeline import convert, is_keras_file, quantize
from conversion.quantize import SCHEMES
from conversion.verify import Tolerance

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_EMULATED_PHOTOS = 8
DEFAULT_MAX_CPU_DIFFERENCE = 0.01


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
