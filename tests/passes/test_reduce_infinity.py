"""ReduceMax / ReduceMin over infinite values: the standard's -inf / +inf, compiled too."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from hwcomp.passes import ReduceInfinityPass
from tests.helpers import make_model, run_ort, to_ir


def _reduce_model(op: str, keepdims: int):
    return make_model(
        [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims, name="reduce")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4, 1] if keepdims else [3, 4])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [2])], opset=18)


def _with_infinite_rows(sign: float) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    x[0, 1, :] = sign * np.inf        # every element infinite: the reduction is that infinity
    x[2, 3, :] = sign * np.inf
    x[1, 2, :4] = sign * np.inf       # one finite element left: that element
    return x


@pytest.mark.parametrize(("op", "sign"), [("ReduceMax", -1.0), ("ReduceMin", 1.0)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_infinities_compiles_to_the_standards_answer(op, sign, keepdims):
    """Compiled by TVM before the pass, the all -inf rows came out -3.4e38 (not -inf)."""
    import tvm
    from tvm import relax

    from hwcomp.lower.frontend.relax_import import import_relax
    from hwcomp.lower.library.base import compile_relax
    from hwcomp.model import to_proto
    from hwcomp.targets import load_target

    model = _reduce_model(op, keepdims)
    x = _with_infinite_rows(sign)
    expected = run_ort(model, {"x": x})[0]
    assert np.isinf(expected).sum() == 2

    def compiled(proto):
        executable = compile_relax(import_relax(proto), load_target("x86-avx2"))
        vm = relax.VirtualMachine(executable, tvm.cpu())
        return vm["main"](tvm.runtime.tensor(x)).numpy()

    assert np.isinf(compiled(model)).sum() == 0  # TVM alone: the finite extreme instead
    result = ReduceInfinityPass()(to_ir(model))
    assert result.modified
    assert result.model.graph.outputs[0].name == "y"
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], expected)
    np.testing.assert_array_equal(compiled(to_proto(result.model)), expected)


def test_integer_reductions_are_left_alone():
    model = make_model(
        [helper.make_node("ReduceMax", ["x"], ["y"], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])], [])
    assert not ReduceInfinityPass()(to_ir(model)).modified
