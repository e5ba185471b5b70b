"""Get the Keras classifier to convert, and learn from it what the runtime needs.

Two sources: one of ``keras.applications``' ImageNet classifiers, with the
weights the user asked for, or the user's own trained model, a ``.keras``
file (or a full-model ``.h5`` that Keras 3 still loads), Sequential or
functional. Either way the model must be something the runtime can serve:
one RGB image input, one ``(batch, classes)`` output of probabilities or
logits.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.metadata import sha256_of
from conversion.errors import UnservableModelError, WeightsError

DEFAULT_FAMILY = "InceptionV3"
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
"""The files ``--model`` takes as a user's own model."""


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
    """A user's trained model, for inference: a ``.keras`` file, or a full-model
    ``.h5`` (Keras 2's format) where Keras 3 can still read it."""
    import keras

    keras.backend.clear_session()
    if path.is_dir():
        raise UnservableModelError(
            f"{path} is a folder (a TensorFlow SavedModel?), not a Keras model file: load "
            "the model where it was trained and save it with model.save('name.keras')."
        )
    if path.suffix.lower() in (".h5", ".hdf5"):
        _check_full_model_h5(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds, custom layers' own among them
        reason = one_line(f"{type(error).__name__}: {error}")
        if path.suffix.lower() != ".keras":
            raise UnservableModelError(
                f"Keras {keras.__version__} cannot load {path}, a Keras 2 model file "
                f"({reason}). Save it as .keras where it was trained (TensorFlow 2.13 to "
                "2.15: model.save('name.keras')), or build the model in Keras 3 code, "
                f"call model.load_weights('{path.name}') and model.save('name.keras')."
            ) from error
        raise UnservableModelError(
            f"Keras cannot load {path} ({reason}). It must be a model saved with "
            "model.save('name.keras') and, if it uses custom layers, registered with "
            "@keras.saving.register_keras_serializable."
        ) from error


def _check_full_model_h5(path: Path) -> None:
    """Refuse an ``.h5`` that is not HDF5 or holds weights only, saying what to do."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            has_model = "model_config" in file.attrs
    except OSError as error:
        raise UnservableModelError(
            f"{path} is not a Keras model file (not HDF5: {one_line(str(error))}); give "
            "the .keras file that model.save('name.keras') writes."
        ) from error
    if not has_model:
        raise UnservableModelError(
            f"{path} holds weights only, no model (save_weights wrote it): build the model "
            f"in code, call model.load_weights('{path.name}'), then model.save('name.keras')."
        )


def one_line(text: str) -> str:
    """A library's message on one line, for a one-line refusal."""
    return " ".join(text.split())


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
    inputs, outputs = _graph_ends(model)
    if len(inputs) != 1:
        raise UnservableModelError(
            f"The model has {len(inputs)} inputs; the runtime feeds an image "
            "classifier one input, a batch of RGB images."
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise UnservableModelError(
            f"The model's input has shape {shape}; an image classifier takes "
            "(batch, height, width, 3): RGB images, channels last."
        )
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        shapes = ", ".join(str(tuple(output.shape)) for output in outputs)
        raise UnservableModelError(
            f"The model has {len(outputs)} output(s) of shape {shapes}; a classifier has "
            "one output of shape (batch, classes)."
        )
    classes = int(outputs[0].shape[-1])
    if classes < 2:
        raise UnservableModelError(
            "The model has one output unit (a binary classifier's single score); the "
            "runtime serves one probability or logit per class: end it in Dense(2) with "
            "a softmax, or without activation."
        )
    height, width = _input_size(shape[1], shape[2], input_size)
    return Interface(height, width, classes, output_scores(model))


def _graph_ends(model: Any) -> tuple[list[Any], list[Any]]:
    """The model's symbolic inputs and outputs; a model never built has none."""
    try:
        return list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError, TypeError) as error:
        raise UnservableModelError(
            f"Keras knows no input shape for the model {model.name!r} (never built, or "
            "subclassed): write it as a Sequential or functional model that starts with "
            "keras.Input((height, width, 3)), or fit it before saving."
        ) from error


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
    """The model's last layer (inside a nested model that ends it) and its
    activation's name (None if it has none)."""
    import keras

    layer = model.layers[-1]
    while isinstance(layer, keras.Model):
        layer = layer.layers[-1]
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
        "runtime serves one probability or logit per class: a final softmax "
        "(probabilities) or a final Dense layer without activation (logits)."
    )


