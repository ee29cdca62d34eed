import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.analysis.cost import graph_cost
from hwcomp.analysis.roofline import estimate
from hwcomp.targets import load_target
from tests.helpers import make_model, to_ir


def _model():
    w = numpy_helper.from_array(np.ones((64, 64, 3, 3), np.float32), "w")
    return to_ir(make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64 * 32 * 32])], [w]))


def test_times_and_bounds_by_hand():
    target = load_target("arm-a72")
    cost = graph_cost(_model())
    result = estimate(cost, target)
    conv, relu, flatten = result.layers
    macs = 64 * 32 * 32 * 64 * 9
    assert conv.compute_s == pytest.approx(macs / (8 * 1.5e9 * 4))
    assert conv.memory_s == pytest.approx(cost.nodes[0].memory_bytes / 4.4e9)
    assert conv.bound == "compute" and conv.time_s == conv.compute_s
    assert relu.bound == "memory" and relu.time_s == relu.memory_s
    assert flatten.time_s == 0 and flatten.bound == "none"
    assert result.total_s == pytest.approx(conv.time_s + relu.time_s)
    assert all(layer.source == "roofline" for layer in result.layers)


def test_targets_differ_where_their_hardware_does():
    cost = graph_cost(_model())
    slow, fast = estimate(cost, load_target("cortex-m7")), estimate(cost, load_target("cuda-sm90"))
    assert slow.total_s > 1000 * fast.total_s


def test_measured_times_replace_estimates_layer_by_layer():
    cost = graph_cost(_model())
    name = cost.nodes[0].name
    result = estimate(cost, load_target("host"), measured={name: 0.5})
    conv = result.layers[0]
    assert conv.time_s == 0.5 and conv.source == "measured"
    assert result.layers[1].source == "roofline"
