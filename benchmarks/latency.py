"""Latency in process: our Python API against Keras on the same weights, and the floor.

Both run in this one process, taking turns (A B C A B C ...) after warm-up,
so a shared machine's drift falls on all of them alike. Keras is timed two
ways: ``model.predict`` (what the original Keras app called) and a compiled
``tf.function`` (Keras at its fastest). The floor is InceptionV3's 5.71 G
multiply-adds at this machine's float32 matmul rate, measured here too.

With ``--int8-variants DIR`` it studies instead how to quantize the first
``--model`` (float32): each int8 variant, calibrated on half of DIR's photos,
is compared with float32 on the other half here and under ``qemu-x86_64``
as an AVX2 CPU (``-cpu Haswell``) and an SSE4.2 one (``-cpu Nehalem``), and
timed here against float32, taking turns. Emulated runs are slow and their
timings mean nothing, so only a few photos run there and no time is shown.

With ``--profile`` it says where each ``--model``'s time goes: ONNX Runtime's
own profiler over single-image runs, the kernels' time grouped by op type as
the session runs them (after its graph optimisations and QDQ fusions, so a
fused ``QLinearConv`` and a ``QuantizeLinear`` left on its own show apart).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType
from PIL import Image

from benchmarks.common import interleaved, keras_weights, milliseconds, models, options, report
from classifier.options import MB, TOP_K, AdmissionOptions
from conversion.emulation import HASWELL, NEHALEM, EmulatedCpu
from conversion.quantize import PORTABLE, VNNI
from tests.support.photos import CAT_PHOTO, IMAGENET_SAMPLE

MULTIPLY_ADDS = 5.71e9
"""InceptionV3's multiply-adds for one 299 x 299 image."""
TYPICAL_SIZE = (500, 375)
LARGE_SIZE = (6000, 4000)
BATCH = 8
STUDIED_SCHEMES = (
    PORTABLE,
    VNNI,
    replace(VNNI, name="u8u8", weights=QuantType.QUInt8, portable=True, cpus="every CPU"),
    replace(VNNI, name="s8s8", activations=QuantType.QInt8),
    replace(PORTABLE, name="portable-per-tensor", per_channel=False),
    replace(PORTABLE, name="portable-conv-only", operators=("Conv",)),
)
"""The converter's two schemes, and the other ways onnxruntime offers."""


def matmul_flops(n: int = 4096, repeats: int = 3) -> float:
    """This machine's float32 matmul rate (numpy ``@``, all cores): the best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool and page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def photos(folder: Path) -> dict[str, Path]:
    """A typical 500x375 JPEG (a real ImageNet photo where present) and a 6000x4000 one.

    The large one is the typical photo upscaled, as a phone camera's photo
    would arrive, so Pillow's JPEG draft mode has something to skip.
    """
    typical = next(
        (
            path
            for path in sorted(IMAGENET_SAMPLE.glob("*.JPEG"))
            if Image.open(path).size == TYPICAL_SIZE
        ),
        None,
    )
    if typical is None:
        typical = folder / "typical.jpg"
        with Image.open(CAT_PHOTO) as cat:
            cat.convert("RGB").resize(TYPICAL_SIZE, Image.Resampling.BICUBIC).save(
                typical, quality=90
            )
    large = folder / "large.jpg"
    with Image.open(typical) as image:
        image.convert("RGB").resize(LARGE_SIZE, Image.Resampling.BICUBIC).save(large, quality=90)
    return {"500x375": typical, "6000x4000": large}


def admitting_whole(photos: list[Path]) -> AdmissionOptions:
    """The app's admission, with a memory budget that lets each photo be decoded whole.

    "Decoded whole" times Keras' exact path on a 24-megapixel photo, which the
    app's budget refuses (about 380 MB); memory is ``benchmarks/memory.py``'s
    question, latency this one's.
    """
    from classifier.preprocess import decode_cost

    costs = []
    for photo in photos:
        with Image.open(photo) as image:
            costs.append(decode_cost(image, image))  # a PIL image: the exact path
    served = AdmissionOptions()
    budget_mb = max(served.memory_budget_mb, math.ceil(max(costs) / MB))
    return replace(served, memory_budget_mb=budget_mb)


def keras_model(model: Path, cache: dict[Any, Any]) -> Any:
    """Keras' InceptionV3 on the weights ``model`` was converted from (built once per weights)."""
    from conversion.keras_model import build_model

    weights = keras_weights(model)
    if weights not in cache:
        cache[weights] = build_model(weights)
    return cache[weights]


