"""Split with empty parts and Concat with empty inputs: TVM could not compile them."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes import EmptyTensorsPass
from tests.helpers import make_model, op_types, run_ort, to_ir


def _rotary_like(sizes):
    """RotaryEmbedding's shape of work: split off the part to rotate, keep the rest, join."""
    return make_model(
        [helper.make_node("Split", ["x", "sizes"], ["rotate", "keep"], axis=-1, name="split"),
         helper.make_node("Neg", ["rotate"], ["rotated"]),
         helper.make_node("Concat", ["rotated", "keep"], ["y"], axis=-1, name="join")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8])],
        [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")])


def test_an_empty_part_becomes_a_constant_and_leaves_the_concat():
    import tvm
    from tvm import relax

    from hwcomp.lower.frontend.relax_import import import_relax
    from hwcomp.lower.library.base import compile_relax
    from hwcomp.model import to_proto
    from hwcomp.targets import load_target

    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    for sizes, ops in (([8, 0], ["Identity", "Neg", "Identity"]),
                       ([6, 2], ["Split", "Neg", "Concat"])):
        model = _rotary_like(sizes)
        expected = run_ort(model, {"x": x})[0]
        result = EmptyTensorsPass()(to_ir(model))
        assert result.modified == (0 in sizes)
        assert [op for op in op_types(result.model) if op != "Constant"] == ops
        np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], expected)
        executable = compile_relax(import_relax(to_proto(result.model)), load_target("x86-avx2"))
        vm = relax.VirtualMachine(executable, tvm.cpu())
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)


def test_three_parts_keep_the_non_empty_ones_in_order():
    model = make_model(
        [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1, name="split"),
         helper.make_node("Concat", ["c", "b", "a"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(np.array([2, 0, 3], np.int64), "sizes")])
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    result = EmptyTensorsPass()(to_ir(model))
    assert [op for op in op_types(result.model) if op != "Constant"] == ["Split", "Concat"]
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], run_ort(model, {"x": x})[0])
