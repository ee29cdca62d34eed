import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.errors import InputShapeError
from hwcomp.passes import BindInputsPass
from tests.helpers import make_model, run_ort, to_ir


def _reshape_model():
    return make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
    )


def test_named_input_becomes_an_initializer():
    model = to_ir(_reshape_model())
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    shape = np.array([3, 4], dtype=np.int64)
    expected = run_ort(model, {"x": x, "shape": shape})
    result = BindInputsPass({"shape": shape})(model)
    assert result.modified
    assert [v.name for v in result.model.graph.inputs] == ["x"]
    assert "shape" in result.model.graph.initializers
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], expected[0])


def test_input_shadowed_by_an_initializer_is_bound():
    model = make_model(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.ones(3, dtype=np.float32), "bias")],
    )
    result = BindInputsPass()(to_ir(model))
    assert result.modified and [v.name for v in result.model.graph.inputs] == ["x"]
    np.testing.assert_array_equal(run_ort(result.model, {"x": np.zeros(3, np.float32)})[0], np.ones(3))


def test_nothing_to_bind_is_not_a_change():
    result = BindInputsPass()(to_ir(_reshape_model()))
    assert not result.modified
    assert len(result.model.graph.inputs) == 2


def test_unknown_input_is_an_error():
    with pytest.raises(InputShapeError, match="model's inputs are shape, x"):
        BindInputsPass({"nope": np.zeros(2)})(to_ir(_reshape_model()))
