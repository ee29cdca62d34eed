"""Small ONNX models built in code with seeded weights (no downloads).

Each builder returns an ``onnx.ModelProto`` at opset 17 / IR 10 that onnxruntime runs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(cout) * 0.01
        pad = k // 2
        return self.node("Conv", [x, self.const(w.astype(np.float32)), self.const(b.astype(np.float32))],
                         kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        params = [
            1.0 + 0.1 * self.rng.standard_normal(c), 0.1 * self.rng.standard_normal(c),
            0.1 * self.rng.standard_normal(c), 1.0 + 0.1 * self.rng.random(c),
        ]
        return self.node("BatchNormalization", [x, *(self.const(p.astype(np.float32)) for p in params)])

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                act: str | None = "Relu") -> str:
        y = self.bn(self.conv(x, cin, cout, k, stride, group), cout)
        if act == "Relu6":
            bounds = [self.const(np.float32(0.0), "lo"), self.const(np.float32(6.0), "hi")]
            return self.node("Clip", [y, *bounds])
        return self.node(act, [y]) if act else y

    def head(self, x: str, c: int, classes: int) -> str:
        pooled = self.node("GlobalAveragePool", [x])
        flat = self.node("Flatten", [pooled], axis=1)
        w = (self.rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)
        b = (self.rng.standard_normal(classes) * 0.01).astype(np.float32)
        return self.node("Gemm", [flat, self.const(w), self.const(b)], transB=1)

    def model(self, name: str, x_shape: list, out: str, out_shape: list) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "logits"
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=10, producer_name="hwcomp-tests")
        onnx.checker.check_model(model)
        return model


def resnet_like(seed: int = 0, size: int | str = 32, width: int = 16, classes: int = 10,
                batch: int | str = 1) -> onnx.ModelProto:
    """A ResNet-style CNN: stem, two basic residual blocks (one strided), head."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, width, 3)
    for cin, cout, stride in [(width, width, 1), (width, 2 * width, 2)]:
        y = b.conv_bn(x, cin, cout, 3, stride)
        y = b.conv_bn(y, cout, cout, 3, act=None)
        shortcut = x if (cin == cout and stride == 1) else b.conv_bn(x, cin, cout, 1, stride, act=None)
        x = b.node("Relu", [b.node("Add", [y, shortcut])])
    b.head(x, 2 * width, classes)
    return b.model("resnet_like", [batch, 3, size, size], "logits", [batch, classes])


def mobilenet_like(seed: int = 0, size: int = 32, classes: int = 10) -> onnx.ModelProto:
    """A MobileNetV2-style CNN: inverted residuals with depthwise convs and ReLU6."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 16, 3, 2, act="Relu6")
    for cin, cout, stride, expand in [(16, 16, 1, 4), (16, 24, 2, 4), (24, 24, 1, 4)]:
        hidden = cin * expand
        y = b.conv_bn(x, cin, hidden, 1, act="Relu6")
        y = b.conv_bn(y, hidden, hidden, 3, stride, group=hidden, act="Relu6")
        y = b.conv_bn(y, hidden, cout, 1, act=None)
        x = b.node("Add", [x, y]) if (cin == cout and stride == 1) else y
    b.head(x, 24, classes)
    return b.model("mobilenet_like", [1, 3, size, size], "logits", [1, classes])


def ds_cnn(seed: int = 0, channels: int = 64, blocks: int = 4, classes: int = 12) -> onnx.ModelProto:
    """MLPerf Tiny's keyword-spotting DS-CNN shapes: a 49x10 MFCC map, a 10x4 stride-2 stem
    to 25x5x64, four depthwise-separable blocks, average pool, 12 classes."""
    b = _Builder(seed)
    w = (b.rng.standard_normal((channels, 1, 10, 4)) * np.sqrt(2.0 / 40)).astype(np.float32)
    bias = (b.rng.standard_normal(channels) * 0.01).astype(np.float32)
    x = b.node("Conv", ["input", b.const(w), b.const(bias)], kernel_shape=[10, 4],
               strides=[2, 2], pads=[4, 1, 5, 2])
    x = b.node("Relu", [b.bn(x, channels)])
    for _ in range(blocks):
        x = b.conv_bn(x, channels, channels, 3, group=channels)
        x = b.conv_bn(x, channels, channels, 1)
    b.head(x, channels, classes)
    return b.model("ds_cnn", [1, 1, 49, 10], "logits", [1, classes])


def mobilenet_v1_vww(seed: int = 0, classes: int = 2) -> onnx.ModelProto:
    """MLPerf Tiny's visual-wake-words shapes: MobileNetV1 at width 0.25 on a 96x96x3 image
    (13 depthwise-separable blocks, 8 to 256 channels, ReLU6), average pool, 2 classes."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 8, 3, 2, act="Relu6")
    cin = 8
    for cout, stride in [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1),
                         (128, 1), (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]:
        x = b.conv_bn(x, cin, cin, 3, stride, group=cin, act="Relu6")
        x = b.conv_bn(x, cin, cout, 1, act="Relu6")
        cin = cout
    b.head(x, cin, classes)
    return b.model("mobilenet_v1_vww", [1, 3, 96, 96], "logits", [1, classes])


