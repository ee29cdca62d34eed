"""hwcomp's int8 C kernels (kernels/mcu/hwcomp_q8.c) on awkward layers, three ways at once.

Each case is a small float model quantized by ``hwcomp build --precision int8`` for a Cortex-M
profile: the build runs the firmware under qemu (the SIMD path: SMLAD on the DSP extension)
and the same C on this machine (the portable C path), and compares both with onnxruntime.
The tests then require the two C paths to agree bit for bit and the kernel to be hwcomp's
(the generated code calls it). Shapes: channels not a multiple of 4 or 2, odd pixel counts,
stride 2, asymmetric padding, dilation, a 1x1 map, s8 and u8 activations.
"""

import json
import re

import numpy as np
import pytest

from hwcomp.lower.kernel_spec import conv_output_size
from hwcomp.lower.mcu.int8 import pack_c_weight
from tests import model_zoo
from tests.conftest import require_tools, run_cli
from tests.lower.mcu.test_int8 import _assert_matches_reference

pytestmark = pytest.mark.cross


def _layer_model(x_shape, cout, k, stride=1, group=1, pads=None, dilation=1, relu=True):
    b = model_zoo._Builder(sum(x_shape) + cout + k)
    cin = x_shape[1]
    w = (b.rng.standard_normal((cout, cin // group, k, k))
         * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32)
    bias = (b.rng.standard_normal(cout) * 0.1).astype(np.float32)
    x = b.node("Conv", ["input", b.const(w), b.const(bias)], kernel_shape=[k, k],
               strides=[stride, stride], pads=pads or [k // 2 * dilation] * 4, group=group,
               dilations=[dilation, dilation])
    if relu:
        x = b.node("Relu", [x])
    # A second conv (1x1) so the first one's output is an int8 tensor read by a kernel.
    w2 = (b.rng.standard_normal((3, cout, 1, 1)) / np.sqrt(cout)).astype(np.float32)
    b.node("Conv", [x, b.const(w2), b.const(np.zeros(3, np.float32))], kernel_shape=[1, 1])
    return b


def _out_hw(x_shape, k, stride, pads, dilation):
    """The output map of _layer_model's first convolution (its default padding keeps it)."""
    pads = pads or [k // 2 * dilation] * 4
    return list(conv_output_size(x_shape, (k, k), (stride, stride), tuple(pads),
                                 (dilation, dilation)))


def _build(tmp_path, builder, x_shape, out_hw, target):
    model = builder.model("layer", list(x_shape), "logits", [1, 3, *out_hw])
    path = model_zoo.save(model, str(tmp_path / "layer.onnx"))
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz",
             input=rng.standard_normal((16, *x_shape[1:])).astype(np.float32))
    done = run_cli("build", path, "--target", target, "--precision", "int8",
                   "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "out" / f"layer-{target}"


@pytest.mark.parametrize("target,x_shape,cout,k,stride,group,pads,dilation,kernel", [
    # 5 -> 6 channels, 7x9 map (63 pixels: a pixel without a partner), 3x3 pad 1.
    ("cortex-m7", (1, 5, 7, 9), 6, 3, 1, 1, None, 1, "hwcomp_q8_conv"),
    # 7 -> 3 channels (an odd channel left over), stride 2, asymmetric padding.
    ("cortex-m7", (1, 7, 8, 6), 3, 3, 2, 1, [0, 1, 2, 1], 1, "hwcomp_q8_conv"),
    # A 1x1 map: the convolution is a dot product per output channel.
    ("cortex-m7", (1, 10, 1, 1), 9, 1, 1, 1, None, 1, "hwcomp_q8_conv"),
    # Depthwise 3x3 stride 2 on 6 channels of 9x7, and 5x5 dilated on a 6x5 map.
    ("cortex-m7", (1, 6, 9, 7), 6, 3, 2, 6, None, 1, "hwcomp_q8_depthwise"),
    ("cortex-m7", (1, 4, 6, 5), 4, 5, 1, 4, None, 2, "hwcomp_q8_depthwise"),
    # 3x3 stride 1 (the SMLAD pairs): 9 outputs a row (a pair short), and unpadded.
    ("cortex-m7", (1, 5, 7, 9), 5, 3, 1, 5, None, 1, "hwcomp_q8_depthwise"),
    ("cortex-m4", (1, 4, 6, 7), 4, 3, 1, 4, [0, 0, 0, 0], 1, "hwcomp_q8_depthwise"),
    # ... on maps taller than wide: the plane copied transposed (rows of 11 outputs, one
    # without a partner; asymmetric padding).
    ("cortex-m7", (1, 6, 11, 4), 6, 3, 1, 6, None, 1, "hwcomp_q8_depthwise"),
    ("cortex-m4", (1, 3, 12, 5), 3, 3, 1, 3, [1, 0, 1, 2], 1, "hwcomp_q8_depthwise"),
    # The other two boards: Cortex-M4 (DSP, FPv4) and Cortex-M55 (Helium: its own kernels).
    ("cortex-m4", (1, 5, 7, 9), 6, 3, 1, 1, None, 1, "hwcomp_q8_conv"),
    ("cortex-m55", (1, 5, 7, 9), 6, 3, 1, 1, None, 1, "hwcomp_q8_conv"),
    ("cortex-m55", (1, 7, 8, 6), 3, 3, 2, 1, [0, 1, 2, 1], 1, "hwcomp_q8_conv"),
    ("cortex-m55", (1, 10, 1, 1), 9, 1, 1, 1, None, 1, "hwcomp_q8_conv"),
    # K = 20 * 9 = 180: 11 full 16-step chunks and a tail of 4; 7 output channels (a block of
    # 4 and one of 3); dilation 2 leaves few windows inside the map.
    ("cortex-m55", (1, 20, 9, 7), 7, 3, 1, 1, None, 1, "hwcomp_q8_conv"),
    ("cortex-m55", (1, 20, 9, 7), 7, 3, 1, 1, None, 2, "hwcomp_q8_conv"),
    ("cortex-m55", (1, 6, 9, 7), 6, 3, 2, 6, None, 1, "hwcomp_q8_depthwise"),
    ("cortex-m55", (1, 4, 6, 5), 4, 5, 1, 4, None, 2, "hwcomp_q8_depthwise"),
    ("cortex-m55", (1, 5, 7, 9), 5, 3, 1, 5, None, 1, "hwcomp_q8_depthwise"),
])
def test_int8_c_kernels_match_onnxruntime_on_the_board_and_the_host(
        tmp_path, target, x_shape, cout, k, stride, group, pads, dilation, kernel):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    builder = _layer_model(x_shape, cout, k, stride, group, pads, dilation)
    out_hw = _out_hw(x_shape, k, stride, pads, dilation)
    bundle = _build(tmp_path, builder, x_shape, out_hw, target)
    manifest = json.loads((bundle / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["status"] == "passed"
    emulated = verification["outputs"][0]["max_abs_error"]
    _assert_matches_reference(emulated, bundle)
    # The emulated board (SMLAD) and this machine (the portable C) agree exactly.
    assert verification["runs"]["host build"][0]["max_abs_error"] == emulated
    assert manifest["mcu"]["firmware"]["board"]
    assert f"{kernel}_" in (bundle / "lib" / "kernels.c").read_text()


def test_conv_weights_are_packed_in_the_sxtb16_order():
    """Each group of four weights is stored w0 w2 w1 w3 and K is padded to 4 with zeros."""
    weight = np.arange(2 * 3 * 1 * 2, dtype=np.int8).reshape(2, 3, 1, 2)  # K = 6
    packed = pack_c_weight(weight, "conv")
    assert packed.shape == (2, 8)
    np.testing.assert_array_equal(packed[0], [0, 2, 1, 3, 4, 0, 5, 0])
    np.testing.assert_array_equal(packed[1], [6, 8, 7, 9, 10, 0, 11, 0])
    depthwise = pack_c_weight(np.arange(18, dtype=np.int8).reshape(2, 1, 3, 3), "depthwise")
    np.testing.assert_array_equal(depthwise, np.arange(18).reshape(2, 9))


def test_helium_scratch_sizes_follow_the_compiler():
    """The kernels' scratch is sized for the path the target's compiler takes: Helium on
    cortex-m55 (``__ARM_FEATURE_MVE``), the SMLAD + FPU path on cortex-m7 and cortex-m4,
    portable C on the host; every path's needs where the compiler cannot run."""
    require_tools("arm-none-eabi-gcc")
    from dataclasses import replace

    from hwcomp.lower.mcu.int8 import c_kernel_path
    from hwcomp.targets import load_target

    assert c_kernel_path(load_target("cortex-m55")) == "helium"
    assert c_kernel_path(load_target("cortex-m7")) == "dsp"
    assert c_kernel_path(load_target("cortex-m4")) == "dsp"
    assert c_kernel_path(load_target("host")) == "c"
    missing = replace(load_target("cortex-m4"), cross_compiler="/nonexistent/gcc")
    assert c_kernel_path(missing) == "any"


def _quantize_s8(float_path, out, samples):
    """``out``: the model as a user's QDQ model, onnxruntime's quantize_static with s8
    activations and per-channel s8 weights, calibrated on ``samples`` (one input each)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": s} for s in samples])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(float_path, str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return out


def test_s8_activations_of_a_users_qdq_model_run_the_s8_kernels(tmp_path):
    """A QDQ model quantized by onnxruntime's own quantize_static with s8 activations (a
    user's model, no --precision): the s8 entry points (SXTB16 inputs, SSAT outputs) of the
    transposed 3x3 depthwise rows and the convolution's channel pairs, on the board and the
    host, against onnxruntime."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    builder = _layer_model((1, 6, 11, 4), 6, 3, 1, 6, None, 1)
    float_path = model_zoo.save(builder.model("layer", [1, 6, 11, 4], "logits", [1, 3, 11, 4]),
                                str(tmp_path / "float.onnx"))
    samples = np.random.default_rng(3).standard_normal((16, 1, 6, 11, 4)).astype(np.float32)

    quantized = _quantize_s8(float_path, tmp_path / "layer.onnx", samples)
    done = run_cli("build", str(quantized), "--target", "cortex-m7", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "out" / "layer-cortex-m7"
    manifest = json.loads((bundle / "manifest.json").read_text())
    emulated = manifest["verification"]["outputs"][0]["max_abs_error"]
    _assert_matches_reference(emulated, bundle)
    assert manifest["verification"]["runs"]["host build"][0]["max_abs_error"] == emulated
    source = (bundle / "lib" / "kernels.c").read_text()
    assert "hwcomp_q8_depthwise_s8s8" in source and "hwcomp_q8_conv_s8s8" in source


def _float_steps_model():
    """A residual add with ReLU, a 3x3 stride-2 max pool on an odd map (padding 1), and a
    global average pool: the steps between quantized layers that hwcomp_q8_elementwise and
    hwcomp_q8_maxpool run."""
    b = model_zoo._Builder(21)
    x = b.node("Relu", [b.conv("input", 3, 5, 3)])
    shortcut = b.conv("input", 3, 5, 1)
    x = b.node("Relu", [b.node("Add", [x, shortcut])])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.conv(x, 5, 7, 1)
    b.head(x, 7, 4)
    return b.model("steps", [1, 3, 9, 11], "logits", [1, 4])


@pytest.mark.parametrize("target", ["cortex-m7", "cortex-m55"])
def test_add_pools_and_mean_run_on_8_bit_values(tmp_path, target):
    """The residual add (+ ReLU), the max pool and the global mean read and write 8-bit
    tensors in hwcomp's C (no float tensor between layers), on the board and the host, and
    match onnxruntime; the layer count report says so."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    path = model_zoo.save(_float_steps_model(), str(tmp_path / "steps.onnx"))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(5).standard_normal(
        (16, 3, 9, 11)).astype(np.float32))
    done = run_cli("build", path, "--target", target, "--precision", "int8",
                   "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "out" / f"steps-{target}"
    manifest = json.loads((bundle / "manifest.json").read_text())
    emulated = manifest["verification"]["outputs"][0]["max_abs_error"]
    _assert_matches_reference(emulated, bundle)
    assert manifest["verification"]["runs"]["host build"][0]["max_abs_error"] == emulated
    source = (bundle / "lib" / "kernels.c").read_text()
    calls = re.findall(r"^ +(hwcomp_q8_\w+)\(", source, re.M)
    assert calls.count("hwcomp_q8_elementwise_u8u8") == 2  # the add and the mean
    assert calls.count("hwcomp_q8_maxpool_u8u8") == 1
    ops = manifest["integer_kernels"]["ops"]
    assert any(op.startswith("add ") for op in ops) and any(op.startswith("mean ") for op in ops)
    assert any(op.startswith("max_pool2d ") for op in ops)
    # Nothing dequantized between the layers: the only float kernels left are the model's
    # float input and output.
    kernels = [s["kernel"] for s in manifest["layer_counts"]["steps"]]
    assert [k for k in kernels if not k.startswith("hwcomp_int8_")] == [
        kernels[0], kernels[-1]]


def test_add_pools_and_mean_on_s8_activations_of_a_users_qdq_model(tmp_path):
    """The same steps with s8 activations (onnxruntime's quantize_static, QInt8): the tables
    indexed by the byte of an s8 value, the max on s8 order, the s8 saturation."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    float_path = model_zoo.save(_float_steps_model(), str(tmp_path / "float.onnx"))
    samples = np.random.default_rng(6).standard_normal((16, 1, 3, 9, 11)).astype(np.float32)

    _quantize_s8(float_path, tmp_path / "steps.onnx", samples)
    done = run_cli("build", str(tmp_path / "steps.onnx"), "--target", "cortex-m7", "-o",
                   str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "out" / "steps-cortex-m7"
    manifest = json.loads((bundle / "manifest.json").read_text())
    emulated = manifest["verification"]["outputs"][0]["max_abs_error"]
    _assert_matches_reference(emulated, bundle)
    assert manifest["verification"]["runs"]["host build"][0]["max_abs_error"] == emulated
    calls = re.findall(r"^ +(hwcomp_q8_\w+)\(", (bundle / "lib" / "kernels.c").read_text(), re.M)
    assert "hwcomp_q8_elementwise_s8s8" in calls and "hwcomp_q8_maxpool_s8s8" in calls
