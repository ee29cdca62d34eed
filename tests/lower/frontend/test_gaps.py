import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.errors import UnsupportedOpError
from hwcomp.lower.frontend.gaps import EXPAND, gap_for
from hwcomp.lower.frontend.legalize import legalize_for_tvm
from hwcomp.lower.frontend.relax_import import check_supported, import_relax
from hwcomp.model import to_proto
from tests.helpers import make_model, op_types, run_ort, to_ir


def test_maxpool_indices_are_rejected_with_the_node_name():
    model = make_model(
        [helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="pool_3")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1, 3, 3])])
    with pytest.raises(UnsupportedOpError, match="pool_3.*MaxPool.*Indices"):
        check_supported(model)


def test_split_into_empty_outputs_is_rejected():
    split = numpy_helper.from_array(np.array([3, 0], np.int64), "split")
    model = make_model(
        [helper.make_node("Split", ["x", "split"], ["a", "b"], name="split_1")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [0])], [split])
    with pytest.raises(UnsupportedOpError, match="split_1.*empty output"):
        check_supported(model)


def test_layer_norm_with_statistics_outputs_is_expanded_and_right():
    rng = np.random.default_rng(0)
    scale = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "scale")
    model = make_model(
        [helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean"], axis=-1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, [2, 1])], [scale])
    assert gap_for(model.graph.node[0], {}).action == EXPAND
    legal, _ = legalize_for_tvm(to_ir(model))
    assert "LayerNormalization" not in op_types(legal)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    for got, want in zip(run_ort(legal, {"x": x}), run_ort(model, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_layer_norm_alone_is_left_to_tvm():
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y"], axis=1)
    assert gap_for(node, {}) is None
    assert gap_for(helper.make_node("MaxPool", ["x"], ["y"]), {}) is None


def test_import_failure_names_the_node(capsys):
    # Reshape with a runtime shape operand: TVM's converter needs it constant.
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape_runtime")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    legal, _ = legalize_for_tvm(to_ir(model))
    with pytest.raises(UnsupportedOpError, match="'reshape_runtime' \\(op Reshape\\)"):
        import_relax(to_proto(legal))
    # TVM's own chatter about the failure is not shown: the error says it once.
    captured = capsys.readouterr()
    assert "Error converting" not in captured.out + captured.err


def test_isinf_with_one_sign_and_training_batchnorm_are_rejected():
    isinf = make_model(
        [helper.make_node("IsInf", ["x"], ["y"], detect_negative=0, name="inf_check")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [4])])
    with pytest.raises(UnsupportedOpError, match="inf_check.*IsInf.*detect_negative"):
        check_supported(isinf)
    both = make_model(
        [helper.make_node("IsInf", ["x"], ["y"], name="inf_any")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [4])])
    check_supported(both)  # both signs: TVM's IsInf is right
    stats = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    bn = make_model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                          training_mode=1, name="bn_train")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])], stats)
    with pytest.raises(UnsupportedOpError, match="bn_train.*training_mode=1"):
        check_supported(bn)


def test_nms_and_data_dependent_control_flow_are_rejected_by_node():
    limits = [numpy_helper.from_array(np.array([2], np.int64), "m")]
    nms = make_model(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "m"], ["sel"], name="nms_1")],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, ["K", 3])], limits)
    with pytest.raises(UnsupportedOpError, match="nms_1.*K selected.*--outputs"):
        check_supported(nms)


def test_the_standard_attention_op_builds_through_its_function_body(tmp_path):
    """Opset 23's Attention (Q, K, V, a boolean mask): TVM's converter of that name is
    com.microsoft's (num_heads, one packed weight) and failed; the op is expanded into the
    standard's body. A fully masked row is 0 there (the body finds it with ReduceMax ==
    -inf, which TVM answered with -3.4e38: NaN came out before ReduceInfinityPass)."""
    import onnx

    from hwcomp import api

    model = make_model(
        [helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], q_num_heads=2,
                          kv_num_heads=2, name="attention_0")],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 4, 16]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 6, 16]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 6, 16]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], opset=23)
    feeds = {name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)
             for i, (name, shape) in enumerate([("q", (1, 4, 16)), ("k", (1, 6, 16)),
                                                ("v", (1, 6, 16))])}
    feeds["mask"] = np.random.default_rng(3).random((4, 6)) < 0.7
    feeds["mask"][2, :] = False  # query 2 may attend to nothing
    expected = run_ort(model, feeds)[0]
    assert np.all(expected[0, 2] == 0) and np.isfinite(expected).all()
    legal, _ = legalize_for_tvm(to_ir(model))
    assert "Attention" not in op_types(legal) and "ReduceMax" in op_types(legal)
    onnx.save(model, tmp_path / "attention.onnx")
    np.savez(tmp_path / "feeds.npz", **feeds)
    result = api.build(tmp_path / "attention.onnx", "x86-avx2", tmp_path / "out",
                       calib=tmp_path / "feeds.npz")
    assert result.verification.status == "passed"
    assert result.verification.outputs[0].max_abs_error < 1e-5


def test_rms_normalization_builds_through_its_function_body(tmp_path):
    """TVM's RMSNormalization converter failed to compile (dimension mismatch); the
    standard's body compiles and matches onnxruntime."""
    import onnx

    from hwcomp import api

    scale = numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32), "scale")
    model = make_model(
        [helper.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=-2, epsilon=1e-5,
                          name="rms_0")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8, 16])], [scale], opset=23)
    legal, _ = legalize_for_tvm(to_ir(model))
    assert "RMSNormalization" not in op_types(legal)
    onnx.save(model, tmp_path / "rms.onnx")
    result = api.build(tmp_path / "rms.onnx", "x86-avx2", tmp_path / "out")
    assert result.verification.status == "passed"
