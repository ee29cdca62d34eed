import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.passes.lowrank import LowRankPass
from hwcomp.targets import load_target
from tests.helpers import make_model, op_types, run_ort, to_ir

RNG = np.random.default_rng(0)


def _low_rank_matrix(rows, cols, rank):
    return (RNG.standard_normal((rows, rank)) @ RNG.standard_normal((rank, cols))).astype(np.float32)


def _gemm_model(trans_b):
    w = _low_rank_matrix(256, 192, 8)
    w = w.T.copy() if trans_b else w
    return make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b, name="fc")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 192])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(RNG.standard_normal(192).astype(np.float32), "b")])


def _conv_model(k=3, rank_like=4, strides=(1, 1)):
    # A conv whose channel matrix has rank 4: channel SVD at rank 4 is exact.
    matrix = _low_rank_matrix(64, 64 * k * k, rank_like)
    return make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[k // 2] * 4, strides=list(strides),
                          name="conv")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 32 // strides[0], 32 // strides[1]])],
        [numpy_helper.from_array(matrix.reshape(64, 64, k, k), "w"),
         numpy_helper.from_array(RNG.standard_normal(64).astype(np.float32), "b")])


def _compare(model, result, shape, rtol=1e-3):
    x = RNG.standard_normal(shape).astype(np.float32)
    want = run_ort(model, {"x": x})[0]
    got = run_ort(result.model, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_splits_into_two_factors(trans_b):
    model = _gemm_model(trans_b)
    split = LowRankPass(0.9999, load_target("arm-a72"))
    result = split(to_ir(model))
    assert result.modified and op_types(result.model) == ["MatMul", "Gemm"]
    change = split.report.split[0]
    assert change.rank == 8 and change.full_rank == 192 and change.time_after_s < change.time_before_s
    _compare(model, result, (64, 256))


def test_conv_channel_svd_is_exact_at_its_true_rank():
    model = _conv_model()
    split = LowRankPass(0.99999, load_target("arm-a72"))
    result = split(to_ir(model))
    assert op_types(result.model) == ["Conv", "Conv"]
    assert split.report.split[0].rank == 4
    _compare(model, result, (1, 64, 32, 32))


def test_conv_spatial_svd_is_exact_for_separable_kernels():
    # Each filter is an outer product col x row, shared across channels in rank 2.
    cols = RNG.standard_normal((2, 16, 3)).astype(np.float32)   # (r, c_in, k_h)
    rows = RNG.standard_normal((2, 32, 3)).astype(np.float32)   # (r, c_out, k_w)
    weight = np.einsum("riy,rox->oiyx", cols, rows).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])],
        [numpy_helper.from_array(weight, "w")])
    split = LowRankPass(0.99999, load_target("arm-a72"))
    result = split(to_ir(model))
    assert split.report.split[0].mode == "spatial" and split.report.split[0].rank == 2
    kernels = [list(n.attributes.get_ints("kernel_shape")) for n in result.model.graph]
    assert kernels == [[3, 1], [1, 3]]
    _compare(model, result, (1, 16, 32, 32))


def test_full_rank_changes_nothing():
    model = _gemm_model(0)
    split = LowRankPass(1.0, load_target("arm-a72"))
    result = split(to_ir(model))
    assert not result.modified and op_types(result.model) == ["Gemm"]
    assert "full rank" in split.report.skipped["fc"]


def test_split_that_is_not_faster_is_skipped_with_the_estimate():
    # A full-rank random 64x64 matrix keeps nearly every singular value at 99 % energy.
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
                       [numpy_helper.from_array(w, "w")])
    split = LowRankPass(0.95, load_target("arm-a72"))
    result = split(to_ir(model))
    assert not result.modified
    assert "not faster on arm-a72" in split.report.skipped["mm"]
