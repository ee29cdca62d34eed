import numpy as np
from onnx import TensorProto, helper, numpy_helper

from hwcomp.analysis.channels import analyze_channels
from tests import model_zoo
from tests.helpers import make_model, to_ir

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_residual_add_couples_the_convs_that_feed_it():
    groups = {g.name: g for g in analyze_channels(to_ir(model_zoo.resnet_like())).groups}
    # Stem conv and the block's second conv both write the residual stream.
    assert set(groups) == {"Conv16", "Conv28+Conv4", "Conv42", "Conv54+Conv64"}
    stream = groups["Conv28+Conv4"]
    assert stream.size == 16
    # Each logical channel spans every tensor of the stream (conv outputs, BN, Add, Relu).
    assert all(len({t for t, _ in comp}) >= 6 for comp in stream.components)


def test_depthwise_conv_passes_channels_through():
    groups = {g.name: g for g in analyze_channels(to_ir(model_zoo.mobilenet_like())).groups}
    # The expand conv's channels run through the depthwise conv to the project conv.
    expand = groups["Conv18"]
    tensors = {t for comp in expand.components for t, _ in comp}
    assert any("conv" in t for t in tensors) and expand.size == 64


def test_concat_offsets_and_flatten_to_gemm():
    model = to_ir(make_model(
        [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
         helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
         helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
         helper.make_node("Flatten", ["c"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1, name="fc")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(_w(2, 3, 1, 1), "wa"), numpy_helper.from_array(_w(3, 3, 1, 1), "wb"),
         numpy_helper.from_array(_w(5, 80), "wg")]))
    analysis = analyze_channels(model)
    groups = {g.name: g for g in analysis.groups}
    assert set(groups) == {"conv_a", "conv_b"}
    # conv_b's channel 1 is the concat's channel 2 + 1 = 3, i.e. Gemm features 48..63.
    comp = groups["conv_b"].components[1]
    assert ("c", 3) in comp and {("f", j) for j in range(48, 64)} <= set(comp)
    assert analysis.frozen_sources == {"fc": "model output 'y' keeps its shape"}


def test_unprovable_ops_freeze_with_reasons():
    model = to_ir(make_model(
        [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
         helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1, 3], name="swap"),
         helper.make_node("Transpose", ["t"], ["b"], perm=[0, 2, 1, 3]),
         helper.make_node("Conv", ["b", "w2"], ["c"], group=2, name="grouped"),
         helper.make_node("Conv", ["c", "w3"], ["y"], name="conv3")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(_w(4, 4, 1, 1), "w1"), numpy_helper.from_array(_w(4, 2, 1, 1), "w2"),
         numpy_helper.from_array(_w(2, 4, 1, 1), "w3")]))
    analysis = analyze_channels(model)
    assert "swap: Transpose moves the channel axis" in analysis.frozen_sources["conv1"]
    assert analysis.frozen_sources["conv3"] == "model output 'y' keeps its shape"
    # The grouped conv's outputs prune by slot: channel j of every group together.
    (group,) = analysis.groups
    assert group.sources == ("grouped",)
    assert sorted(sorted(c) for c in group.components) == [[("c", 0), ("c", 2)],
                                                           [("c", 1), ("c", 3)]]
