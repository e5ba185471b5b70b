"""The int8 path's graph rewrite: average pooling after its 1x1 projection, same answers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conversion.quantize import pool_after_projection

CHANNELS_IN, CHANNELS_OUT, SIDE = 8, 4, 7


def pool_then_conv(
    kernel: int = 1, count_include_pad: int = 0, second_reader: bool = False
) -> onnx.ModelProto:
    """x -> AveragePool(3x3, same) -> Conv(kernel) -> Relu, as InceptionV3's pool branches."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((CHANNELS_OUT, CHANNELS_IN, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(CHANNELS_OUT).astype(np.float32)
    out_side = SIDE - kernel + 1  # no padding: only the kernel's size stops the move
    nodes = [
        helper.make_node(
            "AveragePool",
            ["x"],
            ["pooled"],
            name="pool",
            kernel_shape=[3, 3],
            strides=[1, 1],
            pads=[1, 1, 1, 1],
            count_include_pad=count_include_pad,
        ),
        helper.make_node("Conv", ["pooled", "w", "b"], ["projected"], name="conv"),
        helper.make_node("Relu", ["projected"], ["y"], name="relu"),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS_OUT, out_side, out_side])
    ]
    if second_reader:
        nodes.append(helper.make_node("Identity", ["pooled"], ["also"], name="also"))
        outputs.append(
            helper.make_tensor_value_info("also", TensorProto.FLOAT, [1, CHANNELS_IN, SIDE, SIDE])
        )
    graph = helper.make_graph(
        nodes,
        "pool_then_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS_IN, SIDE, SIDE])],
        outputs,
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_moves_the_pool_after_a_1x1_projection_with_the_same_answer() -> None:
    x = np.random.default_rng(1).standard_normal((1, CHANNELS_IN, SIDE, SIDE), np.float32)
    model = pool_then_conv()
    expected = run(model, x)

    assert pool_after_projection(model) == 1
    assert [node.op_type for node in model.graph.node] == ["Conv", "AveragePool", "Relu"]
    np.testing.assert_allclose(run(model, x)[0], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(pool_then_conv(kernel=3), id="3x3 convolution"),
        pytest.param(pool_then_conv(count_include_pad=1), id="padding counted"),
        pytest.param(pool_then_conv(second_reader=True), id="pool read twice"),
    ],
)
def test_leaves_a_pool_it_cannot_move(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    assert pool_after_projection(model) == 0
    assert model.SerializeToString() == before
