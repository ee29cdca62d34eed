import numpy as np
from onnx import TensorProto, helper

from hwcomp.passes import SumToAddPass
from tests.helpers import make_model, run_ort, to_ir

RNG = np.random.default_rng(0)


def _sum_model(count):
    names = [f"x{i}" for i in range(count)]
    # The last input broadcasts (a per-channel term), as Sum allows.
    shapes = [[1, 4, 5, 5]] * (count - 1) + [[1, 4, 1, 1]] if count > 1 else [[1, 4, 5, 5]]
    return make_model(
        [helper.make_node("Sum", names, ["y"], name="residual_sum"),
         helper.make_node("Relu", ["y"], ["z"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(names, shapes, strict=True)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 5, 5])], []), shapes


def test_sum_becomes_a_chain_of_adds_with_the_same_result():
    for count in (2, 3, 4):
        model, shapes = _sum_model(count)
        feeds = {f"x{i}": RNG.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
        expected = run_ort(model, feeds)[0]
        result = SumToAddPass()(to_ir(model))
        ops = [node.op_type for node in result.model.graph]
        assert result.modified and ops == ["Add"] * (count - 1) + ["Relu"]
        np.testing.assert_array_equal(run_ort(result.model, feeds)[0], expected)


def test_single_input_sum_becomes_identity_and_graph_output_keeps_its_name():
    model = make_model([helper.make_node("Sum", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [])
    result = SumToAddPass()(to_ir(model))
    assert [node.op_type for node in result.model.graph] == ["Identity"]
    assert result.model.graph.outputs[0].name == "y"
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], x)


def test_graph_without_sum_is_not_modified():
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [])
    assert not SumToAddPass()(to_ir(model)).modified
