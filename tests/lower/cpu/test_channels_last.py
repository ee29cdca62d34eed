"""Activations kept channels-last (NHWC) between hwcomp's fp32 kernels on x86, against onnxruntime.

A MobileNetV3/EfficientNet-shaped block chain built in code: a 3x3 conv, depthwise convs of
16-lane and 8-lane channel counts (stride 1 and 2, 3x3 and 5x5), 1x1 convs of channel counts
that are not whole vectors, a squeeze-excite gate (global pool, two 1x1 convs on a 1x1 map,
hard sigmoid, channel multiply), a residual add and a transposed convolution (which keeps
NCHW: its sub-pixel form is written for it). The build verifies the bundle against
onnxruntime on seeded inputs (1e-4); these tests also check which kernel each conv got and
that the only transposes of activations left are the model's input and output.
"""

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.lower import lowering_for
from hwcomp.lower.frontend.legalize import legalize_for_tvm
from hwcomp.targets import load_target


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    nodes, inits = [], []

    def conv(x, cin, cout, k, stride=1, group=1, act="Relu"):
        name = f"c{len(nodes)}"
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        inits.extend([numpy_helper.from_array(w.astype(np.float32), name + "w"),
                      numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1,
                                              name + "b")])
        nodes.append(helper.make_node("Conv", [x, name + "w", name + "b"], [name],
                                      kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[k // 2] * 4, group=group))
        if act is None:
            return name
        # ReLU6 as opset 11+ exporters write it: Clip with its bounds as initializers (the
        # frontend imports it as maximum / minimum PrimFuncs, not a Relax op).
        bounds = ["lo", "hi"] if act == "Clip" else []
        nodes.append(helper.make_node(act, [name, *bounds], [name + act]))
        return name + act

    x = conv("x", 16, 32, 3)                          # 3x3, 32 channels
    x = conv(x, 32, 32, 3, stride=2, group=32)        # depthwise, 16 lanes, stride 2
    x = conv(x, 32, 24, 1, act=None)                  # 1x1 to 24 (not whole vectors)
    inits.extend([numpy_helper.from_array(np.float32(0.0), "lo"),
                  numpy_helper.from_array(np.float32(6.0), "hi")])
    y = conv(x, 24, 24, 5, group=24, act="Clip")      # depthwise 5x5 on 24: 8 lanes, ReLU6
    pooled = "pool"
    nodes.append(helper.make_node("GlobalAveragePool", [y], [pooled]))
    gate = conv(conv(pooled, 24, 8, 1), 8, 24, 1, act="HardSigmoid")
    nodes.append(helper.make_node("Mul", [y, gate], ["excited"]))
    z = conv("excited", 24, 24, 1, act=None)
    nodes.append(helper.make_node("Add", [z, x], ["res"]))   # residual
    w = rng.standard_normal((24, 8, 2, 2)).astype(np.float32) * 0.3
    inits.append(numpy_helper.from_array(w, "tw"))
    nodes.append(helper.make_node("ConvTranspose", ["res", "tw"], ["up"], strides=[2, 2]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 18, 18])],
        [helper.make_tensor_value_info("up", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_convs_run_channels_last_and_match_onnxruntime(tmp_path):
    from hwcomp import api

    path = tmp_path / "chain.onnx"
    onnx.save(_chain(), path)
    result = api.build(path, "x86-avx512", tmp_path / "out", use_tuning_db=False,
                       verify="skip")
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    labels = [k.split(": ", 1)[1] for k in manifest["float_kernels"] if k.startswith("conv2d")]
    assert labels[0] == "NHWC kernel, fused epilogue", labels
    assert labels[1] == "depthwise NHWC kernel (16 lanes), fused epilogue", labels
    assert labels[2] == "NHWC kernel, fused epilogue", labels      # 1x1, input in place
    assert labels[3] == "depthwise NHWC kernel (8 lanes), fused epilogue", labels
    assert labels[4:6] == ["NHWC matmul over pixels"] * 2, labels  # the gate, on 1x1 maps
    assert labels[6] == "NHWC kernel, fused epilogue", labels
    transposed = [k for k in manifest["float_kernels"] if k.startswith("conv2d_transpose")]
    assert transposed and "NCHW" in transposed[0], transposed


def test_channels_last_bundle_matches_onnxruntime(tmp_path):
    """The same chain built for ``host`` and verified against onnxruntime (1e-4)."""
    from hwcomp import api

    path = tmp_path / "chain.onnx"
    onnx.save(_chain(), path)
    result = api.build(path, "host", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]
    assert any("NHWC" in k for k in manifest["float_kernels"]), manifest["float_kernels"]


def _prepared(target_name: str, model: onnx.ModelProto):
    """The Relax module the target's lowering prepares from ``model`` (kernels rewritten)."""
    target = load_target(target_name)
    legal, _ = legalize_for_tvm(ir.from_proto(model))
    return lowering_for(target).prepare(ir.to_proto(legal), target).module


def _scheduled_scripts(target_name: str, model: onnx.ModelProto) -> dict[str, str]:
    """Each PrimFunc of ``model`` after the target's CPU pipeline (schedules applied), by name."""
    import tvm

    from hwcomp.lower.cpu.pipeline import cpu_pipeline

    pipeline, _ = cpu_pipeline(load_target(target_name), None)
    scheduled = pipeline(_prepared(target_name, model))
    return {gv.name_hint: f.script() for gv, f in scheduled.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def _activation_transposes(target_name: str, model: onnx.ModelProto) -> list[str]:
    script = _prepared(target_name, model).script()
    return [line for line in script.splitlines() if "R.permute_dims(" in line]


@pytest.mark.parametrize("target", ["x86-avx2", "arm-a72"])
def test_only_the_input_and_the_transposed_conv_are_transposed(target):
    """The layout follows the activations through ReLU, a ReLU6 whose bounds are inputs and the
    gate's hard sigmoid (clips: rewritten as max/min, which follow any layout; the ReLU6 had a
    transpose to NCHW and back), the pool, the multiply and the residual add:
    one transpose in (the model's NCHW input), one back before the transposed conv (NCHW),
    and that conv's own sub-pixel shuffle. Cortex-A keeps NHWC too (it kept NCHW until its
    instruction counts said otherwise: bench/RESULTS.md, issue 21)."""
    lines = _activation_transposes(target, _chain())
    assert len(lines) == 3, lines
    assert "R.permute_dims(x, axes=[0, 2, 3, 1])" in lines[0]
    assert "axes=[0, 3, 1, 2]" in lines[1] and "axes=[0, 1, 4, 2, 5, 3]" in lines[2], lines



def _inception(branches: int) -> onnx.ModelProto:
    """1x1 convs of 16, 24, 8, ... channels from one input, concatenated, then a 3x3 conv."""
    rng = np.random.default_rng(branches)
    nodes, inits, outs, widths = [], [], [], [16, 24, 8, 32, 16][:branches]
    for i, width in enumerate(widths):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((width, 8, 1, 1)) * 0.4).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        outs.append(f"r{i}")
    total = sum(widths)
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((16, total, 3, 3)) * 0.1).astype(np.float32), "wout"))
    nodes += [helper.make_node("Concat", outs, ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "wout"], ["y"], pads=[1] * 4)]
    graph = helper.make_graph(
        nodes, "inception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.mark.parametrize("branches,copy_loops", [(4, True), (5, True), (2, False)])
def test_channel_concats_of_three_or_more_run_as_copy_loops(tmp_path, branches, copy_loops):
    """NHWC concatenates along the innermost axis, where TVM's concat walks an if-then-else
    chain per element: 3 or more inputs become one copy loop per input; verified against
    onnxruntime by the build (1e-4)."""
    from hwcomp import api

    model = _inception(branches)
    script = _prepared("host", model).script()
    assert ("R.concat(" not in script) == copy_loops, script
    path = tmp_path / "inception.onnx"
    onnx.save(model, path)
    result = api.build(path, "host", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]


def _silu_conv(channels: int, size: int, stride: int, scale: float) -> onnx.ModelProto:
    """A 3x3 conv to 24 channels with bias and SiLU (EfficientNetV2's stem and first blocks)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4,
                              strides=[stride] * 2),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((24, channels, 3, 3)) * scale)
                                     .astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b")]
    graph = helper.make_graph(
        nodes, "silu24",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def test_a_store_of_channels_not_whole_vectors_runs_power_of_two_vectors():
    """A 24-channel conv with SiLU stored each pixel's 24 channels as one <24 x float> vector,
    whose exponential LLVM split into a libm floor call per lane (4x the conv's time): the
    store runs 3 vectors of 8 (x86-avx512, 16 lanes). The next test builds and verifies the
    same kind of layer against onnxruntime."""
    scripts = _scheduled_scripts("x86-avx512", _silu_conv(16, 12, 1, 0.2)).values()
    assert not any("T.vectorized(T.int64(24))" in s for s in scripts)
    assert any("T.vectorized(T.int64(8))" in s for s in scripts)


def test_a_silu_conv_of_24_channels_matches_onnxruntime(tmp_path):
    """A 3 -> 24 SiLU stem of stride 2 built for ``host`` and verified by the build (1e-4)."""
    from hwcomp import api

    path = tmp_path / "stem24.onnx"
    onnx.save(_silu_conv(3, 30, 2, 0.3), path)
    result = api.build(path, "host", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]


@pytest.mark.parametrize("stride,ceil", [(1, 0), (2, 1)])
def test_nhwc_pools_read_their_input_in_place(tmp_path, stride, ceil):
    """A max pool between NHWC convs runs vectors over channels with the padding tested per
    tap (GoogLeNet's pools spent a copy of their padded input); verified by the build."""
    from hwcomp import api

    rng = np.random.default_rng(stride)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 8, 3, 3)) * 0.3)
                                     .astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[stride] * 2, ceil_mode=ceil)]
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    pools = [script for name, script in _scheduled_scripts("host", model).items()
             if "pool" in name]
    assert pools and not any("pad_temp" in script for script in pools), pools
    path = tmp_path / "pool.onnx"
    onnx.save(model, path)
    result = api.build(path, "host", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]
