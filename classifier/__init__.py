"""The runtime core: decoding, the ONNX model, labels and heatmaps; never TensorFlow.

``from classifier import Classifier`` is the public API. It imports only
numpy, Pillow, pyvips and onnxruntime (and pydantic, for the model's
metadata); the web service (``service``) sits on top of it, never the other
way round. ``Classifier`` is loaded on first use, so the converter can read
``classifier.metadata`` without loading onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classifier.model import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from classifier import model

        return getattr(model, name)
    raise AttributeError(f"module 'classifier' has no attribute {name!r}")
