"""What class activation maps cost: explain off against the same model without them, and on.

For each ``--model`` (with a heatmap), a copy without the heatmap's outputs
is made beside it in a temporary folder: the model as it was before heatmaps.
In one process, taking turns (A B C ...) after warm-up, it times

- ``bare``: the copy, ``classify(photo)``;
- ``off``: the model, ``classify(photo)`` (the class maps are not fetched, so
  ONNX Runtime does not compute them);
- ``on``: ``classify(photo, explain=True)`` (every class's map from the same run,
  the top 5 normalised);
- ``on + overlay``: that, plus the top class's overlay on the photo as PNG, as
  ``POST /classify?explain=true`` answers;

the model run alone (``predict`` against ``predict_explained``), and what
explain adds after the run, alone (the top 5 maps from the feature map), by wall
time and by the CPU time the process spent. Memory: each of bare, off and on
runs in a fresh interpreter, which reports its resident memory once the
model is loaded and its peak (the kernel's high-water mark, reset then)
over ``--requests`` classifications.

    .venv/bin/python -m benchmarks.explain --model /tmp/bench/inception_v3.onnx \\
        --model /tmp/bench/inception_v3.int8.onnx
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MB, interleaved, milliseconds, models, options, report
from classifier.assets import ROOT
from classifier.heatmap import class_maps, normalise, png
from classifier.metadata import ModelMetadata, metadata_path_for, sha256_of
from classifier.model import Classifier
from tests.support.photos import CAT_PHOTO

REPEATS = 60
REQUESTS = 20


def without_heatmap(model: Path, folder: Path) -> Path:
    """A copy of ``model`` without its feature map and class maps, nor the nodes that made
    them, and metadata to match: the model as converted before heatmaps."""
    import onnx

    from conversion.export import FEATURE_MAP_NAME

    proto = onnx.load(model)
    graph = proto.graph
    kept = [value for value in graph.output if value.name != FEATURE_MAP_NAME]
    del graph.output[:]
    graph.output.extend(kept)
    while True:  # drop the nodes that only fed the removed outputs
        used = {name for node in graph.node for name in node.input} | {v.name for v in kept}
        nodes = [node for node in graph.node if any(name in used for name in node.output)]
        if len(nodes) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(nodes)
    copy = folder / model.name
    onnx.save(proto, copy)
    metadata = ModelMetadata.from_json(metadata_path_for(model).read_text())
    shutil.copy(model.parent / metadata.labels_file, folder / metadata.labels_file)
    bare = replace(metadata, sha256=sha256_of(copy), size_bytes=copy.stat().st_size, heatmap=None)
    metadata_path_for(copy).write_text(bare.to_json())
    return copy


def maps_alone(classifier: Classifier, photo: Path) -> Callable[[], object]:
    """What explain adds after the run: the top 5 classes' maps from the feature map
    (their rows of the class weights, read from the file) and their normalisation."""
    probabilities, features = classifier.predict_explained(classifier.preprocess(photo)[None])
    top = np.argsort(probabilities[0])[::-1][:5]
    weights = classifier._weights
    return lambda: [normalise(m) for m in np.moveaxis(class_maps(features[0], weights, top), -1, 0)]


def overlay_png(classifier: Classifier, photo: Path) -> bytes:
    classified = classifier.classify_photo(photo, explain=True)
    return png(classifier.overlay(classified.photo, classified.predictions[0].heatmap))


def timings(model: Path, bare_model: Path, photo: Path, repeats: int) -> list[dict[str, Any]]:
    """Wall time, and the CPU time the process spent (all its threads): on a shared
    machine other jobs stretch the first far more than the second."""
    bare, explaining = Classifier(bare_model), Classifier(model)
    batch = explaining.preprocess(photo)[None]
    work = {
        "bare": lambda: bare.classify(photo),
        "off": lambda: explaining.classify(photo),
        "on": lambda: explaining.classify(photo, explain=True),
        "on + overlay": lambda: overlay_png(explaining, photo),
        "run: bare": lambda: bare.predict(batch),
        "run: off": lambda: explaining.predict(batch),
        "run: on": lambda: explaining.predict_explained(batch),
        "maps from the feature map": maps_alone(explaining, photo),
    }
    cpu: dict[str, list[float]] = {name: [] for name in work}

    def cpu_timed(name: str) -> Callable[[], None]:
        def call() -> None:
            start = time.process_time()
            work[name]()
            cpu[name].append(time.process_time() - start)

        return call

    wall = interleaved({name: cpu_timed(name) for name in work}, repeats)
    rows = []
    for name, seconds in wall.items():
        reference = "bare" if name in ("bare", "off", "on", "on + overlay") else "run: bare"
        spent = cpu[name][-repeats:]  # the timed turns, not the warm-up
        spent_reference = cpu[reference][-repeats:]
        rows.append(
            {
                "model": model.name,
                "what": name,
                **milliseconds(seconds),
                "min_ms": min(seconds) * 1e3,
                "cpu_ms": float(np.median(spent)) * 1e3,
                "cpu_x_bare": float(np.median(spent) / np.median(spent_reference)),
                "cpu_over_bare_ms": float(np.median(spent) - np.median(spent_reference)) * 1e3,
            }
        )
    return rows


def peak_rss(model: Path, mode: str, photo: Path, requests: int) -> dict[str, float]:
    """Resident MB of a fresh interpreter once the model is loaded, and its peak while
    it then classifies ``photo`` ``requests`` times."""
    command = [sys.executable, "-m", "benchmarks.explain", "--child"]
    command += [str(model), str(photo), str(requests), mode]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(output.stdout.splitlines()[-1])


def child(model: Path, photo: Path, requests: int, mode: str) -> None:
    """One process's share of ``peak_rss``: print its high-water mark while serving as JSON.

    Loading the model peaks higher than serving does, so the mark is reset
    (``/proc/self/clear_refs``) once the model is loaded and warmed up.
    """
    classifier = Classifier(model)
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(requests):
        if mode == "overlay":
            classified = classifier.classify_photo(photo, explain=True)
            png(classifier.overlay(classified.photo, classified.predictions[0].heatmap))
        else:
            classifier.classify(photo, explain=mode != "off")
    print(json.dumps({"loaded_MB": loaded, "peak_MB": _status_mb("VmHWM")}))


def _status_mb(field: str) -> float:
    with Path("/proc/self/status").open() as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
    return kb * 1024 / MB


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        model, photo, requests, mode = sys.argv[2:6]
        child(Path(model), Path(photo), int(requests), mode)
        return
    arguments = options(__doc__.splitlines()[0])
    arguments.add_argument("--photo", type=Path, default=CAT_PHOTO, help="the photo to classify")
    arguments.add_argument("--repeats", type=int, default=REPEATS, help="timed turns per call")
    arguments.add_argument(
        "--requests", type=int, default=REQUESTS, help="classifications per memory process"
    )
    args: argparse.Namespace = arguments.parse_args()
    latency, memory = [], []
    for model in models(args):
        if ModelMetadata.from_json(metadata_path_for(model).read_text()).heatmap is None:
            sys.exit(f"error: {model} has no heatmap to measure")
        with tempfile.TemporaryDirectory() as folder:
            bare = without_heatmap(model, Path(folder))
            latency += timings(model, bare, args.photo, args.repeats)
            peaks = {
                "bare": peak_rss(bare, "off", args.photo, args.requests),
                "off": peak_rss(model, "off", args.photo, args.requests),
                "on": peak_rss(model, "on", args.photo, args.requests),
                "on + overlay": peak_rss(model, "overlay", args.photo, args.requests),
            }
        memory += [
            {
                "model": model.name,
                "what": name,
                **peak,
                "peak_over_bare_MB": peak["peak_MB"] - peaks["bare"]["peak_MB"],
            }
            for name, peak in peaks.items()
        ]
    report(
        args,
        "explain",
        {
            f"Latency, ms ({args.repeats} interleaved turns, {args.photo.name})": latency,
            f"Resident memory, MB: loaded, and peak over {args.requests} classifications": memory,
        },
    )


if __name__ == "__main__":
    main()
