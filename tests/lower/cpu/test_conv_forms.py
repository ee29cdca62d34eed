"""1-D, grouped and transposed convolutions on hwcomp's fp32 CPU kernels, against onnxruntime.

Each case is a one-conv ONNX model (bias, then ReLU: the epilogue the kernel's store carries)
compiled as ``hwcomp build --target x86-avx2`` compiles it (8 fp32 lanes, which the kernel
labels below assume; ``host`` follows this machine's vector width) and run in this process;
the manifest
label the rewrite records is checked too, so a case that silently fell back to TVM's generic
schedule fails. Shapes are awkward on purpose: channels that are not whole vectors, odd 1-D
lengths, stride 2, dilation, asymmetric padding, groups 2 to 64, batch 2.
"""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.lower import lowering_for
from hwcomp.lower.cpu.kernels import compute
from hwcomp.lower.cpu.kernels import spec as specs
from hwcomp.lower.frontend.legalize import legalize_for_tvm
from hwcomp.targets import load_target
from tests.helpers import run_ort

TARGET = "x86-avx2"  # any x86-64 with AVX2 runs it; the labels assume its 8 lanes


def _model(op, x_shape, w_shape, **attrs):
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    weight = rng.standard_normal(w_shape).astype(np.float32)
    out_channels = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    nodes = [helper.make_node(op, ["x", "w", "b"], ["c"], **attrs),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _compile_and_compare(model, label, target_name=TARGET):
    import tvm
    from tvm import relax

    target = load_target(target_name)
    legal, _ = legalize_for_tvm(ir.from_proto(model))
    lowering = lowering_for(target)
    prepared = lowering.prepare(ir.to_proto(legal), target)
    kernels = prepared.kernels.float_ops
    assert len(kernels) == 1 and label in kernels[0], kernels
    compiled = lowering.compile(prepared.module, target)
    assert compiled.unscheduled_kernels == []
    executable = compiled.executable
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = run_ort(model, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1, np.abs(want).max()))


@pytest.mark.parametrize("x_shape,w_shape,attrs,label", [
    # Whisper's stem: k3, 301 frames (padded to whole register tiles, NCW store).
    ((1, 80, 301), (64, 80, 3), dict(pads=[1, 1]), "NCHW kernel, fused epilogue"),
    # Odd length, stride 2, output channels not whole vectors (padded columns).
    ((1, 24, 149), (36, 24, 3), dict(pads=[1, 2], strides=[2]), "NCHW kernel, fused epilogue"),
    # wav2vec2's first layer: one input channel, k10 stride 5.
    ((1, 1, 16000), (512, 1, 10), dict(strides=[5]), "NCHW kernel, fused epilogue"),
    # Dilation 2, batch 2.
    ((2, 16, 64), (32, 16, 3), dict(dilations=[2], pads=[2, 2]),
     "return to NCHW fused with the epilogue"),
    # A grouped positional conv (wav2vec2: k128, 16 groups; here 6 channels per group,
    # merged 4 at a time into whole vectors).
    ((1, 96, 49), (96, 6, 16), dict(pads=[8, 8], group=16),
     "grouped NCHW kernel (4 groups, 4 merged), fused epilogue"),
    # Depthwise 1-D (a conformer's convolution module), writing NCW.
    ((1, 64, 50), (64, 1, 7), dict(pads=[3, 3], group=64), "depthwise NCHW kernel, fused"),
])
def test_conv1d_runs_on_the_2d_kernels(x_shape, w_shape, attrs, label):
    _compile_and_compare(_model("Conv", x_shape, w_shape, **attrs), label)


@pytest.mark.parametrize("x_shape,w_shape,attrs,label", [
    # RegNet-style: 16 channels per group.
    ((1, 64, 14, 14), (64, 16, 3, 3), dict(pads=[1] * 4, group=4), "(4 groups), fused"),
    # ResNeXt-style 4 per group, stride 2: pairs of groups merged.
    ((1, 64, 28, 28), (64, 4, 3, 3), dict(pads=[1] * 4, group=16, strides=[2, 2]),
     "(8 groups, 2 merged), fused epilogue"),
    # Odd map, asymmetric padding, 8 per group.
    ((1, 48, 9, 11), (48, 8, 3, 3), dict(pads=[0, 1, 2, 1], group=6), "(6 groups), fused"),
    # Two groups, dilation 2 (a segmentation head), 7x7 map.
    ((1, 32, 7, 7), (64, 16, 3, 3), dict(pads=[2] * 4, dilations=[2, 2], group=2),
     "(2 groups), fused epilogue"),
    # 64 groups of 2 input / 4 output channels: 2 groups merged per vector of 8.
    ((1, 128, 10, 10), (256, 2, 3, 3), dict(pads=[1] * 4, group=64), "2 merged), fused"),
])
def test_grouped_conv_runs_as_batched_gemms(x_shape, w_shape, attrs, label):
    _compile_and_compare(_model("Conv", x_shape, w_shape, **attrs), label)


