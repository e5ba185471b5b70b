"""The emulated process: run an ONNX model on saved inputs or on photos, save its outputs.

``conversion.emulation`` starts this file under ``qemu-user``: as x86-64
with the same Python, as ARM64 with the arm64 Python and the runtime's
wheels of the emulation root. So it imports only the runtime's packages.

    python conversion/emulated_run.py MODEL OUT.npz --arrays INPUTS.npy [--classifier]
    python conversion/emulated_run.py MODEL OUT.npz --photos PHOTO ... [--classifier]

``--classifier`` runs the app's own ``Classifier`` (the model's metadata
must sit beside it); otherwise a bare ONNX Runtime session, for a model
not yet written. ``OUT.npz`` holds ``probabilities``, the ``inputs`` made
from photos, and ``guest_cpu``: the CPU class the process saw itself on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from classifier.cpu import CpuFeatures
from conversion.onnx_runner import Runner


def bare_session(model: str) -> Callable[[np.ndarray], np.ndarray]:
    runner = Runner(model)
    return lambda batch: runner(batch)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("output", type=Path)
    parser.add_argument("--arrays", type=Path)
    parser.add_argument("--photos", type=Path, nargs="+", default=[])
    parser.add_argument("--classifier", action="store_true")
    args = parser.parse_args()
    if args.photos and not args.classifier:
        parser.error("--photos decodes as the app does: it needs --classifier")
    out = {"guest_cpu": np.array(CpuFeatures.detect().describe())}
    if args.classifier:
        from classifier.model import Classifier

        classifier = Classifier(args.model, warm=False)
        predict, preprocess = classifier.predict, classifier.preprocess
    else:
        predict = bare_session(args.model)
    if args.photos:
        inputs = np.stack([preprocess(photo) for photo in args.photos])
        out["inputs"] = inputs
    else:
        inputs = np.load(args.arrays)
    out["probabilities"] = np.concatenate([predict(row[None]) for row in inputs])
    np.savez(args.output, **out)


if __name__ == "__main__":
    main()
