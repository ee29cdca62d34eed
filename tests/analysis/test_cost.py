import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.analysis.cost import activation_memory, graph_cost
from hwcomp.model import load_model
from tests import model_zoo
from tests.helpers import make_model, to_ir

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _single(node, x_shape, y_shape, inits, opset=18):
    return to_ir(make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                            inits, opset=opset))


@pytest.mark.parametrize(("attrs", "w_shape", "y_shape", "macs"), [
    # Plain 3x3, pad 1: 1x8x16x16 outputs, each 4 in-channels x 9 taps.
    ({"pads": [1, 1, 1, 1]}, (8, 4, 3, 3), [1, 8, 16, 16], 8 * 16 * 16 * 4 * 9),
    # Stride 2, no pad: 7x7 outputs.
    ({"strides": [2, 2]}, (8, 4, 3, 3), [1, 8, 7, 7], 8 * 7 * 7 * 4 * 9),
    # Dilation 2: effective kernel 5, output 12x12.
    ({"dilations": [2, 2]}, (8, 4, 3, 3), [1, 8, 12, 12], 8 * 12 * 12 * 4 * 9),
    # Groups 2: each output sees 2 input channels.
    ({"group": 2, "pads": [1, 1, 1, 1]}, (8, 2, 3, 3), [1, 8, 16, 16], 8 * 16 * 16 * 2 * 9),
    # Depthwise: one input channel per output.
    ({"group": 4, "pads": [1, 1, 1, 1]}, (4, 1, 3, 3), [1, 4, 16, 16], 4 * 16 * 16 * 9),
])
def test_conv_macs_by_hand(attrs, w_shape, y_shape, macs):
    w = numpy_helper.from_array(_w(*w_shape), "w")
    b = numpy_helper.from_array(_w(w_shape[0]), "b")
    model = _single(helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs), [1, 4, 16, 16], y_shape,
                    [w, b])
    cost = graph_cost(model).nodes[0]
    assert cost.macs == macs
    outputs = int(np.prod(y_shape))
    assert cost.flops == 2 * macs + outputs  # bias adds
    assert cost.params == int(np.prod(w_shape)) + w_shape[0]
    assert cost.weight_bytes == 4 * cost.params
    assert cost.input_bytes == 4 * 16 * 16 * 4 and cost.output_bytes == 4 * outputs
    assert cost.intensity == pytest.approx(cost.flops / cost.memory_bytes)


def test_conv_transpose_gemm_matmul_by_hand():
    w = numpy_helper.from_array(_w(4, 6, 3, 3), "w")
    ct = graph_cost(_single(helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2]),
                            [1, 4, 5, 5], [1, 6, 11, 11], [w])).nodes[0]
    assert ct.macs == 4 * 5 * 5 * 6 * 9
    gw = numpy_helper.from_array(_w(10, 32), "gw")
    gemm = graph_cost(_single(helper.make_node("Gemm", ["x", "gw"], ["y"], transB=1),
                              [3, 32], [3, 10], [gw])).nodes[0]
    assert gemm.macs == 3 * 10 * 32 and gemm.flops == 2 * 3 * 10 * 32
    mw = numpy_helper.from_array(_w(2, 4, 16, 8), "mw")
    matmul = graph_cost(_single(helper.make_node("MatMul", ["x", "mw"], ["y"]),
                                [2, 4, 5, 16], [2, 4, 5, 8], [mw])).nodes[0]
    assert matmul.macs == 2 * 4 * 5 * 8 * 16


def test_attention_chain_counts_both_matmuls():
    cost = graph_cost(to_ir(model_zoo.transformer_block(tokens=16, dim=64, heads=4, hidden=128)))
    matmuls = [n for n in cost.nodes if n.op_type == "MatMul"]
    projections = 3 * 16 * 64 * 64 + 16 * 64 * 64 + 16 * 64 * 128 + 16 * 128 * 64
    attention = 2 * (4 * 16 * 16 * 16)  # QK^T and AV: heads x tokens x tokens x head_dim
    assert sum(n.macs for n in matmuls) == projections + attention
    assert {"Softmax", "LayerNormalization", "Gelu"} <= {n.op_type for n in cost.nodes}
    assert all(n.flops > 0 for n in cost.nodes if n.op_type in ("Softmax", "Gelu"))


def test_pooling_and_elementwise():
    model = to_ir(make_model(
        [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Sigmoid", ["p"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])]))
    pool, sigmoid = graph_cost(model).nodes
    assert pool.macs == 0 and pool.flops == 3 * 4 * 4 * 4
    assert sigmoid.flops == 4 * 3 * 4 * 4


def test_peak_activation_memory_follows_liveness():
    # x(400B) -> a(400B) -> b(400B) -> y ; x dies after a, a after b.
    model = to_ir(make_model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [100])]))
    peak, total = activation_memory(model)
    assert peak == 800 and total == 1600


def test_shared_weights_count_once(tmp_path):
    w = numpy_helper.from_array(_w(16, 16), "w")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], [w])
    cost = graph_cost(to_ir(model))
    assert cost.total_params == 256 and sum(n.params for n in cost.nodes) == 512


@pytest.mark.slow
def test_resnet50_matches_published_counts(tmp_path):
    onnx.save(model_zoo.light_model("resnet50"), tmp_path / "resnet50.onnx")
    cost = graph_cost(load_model(tmp_path / "resnet50.onnx"))
    assert cost.total_macs == pytest.approx(4.1e9, rel=0.02)
    assert cost.total_params == pytest.approx(25.6e6, rel=0.02)
