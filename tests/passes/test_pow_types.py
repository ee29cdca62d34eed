"""Pow with a float base and another exponent type, or integer operands, compiled by TVM."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from hwcomp.passes import PowTypesPass
from tests.helpers import make_model, run_ort, to_ir


@pytest.mark.parametrize(("base", "exponent", "x", "y"), [
    (TensorProto.FLOAT, TensorProto.INT64, np.array([1.5, 2, -3], np.float32), np.array([2, 3, 3])),
    (TensorProto.INT32, TensorProto.FLOAT, np.array([2, 3, -4], np.int32),
     np.array([2, 0.5, 3], np.float32)),
    (TensorProto.INT64, TensorProto.INT64, np.array([2, -3, 7]), np.array([10, 3, 2])),
    (TensorProto.INT32, TensorProto.INT32, np.array([46340, -2, 3], np.int32),
     np.array([2, 31, 19], np.int32)),
])
def test_pow_of_mixed_or_integer_types_compiles_to_onnxruntimes_values(base, exponent, x, y):
    import tvm
    from tvm import relax

    from hwcomp.lower.frontend.relax_import import import_relax
    from hwcomp.lower.library.base import compile_relax
    from hwcomp.model import to_proto
    from hwcomp.targets import load_target

    model = make_model(
        [helper.make_node("Pow", ["x", "y"], ["z"], name="pow")],
        [helper.make_tensor_value_info("x", base, [3]), helper.make_tensor_value_info("y", exponent, [3])],
        [helper.make_tensor_value_info("z", base, [3])])
    expected = run_ort(model, {"x": x, "y": y})[0]
    result = PowTypesPass()(to_ir(model))
    assert result.modified and result.model.graph.outputs[0].name == "z"
    np.testing.assert_array_equal(run_ort(result.model, {"x": x, "y": y})[0], expected)
    executable = compile_relax(import_relax(to_proto(result.model)), load_target("x86-avx2"))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y)).numpy()
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_pow_of_one_float_type_is_left_alone():
    model = make_model(
        [helper.make_node("Pow", ["x", "y"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])])
    assert not PowTypesPass()(to_ir(model)).modified
