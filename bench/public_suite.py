"""The public benchmark suite (issue 19): 16 architectures people deploy, built in code.

No model hub and no torch: each network is written with ONNX's helper at its published
shapes (layer widths, kernels, strides, groups, input sizes) with seeded He-normal weights,
and every BatchNormalization's running mean and variance are then set from the statistics
of its own input on seeded batches (in order, so each sees the ones before it already
normalised): outputs are not ~0 and verification compares real numbers. Op classes covered:
plain residual, depthwise-separable with squeeze-excite and hardswish/SiLU, 5x5 depthwise,
channel shuffle, fire modules, tiny maps, grouped convs (RegNet, ResNeXt), 1-D audio
front-ends (Whisper, wav2vec2 with its grouped positional conv), dilated convs (ASPP),
transposed convs (U-Net decoder), an encoder (DistilBERT) and a decoder-only transformer.

    .venv/bin/python bench/public_suite.py OUT_DIR [--models a,b]   # writes OUT_DIR/<name>.onnx
    .venv/bin/python bench/compare_ort.py --suite public             # times them
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.model_zoo import _Builder  # noqa: E402

OPSET = 20


class Net(_Builder):
    """``_Builder`` plus the blocks of the suite's architectures."""

    def act(self, x: str, kind: str | None) -> str:
        if kind is None:
            return x
        if kind == "Relu6":
            return self.node("Clip", [x, self.const(np.float32(0), "lo"),
                                      self.const(np.float32(6), "hi")])
        if kind == "SiLU":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        return self.node(kind, [x])  # Relu, HardSwish, HardSigmoid, Gelu

    def cba(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
            act: str | None = "Relu", dilation: int = 1) -> str:
        """Conv (no bias), BatchNorm, activation: the torchvision block."""
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in))
        pad = dilation * (k - 1) // 2
        y = self.node("Conv", [x, self.const(w.astype(np.float32))], kernel_shape=[k, k],
                      strides=[stride, stride], pads=[pad] * 4, group=group,
                      dilations=[dilation, dilation])
        return self.act(self.bn(y, cout), act)

    def linear(self, x: str, cin: int, cout: int, bias: bool = True) -> str:
        w = (self.rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32)
        y = self.node("MatMul", [x, self.const(w)])
        if not bias:
            return y
        return self.node("Add", [y, self.const((0.01 * self.rng.standard_normal(cout))
                                                .astype(np.float32))])

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        b = (0.01 * self.rng.standard_normal(cout)).astype(np.float32)
        return self.node("Gemm", [x, self.const(w), self.const(b)], transB=1)

    def squeeze_excite(self, x: str, c: int, squeezed: int, gate: str = "Sigmoid",
                       inner: str = "Relu") -> str:
        pooled = self.node("GlobalAveragePool", [x])
        w1 = self.rng.standard_normal((squeezed, c, 1, 1)) * np.sqrt(2.0 / c)
        w2 = self.rng.standard_normal((c, squeezed, 1, 1)) * np.sqrt(1.0 / squeezed)
        y = self.node("Conv", [pooled, self.const(w1.astype(np.float32)),
                               self.const(np.zeros(squeezed, np.float32))], kernel_shape=[1, 1])
        y = self.act(y, inner)
        y = self.node("Conv", [y, self.const(w2.astype(np.float32)),
                               self.const(np.full(c, 1.0, np.float32))], kernel_shape=[1, 1])
        return self.node("Mul", [x, self.node(gate, [y])])

    def conv1d(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0,
               group: int = 1, bias: bool = True) -> str:
        w = self.rng.standard_normal((cout, cin // group, k)) * np.sqrt(2.0 / (cin // group * k))
        inputs = [x, self.const(w.astype(np.float32))]
        if bias:
            inputs.append(self.const((0.01 * self.rng.standard_normal(cout)).astype(np.float32)))
        return self.node("Conv", inputs, kernel_shape=[k], strides=[stride], pads=[pad, pad],
                         group=group)

    def layer_norm(self, x: str, dim: int) -> str:
        scale = (1 + 0.1 * self.rng.standard_normal(dim)).astype(np.float32)
        bias = (0.1 * self.rng.standard_normal(dim)).astype(np.float32)
        return self.node("LayerNormalization", [x, self.const(scale), self.const(bias)], axis=-1)

    def finish(self, name: str, inputs: list[onnx.ValueInfoProto],
               output_shape: list[int]) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "output"
        graph = helper.make_graph(
            self.nodes, name, inputs,
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=10, producer_name="hwcomp-bench")
        onnx.checker.check_model(model)
        return model


def _image(size: int, channels: int = 3) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])]