def resnet8(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """MLPerf Tiny's image-classification ResNet-8 shapes: 32x32x3, a 16-channel stem and
    three residual stacks of 16, 32 and 64 channels, average pool, 10 classes."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 16, 3)
    for cin, cout, stride in [(16, 16, 1), (16, 32, 2), (32, 64, 2)]:
        y = b.conv_bn(x, cin, cout, 3, stride)
        y = b.conv_bn(y, cout, cout, 3, act=None)
        shortcut = x if (cin == cout and stride == 1) else b.conv_bn(x, cin, cout, 1, stride, act=None)
        x = b.node("Relu", [b.node("Add", [y, shortcut])])
    b.head(x, 64, classes)
    return b.model("resnet8", [1, 3, 32, 32], "logits", [1, classes])


def save(model: onnx.ModelProto, path: str) -> str:
    onnx.save(model, path)
    return path


def transformer_block(seed: int = 0, tokens: int = 16, dim: int = 64, heads: int = 4,
                      hidden: int = 128) -> onnx.ModelProto:
    """A pre-norm transformer encoder block: LayerNorm, multi-head attention, GELU MLP."""
    b = _Builder(seed)
    head_dim = dim // heads

    def linear(x: str, cin: int, cout: int) -> str:
        w = (b.rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32)
        bias = (b.rng.standard_normal(cout) * 0.01).astype(np.float32)
        return b.node("Add", [b.node("MatMul", [x, b.const(w)]), b.const(bias)])

    def layer_norm(x: str) -> str:
        scale = (1 + 0.1 * b.rng.standard_normal(dim)).astype(np.float32)
        bias = (0.1 * b.rng.standard_normal(dim)).astype(np.float32)
        return b.node("LayerNormalization", [x, b.const(scale), b.const(bias)], axis=-1)

    def split_heads(x: str) -> str:
        shape = b.const(np.array([1, tokens, heads, head_dim], np.int64), "shape")
        return b.node("Transpose", [b.node("Reshape", [x, shape])], perm=[0, 2, 1, 3])

    h = layer_norm("input")
    q, k, v = (split_heads(linear(h, dim, dim)) for _ in range(3))
    scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scaled = b.node("Mul", [scores, b.const(np.float32(1 / np.sqrt(head_dim)), "scale")])
    attn = b.node("MatMul", [b.node("Softmax", [scaled], axis=-1), v])
    merged = b.node("Reshape", [b.node("Transpose", [attn], perm=[0, 2, 1, 3]),
                                b.const(np.array([1, tokens, dim], np.int64), "shape")])
    x = b.node("Add", ["input", linear(merged, dim, dim)])
    mlp = linear(b.node("Gelu", [linear(layer_norm(x), dim, hidden)]), hidden, dim)
    b.node("Add", [x, mlp])
    b.opset = 20
    graph = helper.make_graph(
        b.nodes[:-1] + [helper.make_node("Add", b.nodes[-1].input, ["logits"], name="residual_out")],
        "transformer_block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, tokens, dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, tokens, dim])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10,
                              producer_name="hwcomp-tests")
    onnx.checker.check_model(model)
    return model


LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """One of the graph-only models the ``onnx`` package ships, with seeded weights.

    Their weights are ``ConstantOfShape`` nodes filling a constant; each becomes a seeded
    initializer (He-normal for weights, positive variances, near-one BN scales), and the
    inputs that merely shadow initializers (IR 3 style) are dropped.
    """
    from pathlib import Path

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes, seeded, shape_inputs = [], [], set()
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            nodes.append(node)
            continue
        shape = [int(d) for d in inits[node.input[0]]]
        shape_inputs.add(node.input[0])
        seeded.append(numpy_helper.from_array(_seed_tensor(node.output[0], shape, rng), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [t for t in model.graph.initializer if t.name not in shape_inputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + seeded)
    constant_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constant_names | shape_inputs]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = 10
    return model


def _seed_tensor(name: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    lowered = name.lower()
    if len(shape) <= 1:
        if "var" in lowered or "riv" in lowered:
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if lowered.endswith(("_s_0", "scale_0", "bn_w_0")) or "_s_" in lowered:
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) or 1
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def tiny_detector(seed: int = 0, size: int = 32, classes: int = 3) -> onnx.ModelProto:
    """An SSD-style detector: conv backbone, box and class heads, and a post-processing tail.

    Outputs ``boxes`` [1, A, 4] and ``scores`` [1, classes, A] come from the heads (A = 2
    anchors per cell of the last map); ``selected`` [K, 3] is NonMaxSuppression on them
    (data-dependent K), ``top_scores`` / ``top_index`` a TopK over the best class score:
    the tail a ``--outputs boxes,scores`` cut leaves to the host.
    """
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 8, 3, 2)
    x = b.conv_bn(x, 8, 16, 3, 2)
    x = b.conv_bn(x, 16, 16, 3, 1, group=16)
    x = b.conv_bn(x, 16, 24, 1)
    cells = (size // 4) ** 2
    anchors = 2 * cells
    box = b.conv(x, 24, 2 * 4, 3)                     # [1, 8, s, s]
    box = b.node("Transpose", [box], perm=[0, 2, 3, 1])
    box = b.node("Reshape", [box, b.const(np.array([1, anchors, 4], np.int64), "shape")])
    cls = b.conv(x, 24, 2 * classes, 3)
    cls = b.node("Transpose", [cls], perm=[0, 2, 3, 1])
    cls = b.node("Reshape", [cls, b.const(np.array([1, anchors, classes], np.int64), "shape")])
    cls = b.node("Transpose", [cls], perm=[0, 2, 1])
    b.nodes.append(helper.make_node("Sigmoid", [box], ["boxes"], name="boxes_sigmoid"))
    b.nodes.append(helper.make_node("Sigmoid", [cls], ["scores"], name="scores_sigmoid"))
    limits = [b.const(np.array([5], np.int64), "max_out"), b.const(np.array([0.5], np.float32), "iou"),
              b.const(np.array([0.3], np.float32), "thr")]
    b.nodes.append(helper.make_node("NonMaxSuppression", ["boxes", "scores", *limits], ["selected"],
                                    name="nms"))
    best = b.node("ReduceMax", ["scores"], axes=[1], keepdims=0)
    b.nodes.append(helper.make_node("TopK", [best, b.const(np.array([4], np.int64), "k")],
                                    ["top_scores", "top_index"], name="topk", axis=-1))
    graph = helper.make_graph(
        b.nodes, "tiny_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, anchors, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes, anchors]),
         helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3]),
         helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("top_index", TensorProto.INT64, [1, 4])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=10, producer_name="hwcomp-tests")
    onnx.checker.check_model(model)
    return model