def keras_runners(model: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``model.predict`` and a compiled ``tf.function`` over a fixed input signature."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, 299, 299, 3], tf.float32)]
    compiled = tf.function(
        lambda batch: model(batch, training=False), input_signature=signature, jit_compile=False
    )
    return {
        "predict": lambda batch: model.predict(batch, verbose=0),
        "tf.function": lambda batch: compiled(tf.constant(batch)).numpy(),
    }


def keras_path(run: Callable[[np.ndarray], np.ndarray], photo: Path) -> Callable[[], list[int]]:
    """The original app's whole path: ``load_img``, ``preprocess_input``, run, top 5."""
    import keras

    def keras_classify() -> list[int]:
        image = keras.utils.load_img(photo, target_size=(299, 299), interpolation="bilinear")
        batch = keras.applications.inception_v3.preprocess_input(
            keras.utils.img_to_array(image)[np.newaxis]
        )
        return list(np.argsort(run(batch)[0])[::-1][:TOP_K])

    return keras_classify


def compare_with_keras(
    name: str, classifier: Any, keras: Any, photo: Path, repeats: int
) -> list[dict[str, Any]]:
    """Ours against both Keras runs: one image, a batch of 8, and the whole path."""
    runners = keras_runners(keras)
    single = classifier.preprocess(photo)[np.newaxis]
    batch = np.repeat(single, BATCH, axis=0)
    cases: dict[str, dict[str, Callable[[], object]]] = {
        "inference, 1 image": {
            "ours": lambda: classifier.predict(single),
            **{key: (lambda run=run: run(single)) for key, run in runners.items()},
        },
        f"inference, batch of {BATCH}": {
            "ours": lambda: classifier.predict(batch),
            **{key: (lambda run=run: run(batch)) for key, run in runners.items()},
        },
        "whole path, 500x375 JPEG": {
            "ours": lambda: classifier.classify(photo, TOP_K),
            **{key: keras_path(run, photo) for key, run in runners.items()},
        },
    }
    rows = []
    for case, calls in cases.items():
        times = {key: milliseconds(values) for key, values in interleaved(calls, repeats).items()}
        ours = times["ours"]["median_ms"]
        row: dict[str, Any] = {"model": name, "case": case}
        for key, figures in times.items():
            row[f"{key}_ms"] = figures["median_ms"]
            row[f"{key}_p95_ms"] = figures["p95_ms"]
        row["ours/predict"] = ours / times["predict"]["median_ms"]
        row["ours/tf.function"] = ours / times["tf.function"]["median_ms"]
        rows.append(row)
    return rows


def photo_path(
    name: str, classifier: Any, photo: Path, label: str, repeats: int
) -> list[dict[str, Any]]:
    """One photo's whole path beside inference alone, and preprocessing's share of it.

    As served (over 4 megapixels, a JPEG is decoded at reduced scale: Pillow's
    draft mode) and decoded whole (a PIL image takes Keras' exact path at any
    size), so the lever's effect shows.
    """
    from PIL import Image

    from classifier.preprocess import preprocess

    spec, limit = classifier.metadata.preprocessing, classifier.max_pixels
    single = classifier.preprocess(photo)[np.newaxis]
    sources = {"shrunk on load (served)": lambda: photo, "decoded whole": lambda: Image.open(photo)}
    calls: dict[str, Callable[[], object]] = {"inference": partial(classifier.predict, single)}
    for way, source in sources.items():
        calls[f"preprocess {way}"] = lambda source=source: preprocess(source(), spec, limit)
        calls[f"whole {way}"] = lambda source=source: classifier.classify(source(), TOP_K)
    medians = {
        key: statistics.median(values) * 1e3 for key, values in interleaved(calls, repeats).items()
    }
    return [
        {
            "model": name,
            "photo": label,
            "decode": way,
            "preprocess_ms": medians[f"preprocess {way}"],
            "inference_ms": medians["inference"],
            "whole_path_ms": medians[f"whole {way}"],
            "preprocess_share_%": 100 * medians[f"preprocess {way}"] / medians[f"whole {way}"],
        }
        for way in sources
    ]


def int8_variants(
    float_model: Path, photos: Path, repeats: int, emulated: dict[EmulatedCpu, int]
) -> list[dict[str, Any]]:
    """Each studied int8 variant: agreement here and emulated, size, latency ratio."""
    import onnxruntime as ort

    from classifier.model import load_metadata, session_options
    from classifier.options import SessionOptions
    from conversion.quantize import Verifier, quantize_int8, split_photos

    metadata = load_metadata(float_model)
    split = split_photos(photos)
    verifier = Verifier(float_model, split.verification, metadata.preprocessing, 0.99)
    rows: list[dict[str, Any]] = []
    paths = {"float32": float_model}
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as folder:
        for scheme in STUDIED_SCHEMES:
            path = paths[scheme.name] = Path(folder) / f"{scheme.name}.onnx"
            path.write_bytes(
                quantize_int8(
                    float_model,
                    split.calibration,
                    metadata.preprocessing,
                    metadata.input.name,
                    scheme,
                )
            )
            here, native = verifier.on_this_machine(path)
            row = {
                "variant": scheme.name,
                "weights": scheme.describe()["weights"],
                "MB": path.stat().st_size / 1e6,
                "top-1 here": _agreement(here.agreement),
                "max diff here": here.agreement.max_abs_probability_diff,
            }
            for cpu, count in emulated.items():
                check = verifier.emulated(path, native, count, 0.01, cpu)
                row[f"top-1 {cpu.qemu_cpu}"] = _agreement(check.agreement)
                row[f"{cpu.qemu_cpu} vs here"] = check.cpu_difference
            rows.append(row)
            print(f"measured {scheme.name}", flush=True)
        options = session_options(SessionOptions())
        sessions = {
            name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in paths.items()
        }
        batch = verifier.inputs[:1]
        times = interleaved(
            {
                name: partial(session.run, None, {metadata.input.name: batch})
                for name, session in sessions.items()
            },
            repeats,
        )
    float_ms = statistics.median(times["float32"]) * 1e3
    for row in rows:
        row["ms here"] = statistics.median(times[row["variant"]]) * 1e3
        row["x float32"] = row["ms here"] / float_ms
    float_row = {"variant": "float32", "MB": float_model.stat().st_size / 1e6, "ms here": float_ms}
    return [*rows, float_row]


def profile(model: Path, photo: Path, runs: int) -> list[dict[str, Any]]:
    """ONNX Runtime's kernel times over ``runs`` single-image runs, by op type, as served.

    The session is configured as the app configures it; the warm-up run
    (first-run allocations) is left out of the figures.
    """
    import onnxruntime as ort

    from classifier.model import Classifier, session_options
    from classifier.options import SessionOptions

    batch = Classifier(model).preprocess(photo)[np.newaxis]
    options = session_options(SessionOptions())
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / model.stem)
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    measured_from = model_runs[1]["ts"]
    total_ms = sum(run["dur"] for run in model_runs[1:]) / 1e3 / runs
    by_op: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if (
            event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and event["ts"] >= measured_from
        ):
            by_op[event["args"]["op_name"]].append(event["dur"] / 1e3 / runs)
    ranked = sorted(by_op.items(), key=lambda item: -sum(item[1]))
    kernels_ms = sum(sum(times) for times in by_op.values())

    def row(op: str, nodes: int, ms: float) -> dict[str, Any]:
        return {
            "model": model.name,
            "op type": op,
            "nodes": nodes,
            "ms per image": ms,
            "share %": 100 * ms / total_ms,
        }

    return [
        *(row(op, len(times) // runs, sum(times)) for op, times in ranked),
        row("(between kernels)", 0, total_ms - kernels_ms),
        row("total (model_run)", sum(len(times) for times in by_op.values()) // runs, total_ms),
    ]


def _agreement(report: Any) -> str:
    return f"{round(report.top1_agreement * report.samples)}/{report.samples}"


def main() -> None:
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=20, help="timed runs of each call")
    arguments.add_argument(
        "--int8-variants",
        type=Path,
        metavar="DIR",
        help="instead, study the int8 variants of the first --model, calibrated and "
        "checked on DIR's photos",
    )
    arguments.add_argument(
        "--haswell-photos", type=int, default=4, help="photos run as an AVX2 CPU (qemu)"
    )
    arguments.add_argument(
        "--nehalem-photos", type=int, default=2, help="photos run as an SSE4.2 CPU (qemu)"
    )
    arguments.add_argument(
        "--profile",
        action="store_true",
        help="instead, profile each --model with ONNX Runtime: kernel time by op type",
    )
    args = arguments.parse_args()
    paths = models(args)
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="profile-") as folder:
            photo = photos(Path(folder))["500x375"]
            rows = [row for path in paths for row in profile(path, photo, args.repeats)]
        title = (
            f"Where inference time goes: ONNX Runtime's profiler, {args.repeats} single-image "
            "runs after a warm-up, kernel time by op type (ms per image)"
        )
        report(args, "profile", {title: rows})
        return
    if args.int8_variants:
        emulated = {HASWELL: args.haswell_photos, NEHALEM: args.nehalem_photos}
        rows = int8_variants(paths[0], args.int8_variants, args.repeats, emulated)
        title = (
            f"int8 variants of {paths[0].name}: top-1 agreement with float32 and max "
            "|probability diff|, here and emulated (qemu; emulated times mean nothing, "
            f"none shown); one image, medians of {args.repeats} interleaved runs here"
        )
        report(args, "int8-variants", {title: rows})
        return

    from classifier.model import Classifier

    flops_before = matmul_flops()
    comparison: list[dict[str, Any]] = []
    whole_path: list[dict[str, Any]] = []
    keras_cache: dict[Any, Any] = {}
    with tempfile.TemporaryDirectory(prefix="latency-") as folder:
        samples = photos(Path(folder))
        admission = admitting_whole(list(samples.values()))
        for path in paths:
            name = path.name
            classifier = Classifier(path, admission=admission)
            keras = keras_model(path, keras_cache)
            comparison += compare_with_keras(
                name, classifier, keras, samples["500x375"], args.repeats
            )
            for label, photo in samples.items():
                whole_path += photo_path(name, classifier, photo, label, args.repeats)
    flops = max(flops_before, matmul_flops())
    report(args, "latency", tables(args, comparison, whole_path, flops))


def tables(
    args: argparse.Namespace, comparison: list[dict], whole_path: list[dict], flops: float
) -> dict[str, list[dict[str, Any]]]:
    """The comparison with Keras, the floor, and the whole path, as printed tables."""
    floor_ms = 2 * MULTIPLY_ADDS / flops * 1e3
    floor = [
        {
            "model": row["model"],
            "case": row["case"],
            "matmul_GFLOP/s": flops / 1e9,
            "floor_ms_per_image": floor_ms,
            "ours_ms_per_image": row["ours_ms"] / images,
            "x_floor": row["ours_ms"] / images / floor_ms,
        }
        for row in comparison
        for images in [BATCH if "batch" in row["case"] else 1]
        if row["case"].startswith("inference")
    ]
    return {
        f"Ours against Keras, same weights ({args.repeats} interleaved runs each)": comparison,
        "Inference against the float32 floor (2 x 5.71 G multiply-adds / numpy matmul rate)": floor,
        "One photo, decode + preprocess + inference (medians, ms)": whole_path,
    }


if __name__ == "__main__":
    main()