def _classifier(b: Net, x: str, c: int, classes: int = 1000) -> str:
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    return b.gemm(flat, c, classes)


# --- CNNs ----------------------------------------------------------------------------------

def resnet18(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x = b.node("MaxPool", [b.cba("input", 3, 64, 7, 2)], kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                         (512, 1)]:
        y = b.cba(b.cba(x, cin, cout, 3, stride), cout, cout, 3, act=None)
        short = x if stride == 1 and cin == cout else b.cba(x, cin, cout, 1, stride, act=None)
        x, cin = b.node("Relu", [b.node("Add", [y, short])]), cout
    _classifier(b, x, 512)
    return b.finish("resnet18", _image(224), [1, 1000])


def _inverted_residual(b: Net, x: str, cin: int, cout: int, k: int, stride: int, expand: float,
                       act: str, se: int | None, se_gate: str = "HardSigmoid") -> str:
    hidden = int(round(cin * expand))
    y = b.cba(x, cin, hidden, 1, act=act) if hidden != cin else x
    y = b.cba(y, hidden, hidden, k, stride, group=hidden, act=act)
    if se:
        y = b.squeeze_excite(y, hidden, se, gate=se_gate,
                             inner="SiLU" if se_gate == "Sigmoid" else "Relu")
    y = b.cba(y, hidden, cout, 1, act=None)
    return b.node("Add", [x, y]) if stride == 1 and cin == cout else y


def mobilenet_v2(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x, cin = b.cba("input", 3, 32, 3, 2, act="Relu6"), 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            x, cin = _inverted_residual(b, x, cin, c, 3, s if i == 0 else 1, t, "Relu6", None), c
    x = b.cba(x, cin, 1280, 1, act="Relu6")
    _classifier(b, x, 1280)
    return b.finish("mobilenet_v2", _image(224), [1, 1000])


def mobilenet_v3_small(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x, cin = b.cba("input", 3, 16, 3, 2, act="HardSwish"), 16
    # (kernel, expanded, out, squeeze-excite, activation, stride): torchvision's table
    for k, exp, c, se, act, s in [
            (3, 16, 16, True, "Relu", 2), (3, 72, 24, False, "Relu", 2),
            (3, 88, 24, False, "Relu", 1), (5, 96, 40, True, "HardSwish", 2),
            (5, 240, 40, True, "HardSwish", 1), (5, 240, 40, True, "HardSwish", 1),
            (5, 120, 48, True, "HardSwish", 1), (5, 144, 48, True, "HardSwish", 1),
            (5, 288, 96, True, "HardSwish", 2), (5, 576, 96, True, "HardSwish", 1),
            (5, 576, 96, True, "HardSwish", 1)]:
        squeezed = max(8, (exp // 4 + 4) // 8 * 8) if se else None
        x, cin = _inverted_residual(b, x, cin, c, k, s, exp / cin, act, squeezed), c
    x = b.cba(x, cin, 576, 1, act="HardSwish")
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    b.gemm(b.act(b.gemm(flat, 576, 1024), "HardSwish"), 1024, 1000)
    return b.finish("mobilenet_v3_small", _image(224), [1, 1000])


def efficientnet_b0(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x, cin = b.cba("input", 3, 32, 3, 2, act="SiLU"), 32
    for t, k, s, c, n in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(n):
            squeezed = max(1, cin // 4)
            x, cin = _inverted_residual(b, x, cin, c, k, s if i == 0 else 1, t, "SiLU",
                                        squeezed, se_gate="Sigmoid"), c
    x = b.cba(x, cin, 1280, 1, act="SiLU")
    _classifier(b, x, 1280)
    return b.finish("efficientnet_b0", _image(224), [1, 1000])


def mnasnet1_0(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x = b.cba("input", 3, 32, 3, 2)
    x = b.cba(b.cba(x, 32, 32, 3, group=32), 32, 16, 1, act=None)
    cin = 16
    for t, k, s, c, n in [(3, 3, 2, 24, 3), (3, 5, 2, 40, 3), (6, 5, 2, 80, 3), (6, 3, 1, 96, 2),
                          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(n):
            x, cin = _inverted_residual(b, x, cin, c, k, s if i == 0 else 1, t, "Relu", None), c
    x = b.cba(x, cin, 1280, 1)
    _classifier(b, x, 1280)
    return b.finish("mnasnet1_0", _image(224), [1, 1000])


def _shuffle(b: Net, x: str, c: int, size: int) -> str:
    shape = b.const(np.array([1, 2, c // 2, size, size], np.int64), "shape")
    y = b.node("Transpose", [b.node("Reshape", [x, shape])], perm=[0, 2, 1, 3, 4])
    return b.node("Reshape", [y, b.const(np.array([1, c, size, size], np.int64), "shape")])


def shufflenet_v2(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x = b.node("MaxPool", [b.cba("input", 3, 24, 3, 2)], kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    cin, size = 24, 56
    for c, repeats in [(116, 4), (232, 8), (464, 4)]:
        half = c // 2
        for i in range(repeats):
            if i == 0:
                left = b.cba(b.cba(x, cin, cin, 3, 2, group=cin, act=None), cin, half, 1)
                right = b.cba(x, cin, half, 1)
                right = b.cba(right, half, half, 3, 2, group=half, act=None)
                right = b.cba(right, half, half, 1)
                size //= 2
            else:
                parts = [b.name("split_") for _ in range(2)]
                b.nodes.append(helper.make_node(
                    "Split", [x, b.const(np.array([half, half], np.int64), "sizes")], parts,
                    name=b.name("Split"), axis=1))
                left = parts[0]
                right = b.cba(b.cba(b.cba(parts[1], half, half, 1), half, half, 3, group=half,
                                    act=None), half, half, 1)
            x, cin = _shuffle(b, b.node("Concat", [left, right], axis=1), c, size), c
    x = b.cba(x, cin, 1024, 1)
    _classifier(b, x, 1024)
    return b.finish("shufflenet_v2", _image(224), [1, 1000])


def squeezenet1_1(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)

    def conv_relu(x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> str:
        w = b.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        bias = 0.01 * b.rng.standard_normal(cout)
        return b.node("Relu", [b.node("Conv", [x, b.const(w.astype(np.float32)),
                                               b.const(bias.astype(np.float32))],
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad] * 4)])

    def fire(x: str, cin: int, squeeze: int, expand: int) -> str:
        s = conv_relu(x, cin, squeeze, 1)
        return b.node("Concat", [conv_relu(s, squeeze, expand, 1),
                                 conv_relu(s, squeeze, expand, 3, pad=1)], axis=1)

    def pool(x: str) -> str:
        return b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)

    x = pool(conv_relu("input", 3, 64, 3, 2))
    x = pool(fire(fire(x, 64, 16, 64), 128, 16, 64))
    x = pool(fire(fire(x, 128, 32, 128), 256, 32, 128))
    for cin, s, e in [(256, 48, 192), (384, 48, 192), (384, 64, 256), (512, 64, 256)]:
        x = fire(x, cin, s, e)
    x = conv_relu(x, 512, 1000, 1)
    b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    return b.finish("squeezenet1_1", _image(224), [1, 1000])


def mobilenet_v1_025_96(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x = b.cba("input", 3, 8, 3, 2, act="Relu6")
    cin = 8
    for c, s in [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1),
                 (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]:
        x = b.cba(b.cba(x, cin, cin, 3, s, group=cin, act="Relu6"), cin, c, 1, act="Relu6")
        cin = c
    _classifier(b, x, 256)
    return b.finish("mobilenet_v1_025_96", _image(96), [1, 1000])


def _bottleneck_grouped(b: Net, x: str, cin: int, cout: int, stride: int, width: int,
                        group_width: int) -> str:
    y = b.cba(x, cin, width, 1)
    y = b.cba(y, width, width, 3, stride, group=width // group_width)
    y = b.cba(y, width, cout, 1, act=None)
    short = x if stride == 1 and cin == cout else b.cba(x, cin, cout, 1, stride, act=None)
    return b.node("Relu", [b.node("Add", [y, short])])


def regnet_x_400mf(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x, cin = b.cba("input", 3, 32, 3, 2), 32
    for width, depth in [(32, 1), (64, 2), (160, 7), (400, 12)]:
        for i in range(depth):
            x = _bottleneck_grouped(b, x, cin, width, 2 if i == 0 else 1, width, 16)
            cin = width
    _classifier(b, x, cin)
    return b.finish("regnet_x_400mf", _image(224), [1, 1000])


def resnext26_32x4d(seed: int = 0) -> onnx.ModelProto:
    b = Net(seed)
    x = b.node("MaxPool", [b.cba("input", 3, 64, 7, 2)], kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    cin = 64
    for width, cout, stride in [(128, 256, 1), (256, 512, 2), (512, 1024, 2), (1024, 2048, 2)]:
        for i in range(2):
            x = _bottleneck_grouped(b, x, cin, cout, stride if i == 0 else 1, width, width // 32)
            cin = cout
    _classifier(b, x, cin)
    return b.finish("resnext26_32x4d", _image(224), [1, 1000])


def deeplab_aspp(seed: int = 0) -> onnx.ModelProto:
    """A dilated segmentation net: output stride 8 backbone, ASPP at rates 6/12/18."""
    b = Net(seed)
    x, cin = b.cba("input", 3, 32, 3, 2), 32
    for c, s, d in [(64, 2, 1), (128, 2, 1), (128, 1, 2), (256, 1, 2), (256, 1, 4)]:
        x = b.cba(b.cba(x, cin, c, 3, s, dilation=d), c, c, 3, dilation=d)
        cin = c
    branches = [b.cba(x, cin, 128, 1)] + [b.cba(x, cin, 128, 3, dilation=r) for r in (6, 12, 18)]
    y = b.cba(b.node("Concat", branches, axis=1), 512, 128, 1)
    w = (b.rng.standard_normal((21, 128, 1, 1)) * np.sqrt(1.0 / 128)).astype(np.float32)
    b.node("Conv", [y, b.const(w), b.const(np.zeros(21, np.float32))], kernel_shape=[1, 1])
    return b.finish("deeplab_aspp", _image(256), [1, 21, 32, 32])


def unet_decoder(seed: int = 0) -> onnx.ModelProto:
    """A small U-Net: strided encoder, ConvTranspose 2x2/2 upsampling with skip concats."""
    b = Net(seed)
    skips, x, cin = [], "input", 3
    for c in (32, 64, 128, 256):
        x = b.cba(b.cba(x, cin, c, 3), c, c, 3)
        skips.append((x, c))
        x, cin = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), c
    x = b.cba(x, cin, 512, 3)
    cin = 512
    for skip, c in reversed(skips):
        w = b.rng.standard_normal((cin, c, 2, 2)) * np.sqrt(2.0 / (cin * 4))
        up = b.node("ConvTranspose", [x, b.const(w.astype(np.float32)),
                                      b.const(np.zeros(c, np.float32))],
                    kernel_shape=[2, 2], strides=[2, 2])
        x = b.cba(b.cba(b.node("Concat", [up, skip], axis=1), 2 * c, c, 3), c, c, 3)
        cin = c
    w = (b.rng.standard_normal((2, cin, 1, 1)) * np.sqrt(1.0 / cin)).astype(np.float32)
    b.node("Conv", [x, b.const(w), b.const(np.zeros(2, np.float32))], kernel_shape=[1, 1])
    return b.finish("unet_decoder", _image(128), [1, 2, 128, 128])


# --- audio front-ends -------------------------------------------------------------------

def whisper_tiny_frontend(seed: int = 0) -> onnx.ModelProto:
    """Whisper-tiny's encoder stem: 80 mel x 3000 frames, conv k3 then k3/2, GELU."""
    b = Net(seed)
    x = b.node("Gelu", [b.conv1d("input", 80, 384, 3, pad=1)])
    x = b.node("Gelu", [b.conv1d(x, 384, 384, 3, stride=2, pad=1)])
    x = b.node("Transpose", [x], perm=[0, 2, 1])
    b.layer_norm(x, 384)
    return b.finish("whisper_tiny_frontend",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 80, 3000])],
                    [1, 1500, 384])


def wav2vec2_frontend(seed: int = 0) -> onnx.ModelProto:
    """wav2vec2-base's feature encoder on 1 s of 16 kHz audio, projection and positional conv."""
    b = Net(seed)
    x = b.conv1d("input", 1, 512, 10, stride=5, bias=False)
    scale = (1 + 0.1 * b.rng.standard_normal(512)).astype(np.float32)
    # GroupNorm with one group per channel (wav2vec2-base) is InstanceNormalization.
    x = b.node("Gelu", [b.node("InstanceNormalization", [x, b.const(scale),
                                                         b.const(np.zeros(512, np.float32))])])
    for k in (3, 3, 3, 3, 2, 2):
        x = b.node("Gelu", [b.conv1d(x, 512, 512, k, stride=2, bias=False)])
    x = b.layer_norm(b.node("Transpose", [x], perm=[0, 2, 1]), 512)  # (1, 49, 512)
    x = b.linear(x, 512, 768)
    conv = b.conv1d(b.node("Transpose", [x], perm=[0, 2, 1]), 768, 768, 128, pad=64, group=16)
    sliced = b.node("Slice", [conv, b.const(np.array([0], np.int64), "s"),
                              b.const(np.array([49], np.int64), "e"),
                              b.const(np.array([2], np.int64), "a")])
    x = b.node("Add", [x, b.node("Transpose", [b.node("Gelu", [sliced])], perm=[0, 2, 1])])
    b.layer_norm(x, 768)
    return b.finish("wav2vec2_frontend",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16000])],
                    [1, 49, 768])


# --- transformers -----------------------------------------------------------------------

def _attention(b: Net, x: str, tokens: int, dim: int, heads: int, mask: str | None) -> str:
    head = dim // heads

    def split(y: str) -> str:
        shape = b.const(np.array([1, tokens, heads, head], np.int64), "shape")
        return b.node("Transpose", [b.node("Reshape", [y, shape])], perm=[0, 2, 1, 3])

    q, k, v = (split(b.linear(x, dim, dim)) for _ in range(3))
    scores = b.node("Mul", [b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])]),
                            b.const(np.float32(1 / np.sqrt(head)), "scale")])
    if mask is not None:
        scores = b.node("Add", [scores, mask])
    attn = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]),
                                b.const(np.array([1, tokens, dim], np.int64), "shape")])
    return b.linear(merged, dim, dim)


def _embed(b: Net, vocab: int, tokens: int, dim: int) -> str:
    table = (0.02 * b.rng.standard_normal((vocab, dim))).astype(np.float32)
    positions = (0.02 * b.rng.standard_normal((1, tokens, dim))).astype(np.float32)
    return b.node("Add", [b.node("Gather", [b.const(table), "input"]), b.const(positions)])


def _ids(tokens: int) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info("input", TensorProto.INT64, [1, tokens])]


def distilbert(seed: int = 0, tokens: int = 32) -> onnx.ModelProto:
    """DistilBERT-base: 6 post-norm layers, 768 wide, 12 heads, GELU FFN 3072, seq 32."""
    b = Net(seed)
    dim = 768
    x = b.layer_norm(_embed(b, 30522, tokens, dim), dim)
    for _ in range(6):
        x = b.layer_norm(b.node("Add", [x, _attention(b, x, tokens, dim, 12, None)]), dim)
        ffn = b.linear(b.node("Gelu", [b.linear(x, dim, 3072)]), 3072, dim)
        x = b.layer_norm(b.node("Add", [x, ffn]), dim)
    return b.finish("distilbert", _ids(tokens), [1, tokens, dim])


def gpt_small_decoder(seed: int = 0, tokens: int = 64) -> onnx.ModelProto:
    """A decoder-only transformer: 4 pre-norm layers, 256 wide, 4 heads, causal, vocab 8192."""
    b = Net(seed)
    dim, vocab = 256, 8192
    causal = np.triu(np.full((tokens, tokens), -1e9, np.float32), k=1)[None, None]
    mask = b.const(causal, "mask")
    x = _embed(b, vocab, tokens, dim)
    for _ in range(4):
        x = b.node("Add", [x, _attention(b, b.layer_norm(x, dim), tokens, dim, 4, mask)])
        ffn = b.linear(b.node("Gelu", [b.linear(b.layer_norm(x, dim), dim, 4 * dim)]),
                       4 * dim, dim)
        x = b.node("Add", [x, ffn])
    b.linear(b.layer_norm(x, dim), dim, vocab, bias=False)
    return b.finish("gpt_small_decoder", _ids(tokens), [1, tokens, vocab])


SUITE: dict[str, tuple[str, Callable[[], onnx.ModelProto]]] = {
    "resnet18": ("ResNet-18, 224 (plain residual)", resnet18),
    "mobilenet_v2": ("MobileNetV2, 224 (depthwise, ReLU6)", mobilenet_v2),
    "mobilenet_v3_small": ("MobileNetV3-small, 224 (SE, hardswish, 5x5 dw)", mobilenet_v3_small),
    "efficientnet_b0": ("EfficientNet-B0, 224 (SE, SiLU, 5x5 dw)", efficientnet_b0),
    "mnasnet1_0": ("MnasNet-1.0, 224 (5x5 dw)", mnasnet1_0),
    "shufflenet_v2": ("ShuffleNetV2-1.0, 224 (channel shuffle, split)", shufflenet_v2),
    "squeezenet1_1": ("SqueezeNet-1.1, 224 (fire modules)", squeezenet1_1),
    "mobilenet_v1_025_96": ("MobileNetV1-0.25, 96 (tiny maps)", mobilenet_v1_025_96),
    "regnet_x_400mf": ("RegNetX-400MF, 224 (grouped, 16 per group)", regnet_x_400mf),
    "resnext26_32x4d": ("ResNeXt-26 32x4d, 224 (grouped)", resnext26_32x4d),
    "deeplab_aspp": ("DeepLab-style ASPP, 256 (dilated)", deeplab_aspp),
    "unet_decoder": ("U-Net, 128 (ConvTranspose, skips)", unet_decoder),
    "whisper_tiny_frontend": ("Whisper-tiny conv front-end, 80x3000 (1-D)", whisper_tiny_frontend),
    "wav2vec2_frontend": ("wav2vec2 feature encoder, 1 s (1-D, grouped k128)", wav2vec2_frontend),
    "distilbert": ("DistilBERT, seq 32 (encoder)", distilbert),
    "gpt_small_decoder": ("decoder-only transformer, seq 64 (causal)", gpt_small_decoder),
}


def set_batchnorm_statistics(model: onnx.ModelProto, batches: int = 2,
                             seed: int = 0) -> onnx.ModelProto:
    """Set every BatchNormalization's mean/variance from its input on seeded batches.

    In graph order, so each normalises what the ones before it already produce.
    """
    rng = np.random.default_rng(seed)
    spec = model.graph.input[0].type.tensor_type
    shape = [d.dim_value for d in spec.shape.dim]
    feeds = [{model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}
             for _ in range(batches)]
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for node in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
        session = ort.InferenceSession(probe.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        values = np.concatenate([session.run([node.input[0]], f)[0] for f in feeds])
        axes = tuple(i for i in range(values.ndim) if i != 1)
        for name, stat in ((node.input[3], values.mean(axis=axes)),
                           (node.input[4], values.var(axis=axes) + 1e-3)):
            model.graph.initializer[inits[name]].CopyFrom(
                numpy_helper.from_array(stat.astype(np.float32), name))
    return model


def build(name: str) -> onnx.ModelProto:
    """The suite model ``name`` with BatchNorm statistics set from data."""
    return set_batchnorm_statistics(SUITE[name][1]())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default=",".join(SUITE))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        model = build(name)
        onnx.save(model, args.out / f"{name}.onnx")
        print(f"{name}: {len(model.graph.node)} nodes -> {args.out / f'{name}.onnx'}")


if __name__ == "__main__":
    main()