def _has_avx512() -> bool:
    try:
        return " avx512f " in open("/proc/cpuinfo").read().replace("\n", " ")
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx512(), reason="runs AVX-512 code")
@pytest.mark.parametrize("x_shape,w_shape,attrs,label", [
    # RegNetY-400MF: 13 groups of 8 (no merge of 2 divides 13), and 55 groups of 8 on 7x7.
    ((1, 104, 28, 28), (104, 8, 3, 3), dict(pads=[1] * 4, group=13), "(13 groups, 8 lanes)"),
    ((1, 440, 14, 14), (440, 8, 3, 3), dict(pads=[1] * 4, group=55, strides=[2, 2]),
     "(55 groups, 8 lanes)"),
    # 24 per group: 8 lanes, 3 vectors a group.
    ((1, 72, 9, 9), (72, 24, 3, 3), dict(pads=[1] * 4, group=3), "(3 groups, 8 lanes)"),
])
def test_grouped_conv_narrows_its_vectors_where_no_merge_fills_them(x_shape, w_shape, attrs,
                                                                     label):
    """On AVX-512 (16 lanes) groups of 8 or 24 channels that no merge of up to 4 makes whole
    16-lane vectors run 8-lane ones (they were on TVM's generic schedule: RegNetY-400MF ran
    2.4x the time)."""
    _compile_and_compare(_model("Conv", x_shape, w_shape, **attrs), label, "x86-avx512")


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((1, 32, 14, 14), (32, 1, 3, 3), dict(pads=[1] * 4)),                 # 14x14, 3x3
    ((1, 24, 7, 7), (24, 1, 5, 5), dict(pads=[2] * 4)),                   # 7x7 map, 5x5
    ((1, 16, 28, 28), (16, 1, 5, 5), dict(pads=[2] * 4, strides=[2, 2])),  # stride 2
    ((1, 40, 15, 11), (40, 1, 5, 5), dict(pads=[1, 2, 2, 1])),            # odd, asymmetric
    ((1, 8, 3, 3), (8, 1, 5, 5), dict(pads=[2] * 4)),                     # a 3x3 map
    ((1, 48, 10, 10), (48, 1, 3, 3), dict(pads=[2] * 4, dilations=[2, 2])),  # dilated
    ((1, 64, 1, 50), (64, 1, 1, 7), dict(pads=[0, 3, 0, 3])),             # one row
])
def test_depthwise_conv_runs_with_channels_in_vector_lanes(x_shape, w_shape, attrs):
    """x86 builds keep activations NHWC: the depthwise kernel reads and writes them so."""
    _compile_and_compare(_model("Conv", x_shape, w_shape, group=x_shape[1], **attrs),
                         "depthwise NHWC kernel (8 lanes), fused epilogue")


@pytest.mark.parametrize("channels,size,kernel,stride,lanes_kernel", [
    (32, 112, 3, 1, False),   # rows of 112 fill the vectors: the window rule
    (96, 112, 3, 2, False),   # the NHWC copy of a large input is not paid back
    (192, 28, 3, 1, False),   # rows of 28: half-vectors, still the window rule
    (960, 7, 3, 1, True),     # rows of 7 would run scalar
    (240, 28, 5, 2, True),    # 25 taps at stride 2 pay for the copy
    (58, 7, 3, 1, False),     # channels not whole vectors
])
def test_depthwise_kernel_is_chosen_where_it_measured_faster(channels, size, kernel, stride,
                                                               lanes_kernel):
    spec = specs.fma_spec(8)
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    assert compute.depthwise_fits((1, channels, size, size), (1, channels, out, out),
                                  (kernel, kernel), (stride, stride), (pad,) * 4,
                                  spec) == lanes_kernel


@pytest.mark.parametrize("x_shape,w_shape,attrs,label", [
    # ShuffleNet's 58 channels: not whole vectors of 8.
    ((1, 58, 7, 7), (58, 1, 3, 3), dict(pads=[1] * 4, group=58), "depthwise window schedule"),
    ((2, 32, 6, 6), (32, 8, 3, 3), dict(pads=[1] * 4, group=4),
     "generic schedule (grouped conv with batch > 1)"),
    ((1, 30, 6, 6), (30, 3, 3, 3), dict(pads=[1] * 4, group=10), "within 4 merged groups)"),
])
def test_convs_without_a_kernel_say_why_and_stay_correct(x_shape, w_shape, attrs, label):
    _compile_and_compare(_model("Conv", x_shape, w_shape, **attrs), label)


