"""Get the Keras classifier to convert, and learn from it what the runtime needs.

Two sources: one of ``keras.applications``' ImageNet classifiers, with the
weights the user asked for, or the user's own trained model, a ``.keras``
file. Either way the model must be something the runtime can serve: one RGB
image input, one ``(batch, classes)`` output of probabilities or logits.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.metadata import sha256_of

DEFAULT_FAMILY = "InceptionV3"


class WeightsError(Exception):
    """The weights cannot be had or do not fit; the message says what to do."""


class UnservableModelError(Exception):
    """The Keras model is not an image classifier the runtime can serve."""


@dataclass(frozen=True)
class Family:
    """A ``keras.applications`` classifier: its ``preprocess_input`` mode, and the
    input size to build it at where Keras leaves the size open."""

    mode: str
    size: int | None = None


FAMILIES: dict[str, Family] = {
    **{
        name: Family("tf")
        for name in (
            "InceptionV3",
            "Xception",
            "InceptionResNetV2",
            "MobileNet",
            "MobileNetV2",
            "ResNet50V2",
            "ResNet101V2",
            "ResNet152V2",
            "NASNetMobile",
            "NASNetLarge",
        )
    },
    **{name: Family("caffe") for name in ("VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152")},
    **{name: Family("torch") for name in ("DenseNet121", "DenseNet169", "DenseNet201")},
    # These scale raw 0..255 pixels inside the model.
    **{f"EfficientNetB{i}": Family("none") for i in range(8)},
    **{f"EfficientNetV2{v}": Family("none") for v in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    **{f"ConvNeXt{v}": Family("none") for v in ("Tiny", "Small", "Base", "Large", "XLarge")},
    "MobileNetV3Small": Family("none", size=224),
    "MobileNetV3Large": Family("none", size=224),
}


def file_stem(name: str) -> str:
    """``InceptionV3`` -> ``inception_v3``, ``ResNet50`` -> ``resnet50``: the default
    file name of a family's model."""
    return re.sub(r"(?<=[a-z])(?=V\d)", "_", name).lower()


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
        """The provenance recorded in the model's metadata.

        Keras checks its ImageNet download against the hash it ships, and the
        metadata records Keras' version, so ``imagenet`` pins the weights.
        """
        if self.kind == "random":
            return {"source": "random", "seed": self.seed}
        if self.kind == "imagenet":
            return {"source": "imagenet"}
        assert self.path is not None
        return {"source": "file", "file": self.path.name, "sha256": sha256_of(self.path)}


def keras_home() -> Path:
    """Keras' cache folder, as Keras itself picks it."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def build_model(weights: WeightsSource, family: str = DEFAULT_FAMILY) -> Any:
    """``keras.applications``' ``family`` (1000 classes, softmax) with ``weights`` loaded."""
    import keras

    # A fresh session restarts Keras' layer numbering, so the same weights
    # always give the same layer names, and so the same ONNX bytes.
    keras.backend.clear_session()
    constructor = getattr(keras.applications, family)
    size = FAMILIES[family].size
    options = {"input_shape": (size, size, 3)} if size else {}
    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed or 0)
        return constructor(weights=None, **options)
    if weights.kind == "imagenet":
        return _build_with_imagenet_weights(constructor, options)
    assert weights.path is not None
    if not weights.path.is_file():
        raise WeightsError(f"Weights file {weights.path} not found.")
    try:
        return constructor(weights=str(weights.path), **options)
    except (ValueError, OSError, KeyError) as error:
        raise WeightsError(
            f"{weights.path} does not hold {family} weights in a layout Keras can "
            f"load (Keras' published .h5 file or a Keras 3 .weights.h5): {error}"
        ) from error


def _build_with_imagenet_weights(constructor: Any, options: dict[str, Any]) -> Any:
    try:
        return constructor(weights="imagenet", **options)
    except Exception as error:  # Keras raises a bare Exception for a failed download
        failed = re.search(r"URL fetch failure on (\S+?):? ", str(error))
        if failed is None:
            raise
        file_name = failed.group(1).rsplit("/", 1)[-1]
        raise WeightsError(
            "Could not download the ImageNet weights (no network?). Either put "
            f"{file_name} into Keras' cache, {keras_home() / 'models' / file_name} "
            "(set KERAS_HOME to use another cache folder), or pass the file with "
            "--weights PATH."
        ) from error


def load_keras_file(path: Path) -> Any:
    """A user's trained model from a ``.keras`` file, for inference."""
    import keras

    keras.backend.clear_session()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds, custom layers' own among them
        raise UnservableModelError(
            f"Keras cannot load {path} ({type(error).__name__}: {error}). It must be a "
            "model saved with model.save('name.keras') and, if it uses custom layers, "
            "registered with @keras.saving.register_keras_serializable."
        ) from error


@dataclass(frozen=True)
class Interface:
    """What the runtime must know of a classifier: its input size and what it outputs."""

    height: int
    width: int
    classes: int
    scores: str  # "probabilities" (a softmax ends the model) or "logits"


