"""hwcomp's fp32 CPU kernels against numpy: both loop orders of the conv kernel, the NCHW
pointwise kernel and the return to NCHW, on map sizes that do and do not divide into 16-wide
tiles."""

import re

import numpy as np
import pytest

from hwcomp.lower import kernel_spec
from hwcomp.lower.cpu.kernels import blocks, compute, tiling
from hwcomp.lower.cpu.kernels import spec as specs
from hwcomp.targets import load_target


def _blocks(script):
    """Blocks of a scheduled function's script, its root block aside."""
    return script.count('T.sblock("') - script.count('T.sblock("root")')


def _run(func, *arrays, out_shape):
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=load_target("host").tvm())
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib(*(tvm.runtime.tensor(a) for a in arrays), out)
    return out.numpy()


def _spec(isa):
    """The host's fp32 spec, or NEON's (4 lanes, FMA by element), whose TIR runs here too."""
    return specs.float_spec(load_target("host")) if isa == "host" else specs.fma_spec(4)


def _fused_with_epilogue(func, x, packed, out_shape, bias, residual, lanes):
    """Run kernel ``func`` with bias, residual add and ReLU after it, as TVM fuses them.

    Built as hwcomp's rewrite emits it (a ``call_tir`` of the kernel, op pattern 4, then the
    Relax ops), fused and scheduled by hwcomp's default rule (2 cores). Returns (the scripts
    of the scheduled PrimFuncs, the result on ``x``).
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight

    from hwcomp.lower.cpu.pipeline import fusion_passes
    from hwcomp.lower.cpu.rules import default_rules

    target = load_target("host")
    bb = relax.BlockBuilder()
    data = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [data]):
        with bb.dataflow():
            conv = bb.add_func(func.without_attr("global_symbol").with_attr("op_pattern", 4),
                               "hwcomp_kernel_0")
            y = bb.emit(relax.op.call_tir(conv, [data, relax.const(packed)],
                                          relax.TensorType(out_shape, "float32")))
            y = bb.emit(relax.op.add(y, relax.const(bias)))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(residual))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with target.tvm():
        mod = relax.transform.LegalizeOps()(bb.get())
        mod = tvm.transform.Sequential([
            *fusion_passes(target.tvm()),
            dlight.ApplyDefaultSchedule(*default_rules(lanes=lanes, cores=2))])(mod)
    scripts = [f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    vm = relax.VirtualMachine(tvm.compile(mod, target=target.tvm()), tvm.cpu())
    return scripts, vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("isa", ["host", "neon"])
@pytest.mark.parametrize("shape,out_channels,kernel", [
    ((1, 8, 20, 20), 32, 3),     # im2col rows outweigh weights: parallel over row groups
    ((1, 64, 7, 7), 64, 3),      # weights outweigh rows: tasks share a weight panel
    ((1, 96, 6, 6), 80, 1),      # pointwise, OC not a multiple of 64
    ((1, 160, 9, 9), 128, 3),    # K blocks of 32 channels (5 per tap), two column tasks
    ((1, 6, 9, 9), 8, 3),        # 6 channels: no whole 4-step reduction, plain FMAs on NEON
])
def test_conv_kernel_matches_numpy_in_both_loop_orders(shape, out_channels, kernel, isa):
    spec = _spec(isa)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1], kernel, kernel)).astype(np.float32)
    pad = kernel // 2
    func = compute.conv_kernel(shape, (kernel, kernel), out_channels, (1, 1), (pad,) * 4,
                               (1, 1), 0, spec)
    # Implicit im2col: the padded NHWC copy, then the matmul reading it (init, update, store),
    # each parallel; no im2col buffer.
    script = func.script()
    assert _blocks(script) == 4 and 'T.sblock("col")' not in script, script
    assert script.count("T.parallel(") in (0, 2)  # the smallest runs on one thread
    # NEON: 4 reduction steps per A vector load, each FMA by one of its lanes.
    assert ("T.Shuffle" in script) == (isa == "neon" and shape[1] % 4 == 0), script
    rows = tiling.conv_rows(shape[2] * shape[3], out_channels, spec)
    cols = kernel_spec.round_up(out_channels, spec.lanes)
    packed = compute.pack_weight(compute.conv_weight_matrix(w, spec), spec)
    got = _run(func, x, packed, out_shape=(rows, cols))[:shape[2] * shape[3], :out_channels]
    padded = np.pad(x[0], ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
    want = np.einsum("chwij,ocij->hwo", windows, w).reshape(-1, out_channels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", ["host", "neon"])
def test_matmul_kernel_matches_numpy(isa):
    spec = _spec(isa)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((24, 72)).astype(np.float32)
    w = rng.standard_normal((40, 72)).astype(np.float32)
    func = compute.matmul_kernel(24, 72, 40, spec)
    assert ("T.Shuffle" in func.script()) == (isa == "neon")
    got = _run(func, a, compute.pack_weight(w, spec),
               out_shape=(24, kernel_spec.round_up(40, spec.lanes)))[:, :40]
    np.testing.assert_allclose(got, a @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cols,padded", [(1000, 1024), (40, 48), (24, 32), (1008, 1024)])
def test_matmul_columns_pad_to_whole_tiles_where_that_is_cheap(cols, padded):
    """A classifier's 1000 outputs (63 vectors of 16: one-vector tiles, one FMA chain per task
    of a GEMV) pad to 64 vectors; 40 or 24 columns would more than double, and keep whole
    vectors. The padded GEMV matches numpy, its tiles 4 vectors wide."""
    spec = specs.fma_spec(16)
    assert tiling.matmul_columns(cols, spec) == padded
    rng = np.random.default_rng(cols)
    a = rng.standard_normal((1, 96)).astype(np.float32)
    w = rng.standard_normal((cols, 96)).astype(np.float32)
    func = compute.matmul_kernel(1, 96, cols, spec)
    assert f"T.Buffer((1, {padded})" in func.script()
    assert ("T.unroll(4)" in func.script()) == (padded % 64 == 0), func.script()
    got = _run(func, a, compute.pack_weight(w, spec, padded), out_shape=(1, padded))[:, :cols]
    np.testing.assert_allclose(got, a @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,out_channels", [
    ((1, 64, 8, 8), 16),     # few output channels: 16-row register tiles
    ((1, 24, 16, 12), 10),   # 10 output channels: 2-row tiles; 64-pixel tiles straddle rows
    ((1, 256, 32, 32), 64),  # 1024 pixels x 256 channels: parallel tasks
])
def test_pointwise_kernel_matches_numpy(shape, out_channels):
    """The NCHW pointwise kernel as hwcomp's default rule schedules it."""
    from hwcomp.lower.cpu.rules import default_rules, first_schedule

    spec = specs.float_spec(load_target("host"))
    assert compute.pointwise_fits(shape, out_channels, (1, 1), (1, 1), (0, 0, 0, 0), spec)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1])).astype(np.float32)
    func = compute.pointwise_kernel(shape, out_channels)
    sch = first_schedule(default_rules(lanes=spec.lanes, cores=2), func, load_target("host").tvm())
    script = sch.mod["main"].script()
    # No layout copies; init, update and the tile's store; parallel unless tiny.
    assert _blocks(script) == 3, script
    assert ("T.parallel(" in script) == (shape[1] * x[0, 0].size * out_channels >= 1 << 18)
    got = _run(sch.mod["main"], x, w, out_shape=(1, out_channels, shape[2], shape[3]))
    want = np.einsum("oc,chw->ohw", w, x[0])[None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pointwise_kernel_fits_only_its_case():
    spec = specs.float_spec(load_target("host"))
    assert not compute.pointwise_fits((1, 8, 14, 14), 16, (1, 1), (1, 1), (0,) * 4, spec)  # 196 px
    # 784 pixels: whole vectors, but 49 of them, no whole 4-vector tiles (the conv kernel's).
    assert not compute.pointwise_fits((1, 8, 28, 28), 16, (1, 1), (1, 1), (0,) * 4, spec)
    assert compute.pointwise_fits((1, 8, 56, 56), 16, (1, 1), (1, 1), (0,) * 4, spec)
    assert not compute.pointwise_fits((1, 8, 16, 16), 16, (1, 1), (2, 2), (0,) * 4, spec)
    assert not compute.pointwise_fits((1, 8, 16, 16), 16, (3, 3), (1, 1), (1,) * 4, spec)
    assert not compute.pointwise_fits((2, 8, 16, 16), 16, (1, 1), (1, 1), (0,) * 4, spec)
    assert not compute.pointwise_fits((1, 8, 16, 16), 16, (1, 1), (1, 1), (0,) * 4,
                                      specs.VNNI)  # int8 runs on the dot-product kernel
    # Weights over 128 KiB (256 x 256 fp32): the NCHW conv kernel's.
    assert compute.pointwise_fits((1, 128, 32, 32), 256, (1, 1), (1, 1), (0,) * 4, spec)
    assert not compute.pointwise_fits((1, 256, 32, 32), 256, (1, 1), (1, 1), (0,) * 4, spec)


@pytest.mark.parametrize("shape,out_channels,kernel,stride", [
    ((1, 8, 20, 20), 32, 3, 1),    # rows outweigh weights; 4-pixel tiles straddle map rows
    ((1, 64, 7, 7), 64, 3, 1),     # 49 pixels: the last tile's rows past the map are padding
    ((1, 160, 9, 9), 128, 3, 2),   # stride 2, 5x5 = 25 pixels
    ((1, 160, 10, 10), 128, 3, 2), # stride 2, K blocks of 32 channels, two column tasks
    ((1, 96, 14, 14), 48, 1, 1),   # 1x1 on a 14x14 map (too few pixel vectors for pointwise)
    ((1, 24, 13, 13), 21, 1, 1),   # 21 channels: not whole vectors (a segmentation head)
    ((1, 16, 11, 11), 72, 3, 1),   # 9 vectors of channels (AVX2), padded to 10
    ((1, 3, 15, 15), 40, 3, 2),    # a 3-channel stem, 8x8 output
])
def test_conv_nchw_kernel_fuses_its_epilogue_and_matches_numpy(shape, out_channels, kernel,
                                                               stride):
    """The fp32 conv kernel writing NCHW, with bias, residual add and ReLU after it, fused by
    TVM and scheduled by hwcomp's default rule: one function whose tile stores apply them."""


    target = load_target("host")
    spec = specs.float_spec(target)
    pad = kernel // 2
    out_hw = (shape[2] + 2 * pad - kernel) // stride + 1
    out_shape = (1, out_channels, out_hw, out_hw)
    assert compute.conv_nchw_fits(shape, out_shape, out_channels, spec)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1], kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal((1, out_channels, 1, 1)).astype(np.float32)
    residual = rng.standard_normal(out_shape).astype(np.float32)
    func = compute.conv_nchw_kernel(shape, (kernel, kernel), out_channels, (stride, stride),
                                    (pad,) * 4, (1, 1), spec)
    scripts, got = _fused_with_epilogue(func, x, compute.conv_nchw_weight(w, spec), out_shape,
                                        bias, residual, spec.lanes)
    # One function: the NHWC copy, init, update, and the store carrying the epilogue.
    assert len(scripts) == 1 and _blocks(scripts[0]) == 4, scripts
    # The copy and the GEMM run in parallel, except a kernel of a few microseconds.
    macs = out_hw * out_hw * out_channels * shape[1] * kernel * kernel
    parallel = 2 if macs >= tiling._MIN_PARALLEL_MACS else 0
    assert "T.max(" in scripts[0] and scripts[0].count("T.parallel(") == parallel
    padded = np.pad(x[0], ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
    conv_out = np.einsum("chwij,ocij->ohw", windows[:, ::stride, ::stride], w)[None]
    np.testing.assert_allclose(got, np.maximum(conv_out + bias + residual, 0),
                               rtol=1e-4, atol=1e-4)


def test_pointwise_convs_carry_their_epilogue_and_match_onnxruntime(tmp_path):
    """Every 1x1 conv of a MobileNetV2-style model in NCHW (as models that keep NCHW run them:
    quantized ones, batch > 1) takes the NCHW kernel, TVM fuses its bias, ReLU6 or residual
    add into it, and each tile's store applies them (no second pass). Built, the activations
    stay NHWC and the same convs read their input in place; the bundle matches onnxruntime
    (build verification, 1e-4)."""
    import json

    import onnx
    import onnx_ir as ir
    import tvm
    from tvm.s_tir import dlight

    from hwcomp import api
    from hwcomp.lower.cpu.kernels.rewrite import rewrite_kernels
    from hwcomp.lower.cpu.pipeline import fusion_passes
    from hwcomp.lower.cpu.rules import default_rules
    from hwcomp.lower.frontend.legalize import legalize_for_tvm
    from hwcomp.lower.frontend.relax_import import import_checked
    from tests import model_zoo

    model = model_zoo.mobilenet_like(size=32)
    target = load_target("host")
    legal, _ = legalize_for_tvm(ir.from_proto(model))
    mod, _ = rewrite_kernels(import_checked(ir.to_proto(legal)), None, specs.fma_spec(16))
    with target.tvm():
        mod = tvm.transform.Sequential([
            *fusion_passes(target.tvm()),
            dlight.ApplyDefaultSchedule(*default_rules(lanes=16, cores=2))])(mod)
    fused = {gv.name_hint: f.script() for gv, f in mod.functions_items()
             if blocks.POINTWISE_BLOCK in f.script()}
    # Expand convs carry bias + ReLU6 (max, min), project convs their bias and, in residual
    # blocks, the add of the block's input. Same-shaped convs share one function.
    tails = [re.sub(r"^fused_hwcomp_kernel_\d+_", "", name) for name in fused]
    assert all(tail.startswith("add") for tail in tails), list(fused)
    assert sum(tail.endswith("minimum1") or tail.endswith("minimum3") for tail in tails) == 2
    assert sum(tail.count("add") == 2 for tail in tails) == 2, list(fused)
    for script in fused.values():
        assert _blocks(script) == 3  # init, update, the store with the epilogue

    path = tmp_path / "mb.onnx"
    onnx.save(model, path)
    result = api.build(path, "host", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    convs = [k for k in manifest["float_kernels"] if k.startswith("conv2d")]
    # the stem, 6 pointwise convs (input in place), 3 depthwise
    assert sum(k.endswith(": NHWC kernel, fused epilogue") for k in convs) == 7, convs
    assert sum(": depthwise NHWC kernel (16 lanes)" in k for k in convs) == 3, convs
    assert manifest["verification"]["status"] == "passed", manifest["verification"]


def test_resnet_convs_write_nhwc_with_their_epilogue_and_match_onnxruntime(tmp_path):
    """At batch 1 every conv of a ResNet-style model (stem, 3x3, strided 3x3, strided 1x1
    shortcut) runs on the conv kernel reading and writing NHWC (x86 keeps activations
    channels-last) with its bias, residual add and ReLU in the tile stores; the bundle
    matches onnxruntime."""
    import json

    import onnx

    from hwcomp import api
    from tests import model_zoo

    path = tmp_path / "resnet.onnx"
    onnx.save(model_zoo.resnet_like(size=32, width=16), path)
    result = api.build(path, "host", tmp_path / "out", use_tuning_db=False)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    convs = [k for k in manifest["float_kernels"] if k.startswith("conv2d")]
    assert len(convs) == 6 and all(k.endswith(": NHWC kernel, fused epilogue") for k in convs), convs
    assert manifest["verification"]["status"] == "passed", manifest["verification"]


@pytest.mark.parametrize("out_shape", [(1, 48, 7, 7), (2, 20, 14, 14), (1, 16, 56, 56)])
def test_to_nchw_kernel_transposes_exactly(out_shape):
    from tvm import s_tir

    batch, channels, height, width = out_shape
    rows, cols = batch * height * width + 3, kernel_spec.round_up(channels, 16)
    a = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    sch = s_tir.Schedule(compute.to_nchw_kernel(out_shape, rows, cols, "float32"))
    tiling.tile_pixels_by_channels(sch, sch.get_sblock(blocks.LAYOUT_BLOCK), 16)
    got = _run(sch.mod["main"], a, out_shape=out_shape)
    want = a[:batch * height * width, :channels].reshape(batch, height, width, channels)
    np.testing.assert_array_equal(got, want.transpose(0, 3, 1, 2))


def test_conv_bias_and_activation_join_the_layout_pass():
    """Where a conv keeps the pixel-major kernel (here: batch 2), the return to NCHW fuses
    with the bias add and ReLU after it into one function, which hwcomp's default rule tiles
    (pixels x channels, parallel, vector lanes)."""
    import onnx_ir as ir
    import tvm

    from hwcomp.lower import lowering_for
    from hwcomp.lower.cpu.pipeline import fusion_passes
    from hwcomp.lower.cpu.rules import default_rules
    from hwcomp.lower.frontend.legalize import legalize_for_tvm
    from tests import model_zoo

    target = load_target("host")
    legal, _ = legalize_for_tvm(ir.from_proto(model_zoo.resnet_like(size=32, width=16,
                                                                    batch=2)))
    mod = lowering_for(target).prepare(ir.to_proto(legal), target).module
    from tvm.s_tir import dlight

    with target.tvm():
        mod = tvm.transform.Sequential([
            *fusion_passes(target.tvm()),
            dlight.ApplyDefaultSchedule(*default_rules(lanes=16, cores=2))])(mod)
    fused = {gv.name_hint: f for gv, f in mod.functions_items()
             if gv.name_hint.startswith("fused_hwcomp_kernel")}
    assert any(name.endswith("_add_relu") for name in fused)
    for func in fused.values():
        script = func.script()
        # Vector lanes over the flattened h*w plane, not TVM's loop over w alone.
        assert "T.parallel(" in script
        assert re.search(r"for \w+_fused_1 in T.vectorized", script)


def test_tiny_kernels_stay_on_one_thread_and_large_ones_do_not():
    spec = specs.float_spec(load_target("host"))
    # 16 tokens x 64 x 64: about a microsecond of FMAs, less than waking the thread pool.
    assert "T.parallel(" not in compute.matmul_kernel(16, 64, 64, spec).script()
    assert "T.parallel(" in compute.matmul_kernel(256, 256, 256, spec).script()
    a = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    got = _run(compute.matmul_kernel(16, 64, 64, spec), a, compute.pack_weight(w, spec),
               out_shape=(16, 64))
    np.testing.assert_allclose(got, a @ w.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("width,stride", [(48, 1), (24, 1), (7, 1), (48, 2)])
def test_depthwise_rows_match_numpy(width, stride):
    """Depthwise 3x3 + bias + ReLU6 under hwcomp's window rule: 16 lanes (48 wide), 8 lanes
    (24 wide), scalar rows (7 wide, and stride 2, whose reads would be gathers); the epilogue
    is applied as each row's accumulators are stored (no scratch output)."""
    from tvm import te, tirx, topi

    from hwcomp.lower.cpu.rules import default_rules, first_schedule

    channels = 8
    rng = np.random.default_rng(width + stride)
    x = rng.standard_normal((1, channels, width, width)).astype(np.float32)
    w = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    xt = te.placeholder(x.shape, "float32", name="x")
    wt = te.placeholder(w.shape, "float32", name="w")
    bt = te.placeholder(bias.shape, "float32", name="b")
    conv = topi.nn.depthwise_conv2d_nchw(xt, wt, stride, 1, 1)
    out = te.compute(conv.shape, lambda n, c, h, w_: tirx.min(tirx.max(
        conv[n, c, h, w_] + bt[c], tirx.const(0.0, "float32")), tirx.const(6.0, "float32")))
    func = te.create_prim_func([xt, wt, bt, out])
    sch = first_schedule(default_rules(lanes=16, cores=2), func, load_target("host").tvm())
    script = sch.mod["main"].script()
    vector = {48: 16, 24: 8, 7: 1}[width] if stride == 1 else 1
    assert (f"T.vectorized({vector})" in script) == (vector > 1)
    # padding, row init, taps, and the store that applies bias + ReLU6: no full-size scratch
    assert _blocks(script) == 4, script
    got = _run(sch.mod["main"], x, w, bias, out_shape=tuple(int(d) for d in out.shape))
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    want = np.einsum("chwij,cij->chw", windows[:, ::stride, ::stride], w[:, 0])
    want = np.clip(want + bias[:, None, None], 0.0, 6.0)[None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels,size,kernel,stride,dilation,pads,lanes,tile", [
    (32, (17, 17), (5, 5), 1, 1, (2, 2, 2, 2), 16, 9),   # prime width: tiles of 9, last ragged
    (24, (14, 14), (3, 3), 2, 1, (1, 1, 1, 1), 8, 7),    # stride 2, 8 lanes, a 7-pixel row
    (16, (1, 30), (1, 3), 1, 1, (0, 1, 0, 1), 16, 10),   # one row, a 1x3 window: h, kh dropped
    (48, (12, 16), (3, 3), 1, 2, (2, 2, 2, 2), 16, 8),   # dilation 2, not square
    (16, (9, 11), (3, 3), 2, 1, (0, 0, 1, 1), 16, 5),    # asymmetric ("same") padding
])
def test_depthwise_nhwc_kernel_fuses_its_epilogue_and_matches_numpy(
        channels, size, kernel, stride, dilation, pads, lanes, tile):
    """The NHWC depthwise kernel with bias, residual add and ReLU after it, fused by TVM and
    scheduled by hwcomp's default rule: row tiles of the expected width, the window unrolled,
    the epilogue in the store; against numpy on maps whose rows no tile divides, a one-row map
    whose window is one row (TVM drops those iterators), stride, dilation and padding on one
    side only."""


    spec = specs.fma_spec(lanes)
    shape = (1, channels, *size)
    out_h, out_w = kernel_spec.conv_output_size(shape, kernel, (stride,) * 2, pads,
                                                (dilation,) * 2)
    out_shape = (1, out_h, out_w, channels)
    rng = np.random.default_rng(channels + sum(size))
    x = rng.standard_normal((1, *size, channels)).astype(np.float32)
    w = rng.standard_normal((channels, 1, *kernel)).astype(np.float32)
    bias = rng.standard_normal((1, 1, 1, channels)).astype(np.float32)
    residual = rng.standard_normal(out_shape).astype(np.float32)
    func = compute.depthwise_nhwc_kernel(shape, kernel, (stride,) * 2, pads, (dilation,) * 2,
                                         spec, tiling.depthwise_pixels(specs.fma_spec(16)))
    packed = compute.pack_weight(w.reshape(channels, -1), spec)
    scripts, got = _fused_with_epilogue(func, x, packed, out_shape, bias, residual, 16)
    # One function: init, update (the window and the tile's pixels unrolled) and the store
    # carrying the epilogue.
    assert len(scripts) == 1 and _blocks(scripts[0]) == 3, scripts
    assert f"T.unroll(T.int64({tile}))" in scripts[0], scripts[0]
    assert "T.parallel(" in scripts[0] and "T.max(" in scripts[0], scripts[0]
    top, left, bottom, right = pads
    padded = np.pad(x[0], ((top, bottom), (left, right), (0, 0)))
    want = np.zeros(out_shape[1:], np.float32)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows = padded[i * dilation:, j * dilation:][::stride, ::stride][:out_h, :out_w]
            want += rows * w[:, 0, i, j]
    np.testing.assert_allclose(got, np.maximum(want[None] + bias + residual, 0),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,out_channels,kernel,stride,tasks", [
    ((1, 512, 7, 7), 512, 3, 1, 8),       # 166 KiB of input: all 9 row tiles in each task
    ((1, 1024, 14, 14), 2048, 1, 2, 32),  # stride 2: the im2col rows are the smaller count
])
def test_conv_tasks_keep_row_tiles_by_the_input_they_read(shape, out_channels, kernel, stride,
                                                          tasks):
    """A conv's row tiles per task are counted by the input they read, not by their im2col
    rows (9x the input for a 3x3 window): ResNet-50's 512-channel 3x3 on 7x7 keeps its 9
    row tiles in one task per column block (8 tasks), so each 16 KiB weight slice serves
    them all from L1; its 9 tasks per column block streamed the 1.2 MiB panel 9 times."""
    from hwcomp.lower.cpu.rules import default_rules, first_schedule

    func = compute.conv_nchw_kernel(shape, (kernel, kernel), out_channels, (stride, stride),
                                    (kernel // 2,) * 4, (1, 1), specs.fma_spec(16),
                                    channels_last=True)
    sch = first_schedule(default_rules(lanes=16, cores=2), func, load_target("host").tvm())
    extents = re.findall(r"T.parallel\(T.int64\((\d+)\)\)", sch.mod["main"].script())
    assert int(extents[-1]) == tasks, extents


@pytest.mark.parametrize(("lanes", "accumulators"), [(8, 12), (16, 24), (4, 16)])
def test_register_tiles_fit_the_isa_registers(lanes, accumulators):
    """AVX2 has 16 vector registers: the AVX-512-shaped 16-accumulator tile spilled (a 1x3
    conv ran 4.7x onnxruntime's time; 0.93x with 12 accumulators). AVX-512 has 32: a 6 x 4
    tile, its 4 weight vectors and the broadcast take 29."""
    spec = specs.fma_spec(lanes)
    assert spec.accumulators == accumulators
    registers = 16 if lanes == 8 else 32
    # Beside the accumulators: a weight vector per lane block, and the broadcast A value
    # (NEON's FMA by element: 4 A vectors).
    a_vectors = 4 if spec.by_element else 1
    for lane_blocks in (1, 2, 3, 4, 8, 48):
        block = tiling._block_tile(lane_blocks, spec.accumulators)
        rows = tiling._widest_row_tile(block, spec.accumulators)
        assert lane_blocks % block == 0 and block * rows <= accumulators
        assert block * rows + block + a_vectors <= registers
    # The NEON tiles are the ones the earlier bundles were built with.
    if accumulators == 16:
        assert tiling.conv_rows(49, 64, spec) == tiling.round_up(49, 16 // tiling._block_tile(
            64 // lanes))


def _verified_arm_bundle(model, name, target, folder, **options):
    """Build ``model`` for an Arm target; assert it verified under qemu with every kernel
    scheduled; return the bundle and its disassembly."""
    import json
    import subprocess

    import onnx

    from hwcomp import api
    from tests.conftest import require_tools

    require_tools("aarch64-linux-gnu-g++", "qemu-aarch64", "aarch64-linux-gnu-objdump")
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    bundle = api.build(path, target, folder / "out", use_tuning_db=False, **options).bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed", manifest["verification"]
    assert manifest["unscheduled_kernels"] == []
    code = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(bundle / "lib" / "model.so")],
                          capture_output=True, text=True, check=True).stdout
    return manifest, code


def _by_lane(code, operands):
    """How many instructions matching ``operands`` take each lane 0-3 of their last operand."""
    return {lane: len(re.findall(rf"{operands}\[{lane}\]", code)) for lane in range(4)}


@pytest.mark.cross
def test_neon_bundle_multiplies_by_element_and_verifies(tmp_path):
    """arm-a72 convs and the classifier's matmul: FMLA by lanes 0-3 of an A vector, verified
    against onnxruntime under qemu-aarch64 by the build."""
    from tests import model_zoo

    _, code = _verified_arm_bundle(model_zoo.resnet_like(), "resnet_like", "arm-a72", tmp_path)
    by_lane = _by_lane(code, r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s")
    assert all(count >= 16 for count in by_lane.values()), by_lane
    # Pointwise and depthwise kernels keep their own tiles: every kernel scheduled (a
    # tensorize that failed on a pointwise kernel's strided pixel rows once left it on TVM's
    # generic schedule at a tenth of the speed, verified but slow).
    _verified_arm_bundle(model_zoo.mobilenet_like(), "mobilenet_like", "arm-a72", tmp_path)


@pytest.mark.cross
def test_sdot_bundle_dots_by_element_and_verifies(tmp_path):
    """arm-a76 int8: each 16-byte load of activations feeds 4 SDOTs by 4-byte lane, verified
    against onnxruntime's QDQ model under qemu-aarch64 by the build."""
    from hwcomp.compress.precision import PrecisionOptions
    from tests import model_zoo

    options = PrecisionOptions(precision="int8", calib_random=8, min_sqnr_db=0)
    manifest, code = _verified_arm_bundle(model_zoo.resnet_like(), "resnet_like", "arm-a76",
                                          tmp_path, precision_options=options)
    assert manifest["integer_kernels"]["instruction"] == "sdot"
    by_lane = _by_lane(code, r"sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b")
    assert all(count >= 16 for count in by_lane.values()), by_lane
