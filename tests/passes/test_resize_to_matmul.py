import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes import ResizeToMatMulPass
from tests.helpers import make_model, op_types, run_ort, to_ir

RNG = np.random.default_rng(0)


def _resize(shape, out_shape, scales=None, sizes=None, **attrs):
    inits = []
    inputs = ["x", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs.append("scales")
    else:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        inputs += ["", "sizes"]
    return make_model(
        [helper.make_node("Resize", inputs, ["y"], **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits, opset=19,
    )


CASES = [
    # (case of the pass's docstring, model)
    ("antialias linear", _resize([1, 2, 8, 8], [1, 2, 5, 3], sizes=[1, 2, 5, 3], mode="linear",
                                 antialias=1)),
    ("antialias cubic", _resize([1, 1, 9, 7], [1, 1, 4, 3], scales=[1, 1, 0.5, 0.5], mode="cubic",
                                antialias=1)),
    ("linear downsample", _resize([2, 3, 6, 10], [2, 3, 4, 5], sizes=[2, 3, 4, 5], mode="linear")),
    ("cubic downsample exclude", _resize([1, 1, 8, 8], [1, 1, 6, 6], sizes=[1, 1, 6, 6], mode="cubic",
                                         exclude_outside=1, cubic_coeff_a=-0.5)),
    ("half_pixel_symmetric", _resize([1, 1, 4, 4], [1, 1, 9, 9], sizes=[1, 1, 9, 9], mode="linear",
                                     coordinate_transformation_mode="half_pixel_symmetric")),
    ("axes", _resize([1, 3, 4, 6], [1, 3, 8, 6], scales=[2.0], mode="nearest", axes=[2])),
    ("axes on channels", _resize([1, 4, 3, 3], [1, 2, 3, 3], sizes=[2], mode="linear", axes=[1])),
    ("not_larger", _resize([1, 1, 4, 6], [1, 1, 2, 3], sizes=[3, 3], mode="nearest", axes=[2, 3],
                           keep_aspect_ratio_policy="not_larger")),
]


@pytest.mark.parametrize(("label", "model"), CASES, ids=[c[0] for c in CASES])
def test_rewrite_matches_onnxruntime(label, model):
    ir_model = to_ir(model)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.standard_normal(shape).astype(np.float32)
    expected = run_ort(ir_model, {"x": x})[0]
    result = ResizeToMatMulPass()(ir_model)
    assert result.modified
    ops = op_types(result.model)
    assert "Resize" not in ops and "MatMul" in ops
    got = run_ort(result.model, {"x": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_crop_and_resize_axes_are_folded_into_full_rank_operands():
    roi = numpy_helper.from_array(np.array([0.2, 0.1, 0.8, 0.7], np.float32), "roi")
    sizes = numpy_helper.from_array(np.array([3, 3], np.int64), "sizes")
    model = make_model(
        [helper.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], mode="linear", axes=[3, 2],
                          coordinate_transformation_mode="tf_crop_and_resize",
                          extrapolation_value=10.0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3])], [roi, sizes], opset=19)
    x = RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)
    expected = run_ort(model, {"x": x})[0]
    result = ResizeToMatMulPass()(to_ir(model))
    node = next(iter(result.model.graph))
    assert result.modified and node.op_type == "Resize" and "axes" not in node.attributes
    np.testing.assert_allclose(run_ort(result.model, {"x": x})[0], expected, rtol=1e-5)


def test_resize_tvm_handles_is_left_alone():
    model = _resize([1, 2, 4, 4], [1, 2, 8, 8], scales=[1, 1, 2, 2], mode="nearest")
    result = ResizeToMatMulPass()(to_ir(model))
    assert not result.modified
    assert op_types(result.model) == ["Resize"]
    from hwcomp.passes.resize_to_matmul import why_not_rewritten

    assert why_not_rewritten(next(iter(result.model.graph))) == "TVM handles this Resize correctly"
