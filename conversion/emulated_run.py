"""The emulated process: run an ONNX model on saved inputs, save its outputs.

``conversion.emulation`` starts this file under ``qemu-x86_64`` with the
same Python, so it imports only numpy and onnxruntime.

    python conversion/emulated_run.py MODEL.onnx INPUTS.npy OUTPUTS.npy
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort


def main(model: str, inputs: str, outputs: str) -> None:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = np.load(inputs)
    np.save(outputs, np.concatenate([session.run(None, {name: row[None]})[0] for row in batch]))


if __name__ == "__main__":
    main(*sys.argv[1:])
