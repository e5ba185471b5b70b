"""Keras model -> ONNX graph, with stable names and byte-identical output.

We convert with ``tf2onnx.convert.from_keras`` and an explicit input
signature rather than Keras' ``model.export(format="onnx")``. Both end in
tf2onnx, but Keras' route writes a file, while ``from_keras`` hands back the
ONNX graph in memory: it is renamed, made deterministic and verified there,
and only then written, atomically.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from classifier.metadata import Heatmap, TensorSpec
from conversion.keras_model import CamHead, Interface, cam_head, with_feature_map

INPUT_NAME = "images"
FEATURE_MAP_NAME = "feature_map"
DEFAULT_OPSET = 17

_COUNTER_SUFFIX = re.compile(r"__\d+")


def to_onnx(model: Any, opset: int, shape: Interface) -> onnx.ModelProto:
    """Convert a Keras classifier with NHWC float32 input to ONNX.

    The input is ``images``, of ``shape``'s size; the batch dimension stays
    dynamic. The first output is named for what it holds: ``probabilities``
    or ``logits``. Where the model ends in global average pooling and a dense
    layer (``cam_head``), a second follows: ``feature_map``, the pooling
    layer's input (see ``classifier.metadata.Heatmap``).
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    # tf2onnx skips an optimizer pass that fails on a graph (its transpose pass
    # does on MobileNetV3) and logs the traceback as a warning; the graph is
    # verified against Keras either way.
    logging.getLogger("tf2onnx.optimizer").setLevel(logging.ERROR)
    head = cam_head(model)
    if head is not None:
        model = with_feature_map(model, head)
    elif isinstance(model, keras.Sequential):
        # tf2onnx 1.17 looks up a Keras 3 Sequential model's output under the
        # wrong name; a functional model over the same layers converts.
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    signature = (tf.TensorSpec((None, shape.height, shape.width, 3), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    names = [shape.scores] + [FEATURE_MAP_NAME] * (head is not None)
    if len(proto.graph.output) != len(names):
        raise ValueError(f"expected {len(names)} model outputs, got {len(proto.graph.output)}")
    for output, name in zip(list(proto.graph.output), names, strict=True):
        _rename_tensor(proto.graph, output.name, name)
    proto.graph.name = model.name
    drop_noop_reshapes(proto)
    canonicalize_names(proto.graph)
    return proto


def drop_noop_reshapes(proto: onnx.ModelProto) -> None:
    """Remove each Reshape whose input already has the shape it asks for.

    tf2onnx turns a squeeze-and-excite block's 1x1 convolutions into Reshapes and Convs
    (EfficientNet's, MobileNetV3's) and removes the Reshapes that undo each other in an
    order that follows object addresses, so one conversion in a few kept one no-op Reshape
    more than another: removing all of them gives every conversion the same graph.
    """
    graph = proto.graph
    shapes = _inferred_shapes(proto)
    constants = {initializer.name: initializer for initializer in graph.initializer}
    outputs = {value.name for value in graph.output}
    replaced: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [replaced.get(name, name) for name in node.input]
        if node.op_type == "Reshape" and node.output[0] not in outputs and not _allows_zero(node):
            source, target = node.input[0], constants.get(node.input[1])
            if target is not None and _reshapes_to_itself(shapes.get(source), target):
                replaced[node.output[0]] = source
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    unused = [value for value in graph.initializer if value.name not in used]
    for value in unused:
        graph.initializer.remove(value)
    for value in [value for value in graph.value_info if value.name in replaced]:
        graph.value_info.remove(value)


def _allows_zero(node: onnx.NodeProto) -> bool:
    """A Reshape with ``allowzero``: a 0 in its target means size 0, not "keep this size"."""
    return any(attribute.name == "allowzero" and attribute.i for attribute in node.attribute)


def _inferred_shapes(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each tensor's shape as ONNX infers it: sizes, or names for what varies (the batch)."""
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    values = [*inferred.input, *inferred.value_info, *inferred.output]
    return {
        value.name: [dim.dim_value or dim.dim_param for dim in value.type.tensor_type.shape.dim]
        for value in values
        if value.type.tensor_type.HasField("shape")
    }


def _reshapes_to_itself(shape: list[int | str] | None, target: onnx.TensorProto) -> bool:
    """Whether a Reshape to ``target`` leaves a tensor of ``shape`` as it is: every size
    but the first known and asked for, the first (the batch) kept by -1 or 0."""
    if not shape or any(not isinstance(size, int) or size == 0 for size in shape[1:]):
        return False
    wanted = onnx.numpy_helper.to_array(target).tolist()
    return (
        len(wanted) == len(shape)
        and wanted[1:] == shape[1:]
        and (wanted[0] in (-1, 0) or wanted[0] == shape[0])
    )


def _initializer_equal_to(graph: onnx.GraphProto, values: np.ndarray) -> str | None:
    """The name of the initializer holding exactly ``values``, if any."""
    for initializer in graph.initializer:
        same_shape = tuple(initializer.dims) == values.shape
        if same_shape and np.array_equal(onnx.numpy_helper.to_array(initializer), values):
            return initializer.name
    return None


def class_weights_file(model_path: Path) -> str:
    """``inception_v3.onnx`` -> ``inception_v3.class_weights.npy``, beside it."""
    return f"{model_path.stem}.class_weights.npy"


def class_weights(head: CamHead) -> bytes:
    """The dense kernel, one row per class, as ``.npy`` bytes: a class's weights are
    then one contiguous row the runtime reads from disk (8 kB for InceptionV3)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(np.asarray(head.dense.kernel, np.float32).T))
    return buffer.getvalue()


def heatmap_spec(
    proto: onnx.ModelProto, head: CamHead | None, weights_file: str, weights: bytes
) -> Heatmap | None:
    """The metadata's ``heatmap`` block for a graph ``to_onnx`` made, or None ("no heatmap")."""
    if head is None:
        return None
    outputs = {value.name: value for value in proto.graph.output}
    kernel = _initializer_equal_to(proto.graph, np.asarray(head.dense.kernel))
    if kernel is None:
        raise ValueError(f"the dense layer {head.dense.name!r}'s kernel is not in the ONNX graph")
    bias = None
    if head.dense.use_bias:
        bias = _initializer_equal_to(proto.graph, np.asarray(head.dense.bias))
    return Heatmap(
        feature_map=_tensor_spec(outputs[FEATURE_MAP_NAME]),
        class_weights=weights_file,
        class_weights_sha256=hashlib.sha256(weights).hexdigest(),
        kernel=kernel,
        bias=bias,
    )


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    dims = value.type.tensor_type.shape.dim
    return TensorSpec(value.name, [dim.dim_value or None for dim in dims])


def canonicalize_names(graph: onnx.GraphProto) -> None:
    """Rename internal nodes and tensors so the same weights give the same bytes.

    tf2onnx numbers the names it makes with a process-wide counter, and Keras
    numbers the model's scope for each trace, so a second conversion in one
    process would name everything differently. Names lose those counters and
    the outermost scope, then are made unique in graph order; the one dynamic
    dimension, the batch, is called ``batch``. Constants are named after
    their first use (see ``_name_initializers_by_use``).
    """
    boundary = {value.name for value in graph.input} | {value.name for value in graph.output}
    tensor_names: dict[str, str] = {}
    used: set[str] = set(boundary)

    def canonical(name: str) -> str:
        if name in boundary or not name:
            return name
        if name not in tensor_names:
            tensor_names[name] = _unique(_strip_counters(name), used)
        return tensor_names[name]

    node_names: set[str] = set()
    for node in graph.node:
        node.name = _unique(_strip_counters(node.name), node_names)
    constants = _name_initializers_by_use(graph)
    used.update(constants)
    for node in graph.node:
        node.input[:] = [name if name in constants else canonical(name) for name in node.input]
        node.output[:] = [canonical(name) for name in node.output]
    for value in graph.value_info:
        value.name = canonical(value.name)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = "batch"


def _name_initializers_by_use(graph: onnx.GraphProto) -> set[str]:
    """Name each constant after the node that first uses it, and list them in that order.

    Among equal constants, tf2onnx keeps one that varies from run to run, and
    names the constants it makes in an order that varies too (EfficientNet,
    MobileNetV3); the graph's node order and node names do not. Returns the
    constants' new names.
    """
    by_name = {initializer.name: initializer for initializer in graph.initializer}
    renamed: dict[str, str] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in by_name and name not in renamed:
                renamed[name] = f"{node.name}/{slot}"
        node.input[:] = [renamed.get(name, name) for name in node.input]
    ordered = []
    for name in [*renamed, *(name for name in by_name if name not in renamed)]:
        initializer = onnx.TensorProto()
        initializer.CopyFrom(by_name[name])
        initializer.name = renamed.get(name, name)
        ordered.append(initializer)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    return set(renamed.values())


def _strip_counters(name: str) -> str:
    stem = _COUNTER_SUFFIX.sub("", name)
    scope, _, rest = stem.partition("/")
    return rest if rest and re.fullmatch(r"\w+_\d+", scope) else stem


def _unique(name: str, used: set[str]) -> str:
    candidate, number = name, 1
    while candidate in used:
        number += 1
        candidate = f"{name}_{number}"
    used.add(candidate)
    return candidate


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def with_logits_output(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model that also outputs the softmax's input, the logits.

    Random weights give near-uniform probabilities, where comparing them
    proves little; the logits carry the signal.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    output = copy.graph.output[0].name
    softmax = next((node for node in copy.graph.node if output in node.output), None)
    if softmax is None or softmax.op_type != "Softmax":
        raise ValueError("the model's output is not produced by a Softmax node")
    copy.graph.output.append(
        onnx.helper.make_tensor_value_info(softmax.input[0], onnx.TensorProto.FLOAT, None)
    )
    return copy