@pytest.mark.parametrize("x_shape,w_shape,attrs,label", [
    # U-Net's 2x2/2 upsampling: a 1x1 conv and a depth-to-space.
    ((1, 64, 8, 8), (64, 32, 2, 2), dict(strides=[2, 2]), "pointwise NCHW kernel, fused"),
    # DCGAN-style k4/s2/p1 on an odd map.
    ((1, 16, 7, 9), (16, 24, 4, 4), dict(strides=[2, 2], pads=[1] * 4), "NCHW kernel, fused"),
    # k3/s2 (k not a multiple of s), asymmetric pads, output_padding.
    ((1, 8, 5, 6), (8, 8, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1]),
     "NCHW kernel, fused epilogue"),
    # Different strides per axis, pads >= stride.
    ((1, 8, 5, 5), (8, 16, 5, 3), dict(strides=[3, 2], pads=[2, 1, 2, 0]),
     "NCHW kernel, fused epilogue"),
    # Grouped transposed conv.
    ((1, 16, 6, 6), (16, 4, 3, 3), dict(strides=[2, 2], group=4), "(4 groups), fused"),
    # Batch 2, stride 1 (a plain correlation with the flipped kernel).
    ((2, 8, 6, 6), (8, 8, 3, 3), dict(pads=[1] * 4), "return to NCHW fused with the epilogue"),
])
def test_conv_transpose_runs_as_a_subpixel_conv(x_shape, w_shape, attrs, label):
    _compile_and_compare(_model("ConvTranspose", x_shape, w_shape, **attrs), label)


def test_merge_groups_builds_the_block_diagonal_weight():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((12, 2, 3, 3)).astype(np.float32)  # 6 groups, 2 out each
    merged, groups = compute.merge_groups(weight, 6, 4)
    assert groups == 3 and merged.shape == (12, 4, 3, 3)
    for o in range(12):
        part = (o // 2) % 2
        np.testing.assert_array_equal(merged[o, part * 2:part * 2 + 2], weight[o])
        assert not merged[o, (1 - part) * 2:(1 - part) * 2 + 2].any()
    assert compute.merge_groups(weight, 6, 16) is None  # 8 groups to merge: too many
    assert compute.merge_groups(rng.standard_normal((10, 2, 1, 1)), 5, 4) is None  # 2 of 5


@pytest.mark.parametrize("x_shape,w_shape,attrs,block", [
    ((1, 16, 12), (8, 16, 3), dict(pads=[1, 1]), "hwcomp_conv (1, 8, 12)"),
    ((1, 24, 7, 7), (24, 1, 5, 5), dict(pads=[2] * 4, group=24),
     "hwcomp_depthwise (1, 7, 7, 24)"),  # NHWC on x86
])
def test_a_kernel_its_rule_cannot_tile_is_reported(monkeypatch, x_shape, w_shape, attrs, block):
    """Where hwcomp's rule fails on a kernel (TVM rejects a schedule step), the function runs
    on the generic schedule, still correct, and the build lists it with the error."""
    from hwcomp.lower.cpu.rules import fused_kernel

    def refuse(sch, spec):
        raise ValueError("cannot transform this block\nsecond line")

    monkeypatch.setattr(fused_kernel, "schedule_fused_kernel", refuse)
    model = _model("Conv", x_shape, w_shape, **attrs)
    target = load_target(TARGET)
    legal, _ = legalize_for_tvm(ir.from_proto(model))
    lowering = lowering_for(target)
    compiled = lowering.compile(lowering.prepare(ir.to_proto(legal), target).module, target)
    assert compiled.unscheduled_kernels == [f"{block}: ValueError: cannot transform this block"]


@pytest.mark.cross
def test_conv_forms_build_and_verify_for_arm_a72(tmp_path):
    """NEON has 4 fp32 lanes and 32 registers (other tiles, merges and row tiles than AVX2):
    a grouped conv (8 per group: 2 vectors each), a depthwise 5x5 on a 7x7 map, a
    transposed 2x2/2 and a grouped transposed conv, cross-compiled and verified against
    onnxruntime under qemu-aarch64 by the build."""
    import json

    from hwcomp import api
    from tests.conftest import require_tools

    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64")
    rng = np.random.default_rng(5)

    def const(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], group=4, pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["d"], group=32, pads=[2] * 4),
        helper.make_node("ConvTranspose", ["d", "w3"], ["u"], strides=[2, 2]),
        helper.make_node("ConvTranspose", ["u", "w4"], ["y"], strides=[2, 2], pads=[1] * 4,
                         group=2),
    ]
    inits = [const("w1", (32, 4, 3, 3)), const("w2", (32, 1, 5, 5)), const("b2", (32,)),
             const("w3", (32, 16, 2, 2)), const("w4", (16, 4, 3, 3))]
    graph = helper.make_graph(
        nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
        strict_mode=True)
    path = tmp_path / "forms.onnx"
    onnx.save(model, path)
    result = api.build(path, "arm-a72", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]
    assert manifest["unscheduled_kernels"] == []
    labels = manifest["float_kernels"]
    # Activations NHWC between the convs; the transposed convs keep NCHW (their sub-pixel form).
    assert "grouped NHWC kernel (4 groups)" in labels[0], labels
    assert "depthwise NHWC kernel" in labels[1] and ": NCHW kernel" in labels[2], labels
    assert "(2 groups)" in labels[3], labels
