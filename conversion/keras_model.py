"""Build Keras' InceptionV3 with the weights the user asked for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.metadata import sha256_of

IMAGENET_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"


class WeightsError(Exception):
    """The weights cannot be had or do not fit; the message says what to do."""


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from: ``imagenet``, a local file, or a seeded RNG."""

    kind: str
    path: Path | None = None
    seed: int | None = None

    @classmethod
    def parse(cls, value: str, seed: int = 0) -> WeightsSource:
        if value == "imagenet":
            return cls("imagenet")
        if value == "random":
            return cls("random", seed=seed)
        return cls("file", path=Path(value))

    @classmethod
    def from_description(cls, described: dict[str, Any], folder: Path) -> WeightsSource:
        """The inverse of ``describe``: a weights file is looked for in ``folder``
        (beside the model), then in Keras' cache."""
        source = described.get("source")
        if source == "random":
            return cls("random", seed=int(described.get("seed") or 0))
        if source == "imagenet":
            return cls("imagenet")
        if source == "file":
            for candidate in (folder, keras_home() / "models"):
                if (candidate / described["file"]).is_file():
                    return cls("file", path=candidate / described["file"])
            raise WeightsError(f"Weights file {described['file']} not found in {folder}.")
        raise WeightsError(f"Unknown weights {described!r}.")

    def describe(self) -> dict[str, Any]:
        """The provenance recorded in the model's metadata."""
        if self.kind == "random":
            return {"source": "random", "seed": self.seed}
        path = self.path if self.kind == "file" else imagenet_weights_cache_path()
        described: dict[str, Any] = {"source": self.kind, "file": path.name}
        if path.is_file():
            described["sha256"] = sha256_of(path)
        return described


def keras_home() -> Path:
    """Keras' cache folder, as Keras itself picks it."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def imagenet_weights_cache_path() -> Path:
    return keras_home() / "models" / IMAGENET_WEIGHTS_FILE


def build_model(weights: WeightsSource) -> Any:
    """Keras InceptionV3 (1000 classes, softmax) with ``weights`` loaded."""
    import keras

    # A fresh session restarts Keras' layer numbering, so the same weights
    # always give the same layer names, and so the same ONNX bytes.
    keras.backend.clear_session()
    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed or 0)
        return keras.applications.InceptionV3(weights=None)
    if weights.kind == "imagenet":
        return _build_with_imagenet_weights(keras)
    assert weights.path is not None
    if not weights.path.is_file():
        raise WeightsError(f"Weights file {weights.path} not found.")
    try:
        return keras.applications.InceptionV3(weights=str(weights.path))
    except (ValueError, OSError, KeyError) as error:
        raise WeightsError(
            f"{weights.path} does not hold InceptionV3 weights in a layout Keras can "
            f"load (Keras' published .h5 file or a Keras 3 .weights.h5): {error}"
        ) from error


def _build_with_imagenet_weights(keras: Any) -> Any:
    try:
        return keras.applications.InceptionV3(weights="imagenet")
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if "URL fetch failure" not in str(error):
            raise
        raise WeightsError(
            "Could not download the ImageNet weights (no network?). Either put "
            f"{IMAGENET_WEIGHTS_FILE} into Keras' cache, {imagenet_weights_cache_path()} "
            "(set KERAS_HOME to use another cache folder), or pass the file with "
            "--weights PATH."
        ) from error
