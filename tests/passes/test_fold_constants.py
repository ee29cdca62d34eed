import numpy as np
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes import FoldConstantsPass
from tests.helpers import make_model, op_types, run_ort, to_ir


def _shape_chain_model():
    # y = Reshape(x, Concat(Shape(x)[0:1], [-1])) : the exporter-style flatten.
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([1], np.int64), "ends")
    minus_one = numpy_helper.from_array(np.array([-1], np.int64), "minus_one")
    w = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "w")
    return make_model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Slice", ["s", "starts", "ends"], ["batch"]),
         helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
         helper.make_node("Mul", ["w", "w"], ["w2"]),
         helper.make_node("Reshape", ["x", "target"], ["flat"]),
         helper.make_node("Mul", ["flat", "w2"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [starts, ends, minus_one, w],
    )


def test_shape_chains_and_constant_math_fold():
    model = to_ir(_shape_chain_model())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = run_ort(model, {"x": x})
    result = FoldConstantsPass()(model)
    assert result.modified
    assert op_types(result.model) == ["Reshape", "Mul"]
    target = result.model.graph.node(0).inputs[1]
    np.testing.assert_array_equal(target.const_value.numpy(), [2, -1])
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], expected[0])


def test_node_with_a_runtime_input_is_not_folded():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    result = FoldConstantsPass()(to_ir(model))
    assert not result.modified and op_types(result.model) == ["Relu"]


def test_large_results_stay_computed_but_static_shapes_fold():
    shape = numpy_helper.from_array(np.array([1000, 1000], np.int64), "shape")
    model = make_model(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
         helper.make_node("Add", ["x", "big"], ["y"]),
         helper.make_node("Shape", ["x"], ["x_shape"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000, 1000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000, 1000]),
         helper.make_tensor_value_info("x_shape", TensorProto.INT64, [2])],
        [shape],
    )
    result = FoldConstantsPass(max_elements=10_000)(to_ir(model))
    # ConstantOfShape would make a 1M-element constant: kept. Shape of a static input,
    # even as a graph output, is a constant.
    assert result.modified
    assert op_types(result.model) == ["ConstantOfShape", "Add"]
    shape_output = result.model.graph.outputs[1]
    assert shape_output.name == "x_shape"
    np.testing.assert_array_equal(shape_output.const_value.numpy(), [1000, 1000])


def test_a_reduction_over_an_empty_axis_folds_to_its_identity():
    for op, keep, want in [("ReduceSum", 1, 0.0), ("ReduceProd", 0, 1.0),
                           ("ReduceMax", 1, -np.inf), ("ReduceMin", 1, np.inf),
                           ("ReduceL2", 0, 0.0)]:
        axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
        shape = [2, 1, 4] if keep else [2, 4]
        model = make_model(
            [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keep)],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 0, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [axes])
        folded = FoldConstantsPass()(to_ir(model)).model
        assert op not in op_types(folded), op
        expected = run_ort(model, {"x": np.zeros((2, 0, 4), np.float32)})[0]
        assert expected.shape == tuple(shape) and np.all(expected == want), op
        value = folded.graph.outputs[0].const_value
        assert value is not None, op
        np.testing.assert_array_equal(value.numpy(), expected)


def test_shapes_known_only_after_folding_fold_in_a_later_sweep():
    """Swin's window padding: pads computed from the Shape of a Reshape whose target shape is
    itself computed from a Shape. The Reshape's output shape is known only once its target
    is folded and shapes are inferred again; the pads then fold in a second sweep (TVM
    rejects a Pad with computed pads)."""
    ints = {name: numpy_helper.from_array(np.array(v, np.int64), name)
            for name, v in (("one", 1), ("four", 4), ("lead", [1]), ("rest", [-1, 4]),
                            ("zeros", [0, 0, 0, 0, 0, 0]), ("axes", [0]))}
    model = make_model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "one"], ["h"], axis=0),
         helper.make_node("Unsqueeze", ["h", "axes"], ["h1"]),
         helper.make_node("Concat", ["lead", "h1", "rest"], ["target"], axis=0),
         helper.make_node("Reshape", ["x", "target"], ["r"]),
         helper.make_node("Shape", ["r"], ["rs"]),
         helper.make_node("Gather", ["rs", "one"], ["rh"], axis=0),
         helper.make_node("Mod", ["rh", "four"], ["m"]),
         helper.make_node("Sub", ["four", "m"], ["p"]),
         helper.make_node("Unsqueeze", ["p", "axes"], ["p1"]),
         helper.make_node("Concat", ["zeros", "p1", "lead"], ["pads8"], axis=0),
         helper.make_node("Pad", ["r", "pads8"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 6, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 9, 5])],
        list(ints.values()),
    )
    model = to_ir(model)
    x = np.arange(120, dtype=np.float32).reshape(1, 5, 6, 4)
    expected = run_ort(model, {"x": x})
    result = FoldConstantsPass()(model)
    assert op_types(result.model) == ["Reshape", "Pad"]
    pad = next(node for node in result.model.graph if node.op_type == "Pad")
    np.testing.assert_array_equal(pad.inputs[1].const_value.numpy(), [0, 0, 0, 0, 0, 0, 3, 1])
    np.testing.assert_array_equal(run_ort(result.model, {"x": x})[0], expected[0])
