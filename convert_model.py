"""Convert Keras' InceptionV3 to a verified ONNX model in models/.

Run once, offline, on a developer's machine; commit the result. See --help.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Keep TensorFlow's C++ start-up chatter off the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from classifier.metadata import Preprocessing
from conversion.artifacts import OutputError, check_writable, publish
from conversion.export import DEFAULT_OPSET
from conversion.keras_model import WeightsError, WeightsSource
from conversion.metadata import model_metadata
from conversion.verify import Tolerance

ROOT = Path(__file__).resolve().parent
DEFAULT_OUTPUT = Path("models/inception_v3.onnx")
DEFAULT_LABELS = ROOT / "models" / "imagenet_class_index.json"
DEFAULT_PHOTOS = sorted((ROOT / "examples").glob("*.png"))

EXIT_VERIFICATION_FAILED = 1
EXIT_WEIGHTS = 3
EXIT_OUTPUT = 4


class VerificationError(Exception):
    """The ONNX model does not answer as Keras does; nothing was written."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=(
            "Exit codes: 0 written and verified; 1 verification failed (nothing "
            "written); 2 bad arguments; 3 weights unavailable or invalid; "
            "4 output folder not writable."
        ),
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras' download and cache, honouring KERAS_HOME), "
        "'random' (seeded random weights, for offline tests), or the PATH of a "
        "Keras weights file (Keras' published .h5 or a Keras 3 .weights.h5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="the .onnx file to write; its metadata .json and the labels go beside it",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--labels",
        type=Path,
        default=DEFAULT_LABELS,
        help="Keras class index JSON to ship beside the model",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        nargs="+",
        default=DEFAULT_PHOTOS,
        help="real photos to verify on (deterministic noise is always added)",
    )
    parser.add_argument(
        "--logits-rtol",
        type=float,
        default=Tolerance.logits_rtol,
        help="largest logit difference allowed, relative to the largest logit",
    )
    parser.add_argument(
        "--probabilities-atol",
        type=float,
        default=Tolerance.probabilities_atol,
        help="largest probability difference allowed",
    )
    args = parser.parse_args(argv)
    if args.output.suffix != ".onnx":
        parser.error(f"--output must end in .onnx, got {args.output}")
    if not args.labels.is_file():
        parser.error(f"labels file {args.labels} not found")
    return args


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a long step's start and its time, so the user sees progress."""
    print(f"{title} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"{title}: done in {time.perf_counter() - start:.1f} s", flush=True)


def convert(args: argparse.Namespace) -> None:
    """Build, convert, verify, then write; nothing is written unless verified."""
    from conversion.export import to_onnx
    from conversion.keras_model import build_model
    from conversion.verify import check_parity, verification_inputs

    check_writable(args.output.parent)
    weights = WeightsSource.parse(args.weights, args.seed)
    preprocessing = Preprocessing()
    with step(f"Building InceptionV3 with {args.weights} weights"):
        keras_model = build_model(weights)
    with step(f"Converting to ONNX (opset {args.opset})"):
        proto = to_onnx(keras_model, args.opset)
        model_bytes = proto.SerializeToString()
    with step("Verifying ONNX against Keras"):
        inputs = verification_inputs(args.photos, preprocessing)
        tolerance = Tolerance(args.logits_rtol, args.probabilities_atol)
        report = check_parity(keras_model, proto, inputs, tolerance)
        print(f"  {report.summary()}")
    if not report.passed:
        raise VerificationError(
            f"The ONNX model does not match Keras ({report.summary()}); nothing was written."
        )
    with step(f"Writing {args.output}"):
        metadata = model_metadata(
            args.output, model_bytes, weights, preprocessing, args.labels.name, args.opset, report
        )
        publish(args.output, model_bytes, metadata, args.labels.read_bytes())
    print(
        f"Wrote {args.output} ({len(model_bytes) / 1e6:.1f} MB, sha256 {metadata.sha256[:12]}...)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        convert(args)
    except VerificationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_VERIFICATION_FAILED
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_WEIGHTS
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_OUTPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
