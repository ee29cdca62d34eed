"""Compute definitions (TE) of hwcomp's CPU conv and matmul kernels, and their weight packing.

Each kernel is one TIR function: (for convolution) a padded NHWC copy (padding with the
input's zero point) read as an implicit im2col matrix, then a matmul against weights packed as
``[N/L, K/G, L, G]``. For int8 the innermost ``L x 4`` block (G = 4) is one dot-product
instruction; for fp32 (G = 1) the L lanes are one vector FMA. The pointwise and NCHW kernels
are left unscheduled so TVM fuses their epilogue; the others are tiled here
(:mod:`hwcomp.lower.cpu.kernels.tiling`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hwcomp.lower.cpu.kernels.blocks import (
    CHANNELS_LAST_ATTR,
    CONV_BLOCK,
    DEPTHWISE_BLOCK,
    GROUP_ATTR,
    LANES_ATTR,
    LAYOUT_BLOCK,
    PIXELS_ATTR,
    POINTWISE_BLOCK,
    STORE_BLOCK,
)
from hwcomp.lower.cpu.kernels.conv_forms import nhwc as nhwc_shape
from hwcomp.lower.cpu.kernels.tiling import (
    LANE_BLOCKS,
    conv_columns,
    conv_rows,
    matmul_columns,
    matmul_rows,
    pow2_tile,
    schedule_matmul,
    tile_matmul,
)
from hwcomp.lower.kernel_spec import KernelSpec, conv_output_size, int64_shape, round_up


def pack_weight(weight: np.ndarray, spec: KernelSpec, n_pad: int | None = None) -> np.ndarray:
    """Pack an ``[N, K]`` matrix as ``[N/L, K/G, L, G]``, zero-padding N (to ``n_pad``) and K."""
    lanes, group = spec.lanes, spec.group
    n, k = weight.shape
    n_pad, k_pad = n_pad or round_up(n, lanes), round_up(k, group)
    padded = np.zeros((n_pad, k_pad), spec.weight_dtype)
    padded[:n, :k] = weight
    return np.ascontiguousarray(
        padded.reshape(n_pad // lanes, lanes, k_pad // group, group).transpose(0, 2, 1, 3)
    )


def matmul_kernel(rows: int, depth: int, cols: int, instruction: KernelSpec) -> Any:
    """``C[rows, cols_pad] = A[rows, depth_pad] x W`` (W packed), register-tiled, parallel.

    Rows no good tile divides (:func:`matmul_rows`: ViT's 197 tokens) run padded to whole
    tiles, a padding row repeating the last, and a store block writes the real rows.
    """
    from tvm import s_tir, te, tirx

    depth_pad = round_up(depth, instruction.group)
    a = te.placeholder((rows, depth_pad), instruction.activation_dtype, name="A")
    rows_pad = matmul_rows(rows, cols, instruction)
    cols_pad = matmul_columns(cols, instruction)
    if rows_pad == rows:
        c = _matmul_compute(a, rows, depth_pad, cols, instruction, cols_pad)
        return schedule_matmul(te.create_prim_func([a, c.op.input_tensors[1], c]), "C",
                               instruction)
    padded = te.compute((rows_pad, depth_pad), lambda m, k: a[tirx.min(m, rows - 1), k],
                        name="rows")
    acc = _matmul_compute(padded, rows_pad, depth_pad, cols, instruction, cols_pad)
    out = te.compute((rows, acc.shape[1]), lambda m, n: acc[m, n], name=STORE_BLOCK)
    sch = s_tir.Schedule(te.create_prim_func([a, acc.op.input_tensors[1], out]))
    sch.compute_inline(sch.get_sblock("rows"))
    tile_matmul(sch, sch.get_sblock("C"), instruction, store=sch.get_sblock(STORE_BLOCK))
    return sch.mod["main"]


def batch_matmul_kernel(batch: int, rows: int, depth: int, cols: int, spec: KernelSpec) -> Any:
    """fp32 ``C[g] = A[g] x B[g]`` of two activations (attention's scores and its context).

    ``A`` is ``[batch, rows, depth]``, ``B`` ``[batch, depth, cols, 1]``, both as they lie: B's
    rows are read as vectors of output columns where ``cols`` is whole vectors, else through a
    copy padded to whole vectors (a pass over B: 1/rows of the multiplies). Rows no good tile
    divides are padded to whole register tiles (:func:`matmul_rows`; a padding row repeats the
    last), and a store block writes the real rows and columns from the accumulators.
    Scheduled: :func:`tile_matmul` per batch.
    """
    from tvm import s_tir, te, tirx

    lanes = spec.lanes
    cols_pad = round_up(cols, lanes)
    rows_pad = matmul_rows(rows, cols_pad, spec)  # a decoder step's one row stays one
    a = te.placeholder((batch, rows, depth), "float32", name="A")
    # B with a unit axis last: the layout of packed weights, which NEON's FMA-by-element
    # tensor intrinsic matches.
    b = te.placeholder((batch, depth, cols, 1), "float32", name="B")
    w = b
    if cols_pad != cols:
        w = te.compute((batch, depth, cols_pad, 1),
                       lambda g, k, n, u: tirx.if_then_else(
                           n < cols, b[g, k, tirx.min(n, cols - 1), u], tirx.const(0, "float32")),
                       name="pack")
    k = te.reduce_axis((0, depth), "k")
    acc = te.compute((batch, rows_pad, cols_pad),
                     lambda g, m, n: te.sum(a[g, tirx.min(m, rows - 1), k] * w[g, k, n, 0],
                                            axis=k),
                     name="C")
    out = te.compute((batch, rows, cols), lambda g, m, n: acc[g, m, n], name=STORE_BLOCK)
    sch = s_tir.Schedule(te.create_prim_func([a, b, out]))
    if cols_pad != cols:
        pack = sch.get_sblock("pack")
        g_loop, k_loop, n_loop, _ = sch.get_loops(pack)
        sch.parallel(sch.fuse(g_loop, k_loop))
        sch.vectorize(sch.split(n_loop, [None, lanes])[1])
    tile_matmul(sch, sch.get_sblock("C"), spec, store=sch.get_sblock(STORE_BLOCK))
    return sch.mod["main"]


def concat_kernel(rows: int, widths: tuple[int, ...], dtype: str, lanes: int,
                  parallel: bool) -> Any:
    """``Y[r, :] = concat(X_0[r, :], X_1[r, :], ...)``: one copy loop per input, scheduled.

    TOPI's concatenate is one loop over the output whose every element walks an
    if-then-else chain over the inputs: along a channels-last map's innermost axis (DenseNet's
    dense blocks concatenate up to 32 inputs, Inception's four branches) it cost 1.5 ns an
    element where a copy costs 0.1-0.3. Here each input is copied into its columns, rows in
    parallel, columns in vectors of the widest power of two dividing them.
    """
    from tvm import s_tir
    from tvm.script import tirx as T

    total = sum(widths)
    params = ", ".join(f"x{i}: T.Buffer(({rows}, {w}), \"{dtype}\")"
                       for i, w in enumerate(widths))
    lines = ["@T.prim_func(s_tir=True)",
             f"def main({params}, y: T.Buffer(({rows}, {total}), \"{dtype}\")):",
             "    T.func_attr({\"tirx.noalias\": True})"]
    offset = 0
    for i, width in enumerate(widths):
        lines += [f"    for r, c in T.grid({rows}, {width}):",
                  f"        with T.sblock(\"copy{i}\"):",
                  "            vr, vc = T.axis.remap(\"SS\", [r, c])",
                  f"            y[vr, vc + {offset}] = x{i}[vr, vc]"]
        offset += width
    func = tvm_script("\n".join(lines) + "\n", T)
    sch = s_tir.Schedule(func)
    for i, width in enumerate(widths):
        row, col = sch.get_loops(sch.get_sblock(f"copy{i}"))
        if parallel:
            sch.parallel(row)
        vector = pow2_tile(width, lanes)
        if vector > 1:
            sch.vectorize(sch.split(col, [None, vector])[1])
    return sch.mod["main"]


def tvm_script(source: str, module: Any) -> Any:
    """Parse generated TVMScript ``source`` (``T`` bound to ``module``)."""
    import tvm

    return tvm.script.from_source(source, extra_vars={"T": module})


def _matmul_compute(a: Any, rows: int, depth: int, cols: int, spec: KernelSpec,
                    cols_pad: int | None = None) -> Any:
    from tvm import te

    lanes, group, acc = spec.lanes, spec.group, spec.accumulator_dtype
    cols_pad = cols_pad or round_up(cols, lanes)
    w = te.placeholder((cols_pad // lanes, depth // group, lanes, group), spec.weight_dtype,
                       name="W")
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (rows, cols_pad),
        lambda m, n: te.sum(
            a[m, k].astype(acc) * w[n // lanes, k // group, n % lanes, k % group].astype(acc),
            axis=k,
        ),
        name="C",
    )


def conv_kernel(
    data_shape: tuple[int, ...], kernel: tuple[int, int], out_channels: int,
    strides: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int],
    zero_point: int, instruction: KernelSpec,
) -> Any:
    """NCHW convolution (groups 1) as a matmul over an im2col matrix padded with ``zero_point``.

    The im2col matrix is an expression, not a buffer: the schedule inlines it, and the matmul
    reads the padded NHWC copy of the input. Output: ``[N * OH * OW, OC_pad]`` (int32 or
    fp32); the K axis is ``(kh, kw, c_pad)``, matching :func:`conv_weight_matrix`.
    """
    from tvm import te, tirx

    batch, channels, _, _ = data_shape
    out_h, out_w = conv_output_size(data_shape, kernel, strides, padding, dilation)
    c_pad = round_up(channels, instruction.group)
    depth = kernel[0] * kernel[1] * c_pad
    dtype = instruction.activation_dtype
    rows = conv_rows(batch * out_h * out_w, out_channels, instruction)
    x = te.placeholder(data_shape, dtype, name="X")
    nhwc = _padded_nhwc(x, data_shape, padding, c_pad, zero_point, tuple)

    def im2col(m: Any, kk: Any) -> Any:
        # Rows past the last output pixel (padding to whole register tiles) repeat it.
        m = tirx.min(m, batch * out_h * out_w - 1)
        n, pix = m // (out_h * out_w), m % (out_h * out_w)
        return _im2col_element(nhwc, n, pix // out_w, pix % out_w, kk, c_pad, kernel, strides,
                               dilation)

    col = te.compute((rows, depth), im2col, name="col")
    c = _matmul_compute(col, rows, depth, out_channels, instruction)
    return schedule_matmul(te.create_prim_func([x, c.op.input_tensors[1], c]), "C", instruction,
                     im2col=(kernel[0] * kernel[1], c_pad))


def _padded_nhwc(x: Any, data_shape: tuple[int, ...], padding: tuple[int, int, int, int],
                 c_pad: int, zero_point: int, dims: Any, channels_last: bool = False) -> Any:
    """Return the NCHW (``channels_last``: NHWC) input ``x`` as a padded NHWC tensor.

    ``dims`` types its shape; ``data_shape`` is NCHW either way. Spatial padding takes the
    zero point (it stands for 0.0); padded channels take 0 (their weights are 0 too, and the
    zero-point correction sums real channels only).
    """
    from tvm import te, tirx

    batch, channels, height, width = data_shape
    top, left, bottom, right = padding
    dtype = x.dtype

    def to_nhwc(n: Any, h: Any, w_: Any, ch: Any) -> Any:
        inside = tirx.all(h >= top, h < top + height, w_ >= left, w_ < left + width)
        c_, y, x_ = (tirx.min(ch, channels - 1), tirx.max(tirx.min(h - top, height - 1), 0),
                     tirx.max(tirx.min(w_ - left, width - 1), 0))
        value = x[n, y, x_, c_] if channels_last else x[n, c_, y, x_]
        padded = tirx.if_then_else(inside, value, tirx.const(zero_point, dtype))
        if c_pad == channels:  # no padding channels: no test per lane
            return padded
        return tirx.if_then_else(ch < channels, padded, tirx.const(0, dtype))

    shape = (batch, height + top + bottom, width + left + right, c_pad)
    return te.compute(dims(shape), to_nhwc, name="nhwc")


def _im2col_element(nhwc: Any, n: Any, oh: Any, ow: Any, k: Any, c_pad: int,
                    kernel: tuple[int, int], strides: tuple[int, int],
                    dilation: tuple[int, int], channel_base: Any = 0) -> Any:
    """Element ``k`` (K ordered ``(kh, kw, c_pad)``) of output pixel (oh, ow)'s im2col row.

    ``channel_base``: the first input channel of the output channel's group.
    """
    tap, ch = k // c_pad, k % c_pad
    return nhwc[n, oh * strides[0] + (tap // kernel[1]) * dilation[0],
                ow * strides[1] + (tap % kernel[1]) * dilation[1], ch + channel_base]


def pointwise_kernel(data_shape: tuple[int, ...], out_channels: int) -> Any:
    """fp32 1x1 stride-1 convolution in NCHW, batch 1: ``Y[OC, HW] = W[OC, C] X[C, HW]``.

    No layout change on either side: the input's channel planes are the matmul's K rows, read
    a vector of pixels at a time, each weight is broadcast to the pixel lanes, and the output
    is NCHW; the NHWC copy, the im2col copy and the return to NCHW of :func:`conv_kernel`
    disappear. Unscheduled and output-elementwise-fusable (op pattern 4, as TVM's own conv2d):
    TVM fuses the bias, activation and residual add after it into the same function, and
    :func:`schedule_fused_kernel` applies them to each register tile as it is stored. Needs
    ``H*W`` to be a whole number of vectors (:func:`pointwise_fits`).
    """
    from tvm import te

    _, channels, height, width = data_shape
    x = te.placeholder(int64_shape(data_shape), "float32", name="X")
    w = te.placeholder(int64_shape((out_channels, channels)), "float32", name="W")
    k = te.reduce_axis((0, te.const(channels, "int64")), "k")
    c = te.compute(int64_shape((1, out_channels, height, width)),
                   lambda n, o, h, w_: te.sum(w[o, k] * x[n, k, h, w_], axis=k),
                   name=POINTWISE_BLOCK)
    return te.create_prim_func([x, w, c])


def conv_nchw_kernel(
    data_shape: tuple[int, ...], kernel: tuple[int, int], out_channels: int,
    strides: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int],
    spec: KernelSpec, groups: int = 1, out_rank: int = 4, channels_last: bool = False,
) -> Any:
    """fp32 convolution (batch 1) writing NCHW (``channels_last``: NHWC in and out), fusable.

    The computation of :func:`conv_kernel` (a padded NHWC copy read as an implicit im2col
    matrix, weights packed ``[OC/L, K, L, 1]``) with the output in the op's own layout:
    unscheduled and output-elementwise-fusable (op pattern 4), so TVM fuses the bias,
    activation and residual add after it and :func:`schedule_fused_kernel` applies them as
    each tile is stored: no return to NCHW as a pass of its own. Needs
    :func:`conv_nchw_fits`.

    With ``groups`` 1 the GEMM (block :data:`CONV_BLOCK`) runs over rows padded to whole
    register tiles (:func:`conv_rows`; a padding row repeats the last pixel) and output
    channels padded to whole column tiles (:func:`conv_columns`: the weights must be packed
    with as many), and a store block writes the real pixels and channels in NCHW: every
    tile is a full ``rows x blocks`` register tile whatever the map (a 32x32 map took 4-row
    tiles of 8 accumulators before, 55x55 and 13x13 maps a pass of their own back to NCHW).

    With ``groups`` > 1 each output channel reads its group's ``C / groups`` input channels
    (K is ``(kh, kw, C / groups)``); the schedule runs the groups as batched GEMMs, so a group's
    output channels must be whole vectors (:func:`merge_groups` makes them so). ``out_rank`` 3
    is a 1-D convolution (``data_shape`` has H = 1) writing ``[1, OC, OW]``.
    """
    if groups == 1:
        return _padded_conv(data_shape, kernel, out_channels, strides, padding, dilation,
                            spec, out_rank, channels_last)
    # The schedule reads the group size from the block's annotation.
    attrs = {GROUP_ATTR: out_channels // groups}
    return _nchw_conv(data_shape, kernel, out_channels, strides, padding, dilation, spec,
                      groups, out_rank, CONV_BLOCK, attrs, channels_last)


def _padded_conv(
    data_shape: tuple[int, ...], kernel: tuple[int, int], out_channels: int,
    strides: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int],
    spec: KernelSpec, out_rank: int, channels_last: bool = False,
) -> Any:
    """Return the groups-1 compute of :func:`conv_nchw_kernel`: a padded GEMM, an NCHW (NHWC) store."""
    from tvm import te, tirx

    channels = data_shape[1]
    out_h, out_w = conv_output_size(data_shape, kernel, strides, padding, dilation)
    pixels, lanes = out_h * out_w, spec.lanes
    cols = conv_columns(out_channels, spec)
    rows = conv_rows(pixels, cols, spec)
    depth = kernel[0] * kernel[1] * channels
    x = te.placeholder(int64_shape(nhwc_shape(data_shape) if channels_last else data_shape),
                       "float32", name="X")
    w = te.placeholder(int64_shape((cols // lanes, depth, lanes, 1)), "float32", name="W")
    # An NHWC input a 1x1 stride-1 conv reads as it lies: its pixels are the GEMM's rows.
    in_place = channels_last and kernel == (1, 1) and strides == (1, 1) and not any(padding)
    nhwc = x if in_place else _padded_nhwc(x, data_shape, padding, channels, 0, int64_shape,
                                           channels_last)
    k = te.reduce_axis((0, te.const(depth, "int64")), "k")

    def conv(m: Any, o: Any) -> Any:
        # Rows past the last output pixel (padding to whole register tiles) repeat it.
        m = tirx.min(m, pixels - 1)
        value = _im2col_element(nhwc, 0, m // out_w, m % out_w, k, channels, kernel, strides,
                                dilation)
        return te.sum(value * w[o // lanes, k, o % lanes, 0], axis=k)

    acc = te.compute(int64_shape((rows, cols)), conv, name=CONV_BLOCK,
                     attrs={CHANNELS_LAST_ATTR: 1} if channels_last else None)
    if channels_last:
        out = te.compute(int64_shape((1, out_h, out_w, out_channels)),
                         lambda n, oh, ow, o: acc[oh * out_w + ow, o], name=STORE_BLOCK,
                         attrs={CHANNELS_LAST_ATTR: 1})
    elif out_rank == 3:
        out = te.compute(int64_shape((1, out_channels, out_w)),
                         lambda n, o, ow: acc[ow, o], name=STORE_BLOCK)
    else:
        out = te.compute(int64_shape((1, out_channels, out_h, out_w)),
                         lambda n, o, oh, ow: acc[oh * out_w + ow, o], name=STORE_BLOCK)
    return te.create_prim_func([x, w, out])


def _nchw_conv(
    data_shape: tuple[int, ...], kernel: tuple[int, int], out_channels: int,
    strides: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int],
    spec: KernelSpec, groups: int, out_rank: int, name: str, attrs: dict[str, Any] | None,
    channels_last: bool = False,
) -> Any:
    """Return the compute of :func:`conv_nchw_kernel` and :func:`depthwise_kernel` (block ``name``)."""
    from tvm import te

    channels = data_shape[1]
    group_in, group_out = channels // groups, out_channels // groups
    out_h, out_w = conv_output_size(data_shape, kernel, strides, padding, dilation)
    depth, lanes = kernel[0] * kernel[1] * group_in, spec.lanes
    x = te.placeholder(int64_shape(nhwc_shape(data_shape) if channels_last else data_shape),
                       "float32", name="X")
    w = te.placeholder(int64_shape((out_channels // lanes, depth, lanes, 1)), "float32",
                       name="W")
    nhwc = _padded_nhwc(x, data_shape, padding, channels, 0, int64_shape, channels_last)
    k = te.reduce_axis((0, te.const(depth, "int64")), "k")

    def conv(n: Any, o: Any, oh: Any, ow: Any) -> Any:
        base = (o // group_out) * group_in if groups > 1 else 0
        value = _im2col_element(nhwc, n, oh, ow, k, group_in, kernel, strides, dilation, base)
        return te.sum(value * w[o // lanes, k, o % lanes, 0], axis=k)

    if channels_last:
        c = te.compute(int64_shape((1, out_h, out_w, out_channels)),
                       lambda n, oh, ow, o: conv(n, o, oh, ow), name=name,
                       attrs={**(attrs or {}), CHANNELS_LAST_ATTR: 1, LANES_ATTR: lanes})
    elif out_rank == 3:
        c = te.compute(int64_shape((1, out_channels, out_w)),
                       lambda n, o, ow: conv(n, o, 0, ow), name=name,
                       attrs={**(attrs or {}), LANES_ATTR: lanes})
    else:
        c = te.compute(int64_shape((1, out_channels, out_h, out_w)), conv, name=name,
                       attrs={**(attrs or {}), LANES_ATTR: lanes})
    return te.create_prim_func([x, w, c])


def depthwise_kernel(
    data_shape: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int],
    padding: tuple[int, int, int, int], dilation: tuple[int, int], spec: KernelSpec,
    out_rank: int = 4,
) -> Any:
    """fp32 depthwise convolution (batch 1, one output per channel) writing NCHW, fusable.

    The input's padded NHWC copy puts channels in vector lanes: each window tap of a tile of
    pixels is one vector load of the input and one FMA with the tap's weight vector (weights
    packed ``[C/L, taps, L, 1]``), whatever the stride or map width (row-vector schedules run
    7x7 maps and stride 2 in scalar code). Scheduled as :func:`conv_nchw_kernel` is, by
    :func:`schedule_fused_kernel`: the bias and activation after it are applied in the store.
    Needs channels in whole vectors (:func:`depthwise_fits`).
    """
    channels = data_shape[1]
    # A grouped conv of one input and one output channel per group, as its own block (the
    # schedule iterates it as a plain conv, channels in lanes, not as a batch of GEMMs).
    return _nchw_conv(data_shape, kernel, channels, strides, padding, dilation, spec,
                      channels, out_rank, DEPTHWISE_BLOCK, None)


def depthwise_nhwc_kernel(
    data_shape: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int],
    padding: tuple[int, int, int, int], dilation: tuple[int, int], spec: KernelSpec,
    tile_pixels: int,
) -> Any:
    """fp32 depthwise convolution (batch 1) reading and writing NHWC, fusable.

    Each tap reads the input where it lies (the padding a test per tap and pixel; a padded
    copy was a pass over the whole map as long as the conv's own) and is one vector FMA of the
    tap's weight vector (weights packed ``[C/L, taps, L, 1]``) over L channels. The window is
    two reduction axes (rows, columns), which the schedule unrolls: the bounds tests are then
    affine in the output pixel, not a division of a tap index by the kernel width. Scheduled
    by :func:`schedule_fused_kernel`, its bias and activation in the store, in tiles of up to
    ``tile_pixels`` output pixels.
    """
    from tvm import te, tirx

    channels, height, width = data_shape[1:]
    out_h, out_w = conv_output_size(data_shape, kernel, strides, padding, dilation)
    lanes = spec.lanes
    x = te.placeholder(int64_shape(nhwc_shape(data_shape)), "float32", name="X")
    w = te.placeholder(int64_shape((channels // lanes, kernel[0] * kernel[1], lanes, 1)),
                       "float32", name="W")
    kh = te.reduce_axis((0, te.const(kernel[0], "int64")), "kh")
    kw = te.reduce_axis((0, te.const(kernel[1], "int64")), "kw")

    def conv(n: Any, oh: Any, ow: Any, c: Any) -> Any:
        ih = oh * strides[0] + kh * dilation[0] - padding[0]
        iw = ow * strides[1] + kw * dilation[1] - padding[1]
        inside = tirx.all(ih >= 0, ih < height, iw >= 0, iw < width)
        # Clamped, the load is safe either way: LLVM selects rather than branches.
        clamped = x[n, tirx.max(tirx.min(ih, height - 1), 0),
                    tirx.max(tirx.min(iw, width - 1), 0), c]
        value = tirx.if_then_else(inside, clamped, tirx.const(0.0, "float32"))
        return te.sum(value * w[c // lanes, kh * kernel[1] + kw, c % lanes, 0], axis=[kh, kw])

    out = te.compute(int64_shape((1, out_h, out_w, channels)), conv, name=DEPTHWISE_BLOCK,
                     attrs={CHANNELS_LAST_ATTR: 1, LANES_ATTR: lanes,
                            PIXELS_ATTR: tile_pixels})
    return te.create_prim_func([x, w, out])


def depthwise_fits(data_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   kernel: tuple[int, int], strides: tuple[int, int],
                   padding: tuple[int, int, int, int], spec: KernelSpec) -> bool:
    """Whether :func:`depthwise_kernel` computes this depthwise conv, and beats the window rule.

    It needs batch 1 and channels in whole vectors. The window rule
    (:mod:`hwcomp.lower.cpu.rules.window`: rows of pixels in vector lanes, no layout copy)
    is kept where its rows fill half a vector or more at stride 1, and where the NHWC copy
    is not paid back: fewer than 4 multiply-adds per copied input element. Measured on
    AVX2 (single layers with bias and ReLU, lanes / window time): 32 ch 112x112 3x3 2.28,
    96 ch 112x112 3x3/2 2.06, 144 ch 56x56 2.58, 144 ch 56x56/2 1.12, 192 ch 28x28 1.39
    (all kept on the window rule); 576 ch 14x14 1.04, 960 ch 7x7 0.92, 480 ch 14x14 5x5
    0.82, 1152 ch 7x7 5x5 0.36, 240 ch 28x28 5x5/2 0.26 (this kernel).
    """
    if spec.intrin or data_shape[0] != 1 or data_shape[1] % spec.lanes:
        return False
    taps = kernel[0] * kernel[1]
    out_pixels = int(np.prod(out_shape[2:]))
    row_vector = 1 if strides != (1, 1) else pow2_tile(out_shape[-1], spec.lanes)
    if 2 * row_vector >= spec.lanes:
        return False
    top, left, bottom, right = padding
    copied = (data_shape[2] + top + bottom) * (data_shape[3] + left + right)
    return taps * out_pixels >= 4 * copied


def merge_groups(weight: np.ndarray, groups: int, lanes: int,
                 most: int = 4) -> tuple[np.ndarray, int] | None:
    """Merge a grouped conv's groups until each has whole vectors of output channels.

    ``weight`` is ``[OC, C / groups, KH, KW]``. Merging ``m`` neighbouring groups gives a
    block-diagonal weight ``[OC, m * C / groups, KH, KW]`` (zeros outside each group's
    channels) for ``groups / m`` groups: ``m`` times the multiply-accumulates, in whole vector
    FMAs. Returns (weight, groups), or None where that needs more than ``most`` groups merged
    (a depthwise conv: its own schedule) or ``m`` does not divide ``groups``.
    """
    out_channels, group_in = weight.shape[:2]
    group_out = out_channels // groups
    merge = lanes // math.gcd(group_out, lanes)
    if merge > most or groups % merge:
        return None
    if merge == 1:
        return weight, groups
    merged = np.zeros((out_channels, merge * group_in, *weight.shape[2:]), weight.dtype)
    for o in range(out_channels):
        part = (o // group_out) % merge
        merged[o, part * group_in:(part + 1) * group_in] = weight[o]
    return merged, groups // merge


def pointwise_fits(data_shape: tuple[int, ...], out_channels: int, kernel: tuple[int, int],
                   strides: tuple[int, int], padding: tuple[int, ...], spec: KernelSpec) -> bool:
    """Whether :func:`pointwise_kernel` computes this convolution (the caller checks groups)."""
    batch, channels, height, width = data_shape
    # Whole vectors of pixels, in a number of vectors that makes whole 4-vector register tiles:
    # with fewer (a 28x28 map is 49 vectors) each tile is one vector wide, and
    # :func:`conv_nchw_kernel` (pixels as rows) ran such layers 0.66-0.92x the time
    # (512->256 and 128->512 at 28x28, 256->128 at 36x36, 576->96 at 12x12), where at 56x56 and
    # 32x32 this kernel took 0.5-0.8x its time.
    # And weights up to 128 KiB: this kernel streams the whole weight matrix past each block of
    # pixels, and from 256 KiB on (half of Zen 3's L2) it ran at 32-37 GFLOP/s on one AVX2
    # core where conv_nchw_kernel (padded 6 x 2 tiles) ran 60-67: 256->256 and 512->128 at
    # 32x32, 128->512 and 512->128 at 64x64 took 0.48-0.56x the time on that kernel; up to
    # 128 KiB this one stays ahead (128->256 and 256->128 at 56x56: 1.10x; 96->24 at 112x112:
    # 2.9x).
    return (not spec.intrin and batch == 1 and kernel == (1, 1) and strides == (1, 1)
            and not any(padding) and height * width % (spec.lanes * LANE_BLOCKS) == 0
            and channels * out_channels * 4 <= _POINTWISE_WEIGHT_BYTES)


_POINTWISE_WEIGHT_BYTES = 128 << 10


def conv_nchw_fits(data_shape: tuple[int, ...], out_shape: tuple[int, ...], out_channels: int,
                   spec: KernelSpec, groups: int = 1) -> bool:
    """Whether :func:`conv_nchw_kernel` computes this convolution.

    It needs fp32 and batch 1; a grouped conv (``groups`` after :func:`merge_groups`) needs
    whole vectors of output channels per group. Any map and channel count otherwise (the
    groups-1 kernel pads its GEMM to whole tiles) but a single output pixel (a squeeze-excite
    conv on a 1x1 map), which keeps :func:`conv_kernel`.
    """
    if spec.intrin or data_shape[0] != 1:
        return False
    if groups > 1:
        return (out_channels // groups) % spec.lanes == 0
    return int(np.prod(out_shape[2:])) > 1


def to_nchw_kernel(out_shape: tuple[int, ...], rows: int, cols_pad: int, dtype: str) -> Any:
    """``Y[n, c, h, w] = A[(n, h, w), c]``: a conv kernel's pixel-major rows back to NCHW.

    Unscheduled: an injective function TVM fuses with the elementwise ops after it.
    """
    from tvm import te

    a = te.placeholder(int64_shape((rows, cols_pad)), dtype, name="A")
    if len(out_shape) == 3:  # a 1-D convolution's [N, C, W]
        width = int64_shape(out_shape)[2]
        y = te.compute(int64_shape(out_shape), lambda n, c, w: a[n * width + w, c],
                       name=LAYOUT_BLOCK)
    else:
        _, _, height, width = int64_shape(out_shape)
        y = te.compute(int64_shape(out_shape),
                       lambda n, c, h, w: a[(n * height + h) * width + w, c], name=LAYOUT_BLOCK)
    return te.create_prim_func([a, y])


def conv_nchw_weight(weight: np.ndarray, spec: KernelSpec) -> np.ndarray:
    """Pack ``[OC, C, KH, KW]`` for the groups-1 :func:`conv_nchw_kernel`.

    Its GEMM has :func:`conv_columns` outputs; the padding ones' weights are 0.
    """
    matrix = conv_weight_matrix(weight, spec)
    columns = np.zeros((conv_columns(weight.shape[0], spec), matrix.shape[1]), matrix.dtype)
    columns[:weight.shape[0]] = matrix
    return pack_weight(columns, spec)


def conv_weight_matrix(weight: np.ndarray, spec: KernelSpec) -> np.ndarray:
    """``[OC, C, KH, KW]`` -> ``[OC, KH*KW*C_pad]`` in :func:`conv_kernel`'s K order."""
    oc, channels, kh, kw = weight.shape
    c_pad = round_up(channels, spec.group)
    padded = np.zeros((oc, kh, kw, c_pad), spec.weight_dtype)
    padded[..., :channels] = weight.transpose(0, 2, 3, 1)
    return padded.reshape(oc, kh * kw * c_pad)
