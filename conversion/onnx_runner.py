"""The one way the converter runs an ONNX model: a CPU session fed by its first input.

Used on this machine (verification, int8 agreement) and inside the emulated
guest (``emulated_run``), so it imports only numpy and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class Runner:
    """An ONNX Runtime session on the CPU execution provider, from a file or bytes."""

    def __init__(self, model: Path | str | bytes) -> None:
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """``outputs`` (all, by default) for the whole ``batch`` in one run."""
        return self.session.run(outputs, {self.input_name: batch})

    def row_by_row(self, inputs: np.ndarray) -> np.ndarray:
        """The first output, one run per row: batch size 1, as the app serves a photo."""
        return np.concatenate([self(row[None])[0] for row in inputs])
