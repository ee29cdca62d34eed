import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes import ConvTransposePadsPass
from tests.helpers import make_model, run_ort, to_ir

RNG = np.random.default_rng(0)


def _model(output_shape, strides=(3, 2), auto_pad=None, in_hw=(3, 3)):
    w = numpy_helper.from_array(RNG.standard_normal((1, 2, 3, 3)).astype(np.float32), "w")
    attrs = {"strides": list(strides), "output_shape": list(output_shape)}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    return make_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *in_hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, *output_shape])], [w])


@pytest.mark.parametrize(("output_shape", "auto_pad"), [
    ((10, 8), None), ((9, 6), None), ((7, 5), "SAME_LOWER"), ((11, 7), None)])
def test_output_shape_becomes_pads(output_shape, auto_pad):
    model = _model(output_shape, auto_pad=auto_pad)
    x = RNG.standard_normal((1, 1, 3, 3)).astype(np.float32)
    expected = run_ort(model, {"x": x})[0]
    result = ConvTransposePadsPass()(to_ir(model))
    node = next(iter(result.model.graph))
    assert result.modified and "output_shape" not in node.attributes and "pads" in node.attributes
    got = run_ort(result.model, {"x": x})[0]
    assert got.shape == expected.shape == (1, 2, *output_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_without_output_shape_nothing_changes():
    w = numpy_helper.from_array(RNG.standard_normal((1, 2, 3, 3)).astype(np.float32), "w")
    model = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])], [w])
    assert not ConvTransposePadsPass()(to_ir(model)).modified
