"""Winograd F(2x2, 3x3) convolutions: the transforms in numpy, the kernels against onnxruntime.

The kernels (:mod:`hwcomp.lower.cpu.kernels.winograd`) take NHWC stride-1 3x3 convs with
enough channels; these tests run them through hwcomp's rewrite, TVM's fusion and hwcomp's
default schedule rules on maps whose output is odd (a ragged last tile), with asymmetric
padding, input channels that are not whole vectors, 16 lanes (AVX-512) and 4 (NEON's tiles,
FMA by element; the TIR runs here too), each with bias, residual add and ReLU after it.
"""

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcomp.lower.cpu.kernels import winograd
from hwcomp.lower.cpu.kernels.conv_forms import ConvGeometry
from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.targets import load_target


def _direct(x, w, padding):
    """Cross-correlation of NCHW ``x`` (batch 1) with OIHW ``w``, padding (top, left, bottom, right)."""
    top, left, bottom, right = padding
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    return np.einsum("chwij,ocij->ohw", windows, w.astype(np.float64))[None]


def test_transforms_reproduce_a_direct_convolution_in_numpy():
    """V = B^T d B per 4x4 window, U = G g G^T (the packed weight matrix's layout), 16 GEMMs,
    Y = A^T M A: the direct conv's output to rounding, an odd map (the last tiles ragged)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 9, 7))
    w = rng.standard_normal((6, 5, 3, 3))
    padding = (1, 0, 1, 2)
    out_h, out_w, tiles_h, tiles_w = winograd.winograd_tiles(x.shape, padding)
    assert (out_h, out_w, tiles_h, tiles_w) == (9, 7, 5, 4)
    top, left = padding[:2]
    padded = np.zeros((5, 2 * tiles_h + 2, 2 * tiles_w + 2))
    padded[:, top:top + 9, left:left + 7] = x[0]
    u = winograd.winograd_weight(w).reshape(4, 4, 6, 5)
    y = np.zeros((6, 2 * tiles_h, 2 * tiles_w))
    for th in range(tiles_h):
        for tw in range(tiles_w):
            d = padded[:, 2 * th:2 * th + 4, 2 * tw:2 * tw + 4]
            v = np.einsum("ia,cab,jb->ijc", winograd.B_T, d, winograd.B_T)
            m = np.einsum("ijc,ijoc->ijo", v, u)
            y[:, 2 * th:2 * th + 2, 2 * tw:2 * tw + 2] = np.einsum(
                "pi,ijo,qj->opq", winograd.A_T, m, winograd.A_T)
    np.testing.assert_allclose(y[None, :, :out_h, :out_w], _direct(x, w, padding),
                               rtol=1e-5, atol=1e-5)


def _geometry(channels, out_channels, size=14, **changes):
    values = dict(data_shape=(1, channels, size, size), out_shape=(1, out_channels, size, size),
                  kernel=(3, 3), strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1),
                  groups=1, channels_last=True)
    values.update(changes)
    return ConvGeometry(**values)


def test_which_convs_take_winograd():
    """Stride-1 3x3 NHWC convs whose channels make the GEMMs outweigh the transforms."""
    spec = fma_spec(16)
    assert winograd.winograd_fits(_geometry(64, 64), 64, spec)
    assert winograd.winograd_fits(_geometry(32, 128), 128, spec)
    assert not winograd.winograd_fits(_geometry(16, 64), 64, spec)  # 12.8: transforms dominate
    assert not winograd.winograd_fits(_geometry(64, 72), 72, spec)  # 72: not whole vectors
    assert winograd.winograd_fits(_geometry(64, 72), 72, fma_spec(8))
    assert not winograd.winograd_fits(_geometry(64, 64, strides=(2, 2)), 64, spec)
    assert winograd.winograd_fits(_geometry(64, 64, dilation=(2, 2)), 64, spec)
    # Dilation 12 on a 14x14 map: the tiles' pixel pairs 12 apart overrun the map.
    assert not winograd.winograd_fits(_geometry(64, 64, dilation=(12, 12)), 64, spec)
    assert not winograd.winograd_fits(_geometry(64, 64, groups=2), 64, spec)
    assert not winograd.winograd_fits(_geometry(64, 64, channels_last=False), 64, spec)
    assert not winograd.winograd_fits(_geometry(512, 512, size=7), 512, spec)  # 16 tiles
    # Transformed maps beyond the cache need more work per transformed byte.
    assert winograd.winograd_fits(_geometry(128, 32, size=28), 32, spec)
    assert not winograd.winograd_fits(_geometry(128, 32, size=56), 32, spec)
    assert winograd.winograd_fits(_geometry(64, 64, size=56), 64, spec)


def _model(channels, out_channels, height, width, padding, dilation, seed):
    """Conv 3x3 (bias) + residual add + ReLU, NCHW."""
    rng = np.random.default_rng(seed)
    top, left, bottom, right = padding
    out_h, out_w = height + top + bottom - 2 * dilation[0], width + left + right - 2 * dilation[1]
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((out_channels, channels, 3, 3)) / np.sqrt(9 * channels))
            .astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b"),
        numpy_helper.from_array(
            rng.standard_normal((1, out_channels, out_h, out_w)).astype(np.float32), "r"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                              pads=[top, left, bottom, right], dilations=list(dilation)),
             helper.make_node("Add", ["c", "r"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                   [1, channels, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.mark.parametrize("lanes", [16, 4])
@pytest.mark.parametrize("channels,out_channels,height,width,padding,dilation", [
    (64, 64, 13, 17, (1, 1, 1, 1), (1, 1)),  # odd output both ways: the last tiles ragged
    (56, 48, 12, 11, (1, 0, 2, 1), (1, 1)),  # asymmetric padding; 56 inputs: not whole vectors
    (48, 96, 13, 13, (0, 0, 0, 0), (1, 1)),  # no padding: an 11x11 output
    (64, 48, 15, 20, (3, 3, 3, 3), (3, 2)),  # dilated (3 rows, 2 columns): tiles of pixels d apart
])
def test_winograd_kernels_match_onnxruntime(channels, out_channels, height, width, padding,
                                            dilation, lanes):
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight

    from hwcomp.lower.cpu.kernels.rewrite import rewrite_kernels, to_channels_last
    from hwcomp.lower.cpu.pipeline import fusion_passes
    from hwcomp.lower.cpu.rules import default_rules
    from hwcomp.lower.frontend.legalize import legalize_for_tvm
    from hwcomp.lower.frontend.relax_import import import_checked

    model = _model(channels, out_channels, height, width, padding, dilation,
                   seed=channels + height)
    legal, _ = legalize_for_tvm(ir.from_proto(model))
    mod = to_channels_last(import_checked(ir.to_proto(legal)))
    mod, summary = rewrite_kernels(mod, None, fma_spec(lanes))
    assert [label.split(": ", 1)[1] for label in summary.float_ops] == [
        "Winograd F(2x2, 3x3) NHWC kernels, fused epilogue"]
    target = load_target("host")
    failures: list[str] = []
    with target.tvm():
        mod = tvm.transform.Sequential([
            *fusion_passes(target.tvm()),
            dlight.ApplyDefaultSchedule(*default_rules(lanes=lanes, cores=2,
                                                       failures=failures))])(mod)
    assert failures == []
    scripts = {gv.name_hint: f.script() for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    # The output transform carries the residual add and ReLU in its store (one block, its
    # four pixels unrolled), in parallel over rows of tiles.
    (output,) = [s for s in scripts.values() if "hwcomp_winograd_output" in s]
    assert output.count('T.sblock("') - output.count('T.sblock("root")') == 1, output
    assert "T.max(" in output and "T.parallel(" in output and "T.unroll(T.int64(2))" in output, output
    (source,) = [s for s in scripts.values() if "hwcomp_winograd_input" in s]
    assert "T.parallel(" in source and re.search(r"T.unroll\((T.int64\()?16", source), source
    vm = relax.VirtualMachine(tvm.compile(mod, target=target.tvm()), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, channels, height, width)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
