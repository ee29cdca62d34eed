import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes.fold_batchnorm import FoldBatchNormPass
from tests import model_zoo
from tests.helpers import make_model, op_types, run_ort, to_ir

RNG = np.random.default_rng(0)


def _bn_params(c, prefix="bn"):
    arrays = [1 + 0.2 * RNG.standard_normal(c), 0.2 * RNG.standard_normal(c),
              0.2 * RNG.standard_normal(c), RNG.uniform(0.5, 1.5, c)]
    names = [f"{prefix}_{k}" for k in ("g", "b", "m", "v")]
    tensors = [numpy_helper.from_array(a.astype(np.float32), n)
               for a, n in zip(arrays, names, strict=True)]
    return names, tensors


def _check(model, feeds, expected_ops):
    ir_model = to_ir(model)
    before = run_ort(ir_model, feeds)
    fold = FoldBatchNormPass()
    result = fold(ir_model)
    assert result.modified and op_types(result.model) == expected_ops
    for got, want in zip(run_ort(result.model, feeds), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return fold.report


@pytest.mark.parametrize("group", [1, 2, 8])
def test_conv_bn(group):
    names, params = _bn_params(8)
    w = numpy_helper.from_array(RNG.standard_normal((8, 8 // group, 3, 3)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], group=group, pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("BatchNormalization", ["c", *names], ["y"], epsilon=1e-3, name="bn")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 6, 6])], [w, *params])
    report = _check(model, {"x": RNG.standard_normal((2, 8, 6, 6)).astype(np.float32)}, ["Conv"])
    assert report.folded == ["bn"]


def test_conv_transpose_bn_with_groups():
    names, params = _bn_params(6)
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["c"], group=2, strides=[2, 2]),
         helper.make_node("BatchNormalization", ["c", *names], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 11, 11])], [w, *params])
    _check(model, {"x": RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)}, ["ConvTranspose"])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn(trans_b):
    names, params = _bn_params(5)
    shape = (5, 7) if trans_b else (7, 5)
    w = numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.standard_normal(5).astype(np.float32), "b")
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b, beta=0.5),
         helper.make_node("BatchNormalization", ["g", *names], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])], [w, b, *params])
    _check(model, {"x": RNG.standard_normal((3, 7)).astype(np.float32)}, ["Gemm"])


def test_matmul_bn_becomes_matmul_add():
    names, params = _bn_params(5)
    w = numpy_helper.from_array(RNG.standard_normal((7, 5)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("BatchNormalization", ["m", *names], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])], [w, *params])
    _check(model, {"x": RNG.standard_normal((3, 7)).astype(np.float32)}, ["MatMul", "Add"])


def test_whole_resnet_folds():
    model = model_zoo.resnet_like()
    feeds = {"input": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    report = _check(model, feeds, [op for op in op_types(model) if op != "BatchNormalization"])
    assert len(report.folded) == 6 and not report.skipped


def test_shared_output_is_not_folded():
    names, params = _bn_params(4)
    w = numpy_helper.from_array(RNG.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("BatchNormalization", ["c", *names], ["n"], name="bn"),
         helper.make_node("Add", ["n", "c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])], [w, *params])
    fold = FoldBatchNormPass()
    result = fold(to_ir(model))
    assert not result.modified
    assert fold.report.skipped == {"bn": "conv's output has other consumers"}


def test_standalone_bn_becomes_a_precomputed_multiply_add():
    """DenseNet's BN after a concat folds into no layer: for legalisation it becomes
    ``x * s + t`` with [1, C, 1, 1] constants (the compression pipeline leaves it a BN)."""
    names, params = _bn_params(6)
    model = make_model(
        [helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
         helper.make_node("BatchNormalization", ["c", *names], ["n"], name="bn", epsilon=1e-3),
         helper.make_node("Relu", ["n"], ["y"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 4, 5]) for name in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4, 5])], params)
    feeds = {name: RNG.standard_normal((1, 3, 4, 5)).astype(np.float32) for name in "ab"}
    ir_model = to_ir(model)
    before = run_ort(ir_model, feeds)
    assert not FoldBatchNormPass()(to_ir(model)).modified
    result = FoldBatchNormPass(standalone=True)(ir_model)
    assert result.modified and op_types(result.model) == ["Concat", "Mul", "Add", "Relu"]
    scale = next(n for n in result.model.graph if n.op_type == "Mul").inputs[1]
    assert scale.const_value.numpy().shape == (1, 6, 1, 1)
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], before[0], rtol=1e-5, atol=1e-5)