def interface(model: Any, input_size: tuple[int, int] | None = None) -> Interface:
    """Check that ``model`` is an image classifier the runtime can serve.

    ``input_size`` (height, width) is needed where the model accepts any size.
    """
    if len(model.inputs) != 1:
        raise UnservableModelError(
            f"The model has {len(model.inputs)} inputs; the runtime feeds an image "
            "classifier one input, a batch of RGB images."
        )
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise UnservableModelError(
            f"The model's input has shape {shape}; an image classifier takes "
            "(batch, height, width, 3): RGB images, channels last."
        )
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        shapes = ", ".join(str(tuple(output.shape)) for output in model.outputs)
        raise UnservableModelError(
            f"The model's output has shape {shapes}; a classifier has one output of "
            "shape (batch, classes)."
        )
    height, width = _input_size(shape[1], shape[2], input_size)
    return Interface(height, width, int(model.outputs[0].shape[-1]), output_scores(model))


def _input_size(
    height: int | None, width: int | None, requested: tuple[int, int] | None
) -> tuple[int, int]:
    if height is None or width is None:
        if requested is None:
            raise UnservableModelError(
                "The model accepts images of any size; give the size it was trained "
                "at with --input-size, e.g. --input-size 224 or 240x320 (height x width)."
            )
        return requested
    if requested is not None and requested != (height, width):
        raise UnservableModelError(
            f"The model takes {height}x{width} images, not the --input-size "
            f"{requested[0]}x{requested[1]}; leave --input-size out."
        )
    return height, width


def head(model: Any) -> tuple[Any, str | None]:
    """The model's last layer and its activation's name (None if it has none)."""
    import keras

    layer = model.layers[-1]
    if isinstance(layer, keras.layers.Softmax):
        return layer, "softmax"
    activation = getattr(layer, "activation", None)
    return layer, getattr(activation, "__name__", None)


def output_scores(model: Any) -> str:
    """``probabilities`` where a softmax ends the model, ``logits`` where nothing does."""
    import keras

    layer, activation = head(model)
    own_layer = keras.layers.Activation | keras.layers.Softmax
    if activation == "softmax":
        if not isinstance(layer, keras.layers.Dense | own_layer):
            raise UnservableModelError(
                f"The model ends in {type(layer).__name__} layer {layer.name!r} with a "
                "softmax inside; put the softmax in its own Activation layer, so the "
                "converter can check the logits."
            )
        return "probabilities"
    if activation == "linear":
        return "logits"
    ending = f"{type(layer).__name__} layer {layer.name!r}"
    raise UnservableModelError(
        f"The model ends in {ending}{f' with {activation}' if activation else ''}; the "
        "runtime serves a final softmax (probabilities) or a final Dense layer without "
        "activation (logits)."
    )


@dataclass(frozen=True)
class CamHead:
    """A head that makes class activation maps exact: global average pooling, then
    (past any dropout) one dense layer. ``pooling``'s input is the last feature map."""

    pooling: Any
    dense: Any


def cam_head(model: Any) -> CamHead | None:
    """The model's class-activation-map head, or None where it ends otherwise
    (e.g. Flatten and dense layers, a 1x1 convolution, a normalization after the pooling)."""
    import keras

    layers = list(model.layers)
    if layers and isinstance(layers[-1], keras.layers.Softmax | keras.layers.Activation):
        layers.pop()  # a softmax of its own (output_scores refuses any other activation)
    if not layers or not isinstance(layers[-1], keras.layers.Dense):
        return None
    chain = [layers.pop()]
    while layers and isinstance(layers[-1], keras.layers.Dropout):
        chain.insert(0, layers.pop())
    if not layers or not isinstance(layers[-1], keras.layers.GlobalAveragePooling2D):
        return None
    pooling = layers[-1]
    if pooling.keepdims or pooling.data_format != "channels_last":
        return None
    if not isinstance(model, keras.Sequential) and not _chained([pooling, *chain]):
        return None
    return CamHead(pooling, chain[-1])


def _chained(layers: list[Any]) -> bool:
    """Each layer of a functional model takes the one before it as its only input."""
    try:
        return all(after.input is before.output for before, after in itertools.pairwise(layers))
    except (AttributeError, ValueError):  # a layer called more than once has no one input
        return False


def with_feature_map(model: Any, head: CamHead) -> Any:
    """The model with a second output: the last feature map (``head.pooling``'s input).

    A Sequential model's layers are called afresh on a new input, as its
    layers know no input of their own in Keras 3.
    """
    import keras

    if not isinstance(model, keras.Sequential):
        return keras.Model(model.inputs[0], [model.outputs[0], head.pooling.input], name=model.name)
    inputs = keras.Input(model.input_shape[1:])
    outputs, feature_map = inputs, None
    for layer in model.layers:
        if layer is head.pooling:
            feature_map = outputs
        outputs = layer(outputs)
    return keras.Model(inputs, [outputs, feature_map], name=model.name)
