import numpy as np
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes import ExpandFunctionsPass
from tests.helpers import make_model, op_types, run_ort, to_ir

RNG = np.random.default_rng(0)


def _model():
    scale = numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "scale")
    bias = numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "bias")
    return make_model(
        [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv"],
                          axis=-1, epsilon=1e-3),
         helper.make_node("Celu", ["y"], ["z"], alpha=0.7)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 8]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, [2, 3, 1])],
        [scale, bias],
    )


def test_plain_and_context_dependent_bodies_are_inlined():
    model = to_ir(_model())
    x = RNG.standard_normal((2, 3, 8)).astype(np.float32)
    expected = run_ort(model, {"x": x})
    result = ExpandFunctionsPass(lambda node: node.op_type in {"Celu", "LayerNormalization"})(model)
    assert result.modified
    ops = op_types(result.model)
    assert "LayerNormalization" not in ops and "Celu" not in ops
    assert {"ReduceMean", "Sqrt", "Elu"} <= set(ops)
    for got, want in zip(run_ort(result.model, {"x": x}), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_only_selected_ops_expand():
    result = ExpandFunctionsPass(lambda node: node.op_type == "Celu")(to_ir(_model()))
    assert "LayerNormalization" in op_types(result.model)
    assert "Celu" not in op_types(result.model)


def test_op_without_function_body_is_left_alone():
    # Sigmoid has no function body in the standard: nothing to expand, nothing changes.
    model = make_model([helper.make_node("Sigmoid", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    result = ExpandFunctionsPass(lambda node: True)(to_ir(model))
    assert not result.modified
    assert op_types(result.model) == ["Sigmoid"]