def tapped(model: Any, layers: Sequence[Any]) -> Any:
    """A functional model over ``model``'s own layers (weights shared) whose outputs
    are ``model``'s output, then each of ``layers``' input and output, in order.

    It is built by calling the layers anew on a fresh ``keras.Input``, looking
    into nested models (a frozen base), so it works for any model Keras can
    call: Sequential ones too, built by ``fit``, whose ``model.input`` does not
    exist. ``layers`` may sit inside nested models; each must be called once.
    """
    import keras

    found: list[Any] = []
    graph = _tapped_graph(model, {id(layer) for layer in layers}, found)
    outputs = len(graph.outputs) - 2 * len(found)
    if outputs != 1:
        raise UnservableModelError(f"The model has {outputs} outputs; a classifier has one.")
    missing = [layer.name for layer in layers if layer not in found]
    if missing:
        raise ValueError(f"layers {missing} are not on the model's path from input to output")
    at = {id(layer): 1 + 2 * index for index, layer in enumerate(found)}
    taps = [graph.outputs[at[id(layer)] + side] for layer in layers for side in (0, 1)]
    return keras.Model(graph.input, [graph.outputs[0], *taps], name=model.name)


def _tapped_graph(model: Any, wanted: set[int], found: list[Any]) -> Any:
    """``model`` rebuilt on fresh inputs, its outputs followed by the input and
    output of each wanted layer met on the way (appended to ``found``)."""
    import keras

    taps: list[Any] = []

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_graph(layer):
            # A nested model: rebuilt too, so that layers inside it can be tapped.
            nested = _tapped_graph(layer, wanted, found)
            results = nested(*args)
            results = results if isinstance(results, list | tuple) else [results]
            outputs = len(layer.outputs)
            taps.extend(results[outputs:])
            output = results[:outputs]
            return output[0] if outputs == 1 else output
        output = layer(*args, **kwargs)
        if id(layer) in wanted:
            found.append(layer)
            taps.extend([args[0], output])
        return output

    if isinstance(model, keras.Sequential):
        inputs, _ = _graph_ends(model)
        fresh = keras.Input(batch_shape=tuple(inputs[0].shape), dtype=inputs[0].dtype)
        output = fresh
        for layer in model.layers:
            output = call(layer, output)
        return keras.Model(fresh, [output, *taps])
    # Sharing each layer (clone_function) while calling it through ``call``.
    clone = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    return keras.Model(clone.input, [*clone.outputs, *taps])


def _is_graph(layer: Any) -> bool:
    """A Sequential or functional model, whose layers can be called one by one."""
    import keras

    functional = isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph")
    return isinstance(layer, keras.Sequential) or functional


# Layers that keep pixel values at inference: augmentation, and resizing.
_PASS_THROUGH_PREFIXES = ("Random", "Resizing", "CenterCrop", "InputLayer", "Dropout")


def in_model_scaling(model: Any) -> list[dict[str, Any]]:
    """The ``Rescaling`` and ``Normalization`` layers that start ``model``, as the
    metadata records them: its first layers, past augmentation and resizing,
    and inside a nested first block (a base model, a preprocessing Sequential).
    A model that scales its pixels itself takes raw 0..255 pixels."""
    import keras
    import numpy as np

    found = []
    for layer in flat_layers(model):
        if isinstance(layer, keras.layers.Rescaling):
            found.append(
                {
                    "layer": layer.name,
                    "type": "Rescaling",
                    "scale": np.asarray(layer.scale, dtype=float).tolist(),
                    "offset": np.asarray(layer.offset, dtype=float).tolist(),
                }
            )
        elif isinstance(layer, keras.layers.Normalization):
            found.append(
                {
                    "layer": layer.name,
                    "type": "Normalization",
                    "mean": np.asarray(layer.mean, dtype=float).ravel().tolist(),
                    "variance": np.asarray(layer.variance, dtype=float).ravel().tolist(),
                }
            )
        elif not type(layer).__name__.startswith(_PASS_THROUGH_PREFIXES):
            break
    return found


def flat_layers(model: Any) -> Iterator[Any]:
    """``model``'s layers from its input on, each nested model's layers in its place:
    how to find a layer by name wherever it sits (``tapped`` takes it)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer)
        else:
            yield layer


def describe_scaling(found: list[dict[str, Any]]) -> str:
    """``Rescaling 'rescaling' (x * 0.00784 + -1)``, for the converter's messages."""
    parts = []
    for layer in found:
        if layer["type"] == "Rescaling":
            numbers = f"x * {_short(layer['scale'])} + {_short(layer['offset'])}"
        else:
            numbers = f"mean {_short(layer['mean'])}, variance {_short(layer['variance'])}"
        parts.append(f"{layer['type']} {layer['layer']!r} ({numbers})")
    return ", then ".join(parts)


def _short(value: float | list[float]) -> str:
    values = value if isinstance(value, list) else [value]
    text = ", ".join(f"{number:.4g}" for number in values)
    return f"[{text}]" if isinstance(value, list) else text


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

    A functional model's own graph is reused as it is (rebuilding it would
    name tf2onnx's nodes differently from one conversion to the next); a
    Sequential one, whose layers know no input of their own, is ``tapped``.
    """
    import keras

    if isinstance(model, keras.Sequential):
        graph = tapped(model, [head.pooling])
        (inputs,), (output, feature_map, _) = graph.inputs, graph.outputs
    else:
        inputs, output, feature_map = model.inputs[0], model.outputs[0], head.pooling.input
    return keras.Model(inputs, [output, feature_map], name=model.name)
