"""Winograd F(2x2, 3x3): a stride-1 3x3 convolution in 2.25x fewer multiplies (NHWC, fp32).

Each 2x2 block of output pixels (a *tile*) is computed from the 4x4 input window under it:
``Y = A^T [ (G g G^T) * (B^T d B) ] A`` (Lavin and Gray, 2015), with

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over input channels, the elementwise product is 16 independent GEMMs, one per position
``e`` of the 4x4 transformed tile: ``M[e] = V[e] (tiles x C) @ U[e] (C x OC)``. Three kernels:

1. :func:`winograd_input_kernel`: ``V = B^T d B`` per tile and channel (4 input values per
   element, additions only), written ``[1, tiles_h, tiles_w, 16 * C]`` (position-major channels);
2. :func:`winograd_gemm_kernel`: the 16 GEMMs as a grouped 1x1 convolution over that map (16
   groups of ``C -> OC``), the conv kernels' register tiles reading it in place; the weights
   ``U = G g G^T`` are transformed when the model is built (:func:`winograd_weight`);
3. :func:`winograd_output_kernel`: ``Y = A^T M A`` per tile, output-elementwise-fusable: the
   bias, activation and residual add after the conv are applied in its store
   (:func:`~hwcomp.lower.cpu.kernels.tiling.schedule_winograd_output`).

A 3x3 conv's 9 multiplies per output pixel and channel pair become 4 (16 per 2x2 tile); the
transforms are additions over memory (the transformed input and the GEMM's output are 4x the
map). Rounding: each output sums 16 products of transformed values, with weights scaled by
1/2 and 1/4 (exact in binary); the result differs from the direct sum by a few ulps of its
magnitude.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hwcomp.lower.cpu.kernels.blocks import (
    CHANNELS_LAST_ATTR,
    CONV_BLOCK,
    DILATION_ATTR,
    GROUP_ATTR,
    LANES_ATTR,
    WINOGRAD_INPUT_BLOCK,
    WINOGRAD_OUTPUT_BLOCK,
)
from hwcomp.lower.cpu.kernels.tiling import pow2_tile
from hwcomp.lower.kernel_spec import KernelSpec, int64_shape

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)

# Positions of the transformed tile: the GEMMs.
POSITIONS = 16


def winograd_tiles(data_shape: tuple[int, ...], padding: tuple[int, int, int, int],
                   dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """Return (out_h, out_w, tiles_h, tiles_w) of a stride-1 3x3 conv on NCHW ``data_shape``.

    With dilation ``d`` a tile's two pixels are ``d`` apart (the rows ``b * 2d + r`` and
    ``b * 2d + r + d`` for each phase ``r < d``): ``d`` tiles per ``2d`` rows.
    """
    top, left, bottom, right = padding
    d_h, d_w = dilation
    out_h = data_shape[2] + top + bottom - 2 * d_h
    out_w = data_shape[3] + left + right - 2 * d_w
    return out_h, out_w, -(-out_h // (2 * d_h)) * d_h, -(-out_w // (2 * d_w)) * d_w


def winograd_weight(weight: np.ndarray) -> np.ndarray:
    """``[OC, C, 3, 3]`` -> ``U = G g G^T`` as the grouped GEMM's ``[16 * OC, C]`` matrix.

    Row ``e * OC + o`` is output channel ``o``'s weights at position ``e`` of the 4x4 tile.
    """
    u = np.einsum("ia,ocab,jb->ijoc", G, weight.astype(np.float64), G)  # [4, 4, OC, C]
    oc, channels = weight.shape[:2]
    return np.ascontiguousarray(u.reshape(POSITIONS * oc, channels).astype(np.float32))


def _combination(coefficients: np.ndarray, values: list[Any]) -> Any:
    """Return ``sum(c * v)`` over the nonzero coefficients, as additions where ``c`` is +-1."""
    total = None
    for c, v in zip(coefficients, values, strict=True):
        if c == 0:
            continue
        term = v if abs(c) == 1 else v * float(abs(c))
        if total is None:
            total = -term if c < 0 else term
        else:
            total = total - term if c < 0 else total + term
    assert total is not None
    return total


def _select(index: Any, cases: list[Any]) -> Any:
    """Return ``cases[index]`` for a loop index the schedule unrolls (the selects fold)."""
    from tvm import tirx

    value = cases[-1]
    for k in range(len(cases) - 2, -1, -1):
        value = tirx.Select(index == k, cases[k], value)
    return value


def winograd_input_kernel(data_shape: tuple[int, ...], padding: tuple[int, int, int, int],
                          dilation: tuple[int, int], lanes: int) -> Any:
    """Return the scheduled input transform: NHWC ``[1, H, W, C]`` -> ``V [1, th, tw, 16 * C]``.

    ``V[., t_h, t_w, e * C + c] = (B^T d B)[e]`` of the 4x4 window at ``(2 t_h - top,
    2 t_w - left)`` (dilated: its taps ``d`` apart from the tile's first pixel, see
    :func:`winograd_tiles`); windows reach past the map into zeros (the padding, and below
    and right of a map whose output is odd). Each parallel task is a row of tiles; per tile and channel
    vector the 16 positions are unrolled (the selects fold), reading the window's 16 vectors.
    """
    from tvm import s_tir, te, tirx

    _, channels, height, width = data_shape
    top, left = padding[0], padding[1]
    _, _, tiles_h, tiles_w = winograd_tiles(data_shape, padding, dilation)
    d_h, d_w = dilation
    x = te.placeholder(int64_shape((1, height, width, channels)), "float32", name="X")

    def window(n: Any, t_h: Any, t_w: Any, a: int, b: int, c: Any) -> Any:
        # The tile's first pixel, then the taps d apart.
        y = (t_h // d_h) * (2 * d_h) + t_h % d_h + (a * d_h - top)
        x_ = (t_w // d_w) * (2 * d_w) + t_w % d_w + (b * d_w - left)
        inside = tirx.all(y >= 0, y < height, x_ >= 0, x_ < width)
        value = x[n, tirx.max(tirx.min(y, height - 1), 0), tirx.max(tirx.min(x_, width - 1), 0), c]
        return tirx.if_then_else(inside, value, tirx.const(0.0, "float32"))

    def transform(n: Any, t_h: Any, t_w: Any, q: Any) -> Any:
        e, c = q // channels, q % channels
        d = [[window(n, t_h, t_w, a, b, c) for b in range(4)] for a in range(4)]
        rows = [[_combination(B_T[i], [d[a][b] for a in range(4)]) for b in range(4)]
                for i in range(4)]
        cases = [_combination(B_T[j], rows[i]) for i in range(4) for j in range(4)]
        return _select(e, cases)

    v = te.compute(int64_shape((1, tiles_h, tiles_w, POSITIONS * channels)), transform,
                   name=WINOGRAD_INPUT_BLOCK)
    sch = s_tir.Schedule(te.create_prim_func([x, v]))
    block = sch.get_sblock(WINOGRAD_INPUT_BLOCK)
    n, t_h, t_w, q = sch.get_loops(block)
    e, c = sch.split(q, [POSITIONS, channels])
    vector = pow2_tile(channels, lanes)
    c_outer, c_inner = sch.split(c, [None, vector])
    sch.reorder(n, t_h, t_w, c_outer, e, c_inner)
    sch.parallel(sch.fuse(n, t_h))
    sch.unroll(e)
    if vector > 1:
        sch.vectorize(c_inner)
    return sch.mod["main"]


def winograd_gemm_kernel(tiles_h: int, tiles_w: int, channels: int, out_channels: int,
                         spec: KernelSpec) -> Any:
    """Return the 16 GEMMs as a grouped 1x1 conv: ``V [1, th, tw, 16 C]`` -> ``M [1, th, tw, 16 OC]``.

    Block :data:`CONV_BLOCK` with 16 groups of ``C -> OC`` (``OC`` whole vectors), reading
    ``V`` in place (no padded copy: a 1x1 window); weights packed ``[16 OC / L, C, L, 1]``
    from :func:`winograd_weight`. Unscheduled, output-fusable: the conv kernels' rule tiles it
    as a batch of GEMMs.
    """
    from tvm import te

    lanes = spec.lanes
    x = te.placeholder(int64_shape((1, tiles_h, tiles_w, POSITIONS * channels)), "float32",
                       name="V")
    w = te.placeholder(int64_shape((POSITIONS * out_channels // lanes, channels, lanes, 1)),
                       "float32", name="U")
    k = te.reduce_axis((0, te.const(channels, "int64")), "k")

    def gemm(n: Any, t_h: Any, t_w: Any, o: Any) -> Any:
        base = (o // out_channels) * channels
        return te.sum(x[n, t_h, t_w, base + k] * w[o // lanes, k, o % lanes, 0], axis=k)

    m = te.compute(int64_shape((1, tiles_h, tiles_w, POSITIONS * out_channels)), gemm,
                   name=CONV_BLOCK, attrs={GROUP_ATTR: out_channels, CHANNELS_LAST_ATTR: 1,
                                           LANES_ATTR: lanes})
    return te.create_prim_func([x, w, m])


def winograd_output_kernel(data_shape: tuple[int, ...], padding: tuple[int, int, int, int],
                           dilation: tuple[int, int], out_channels: int) -> Any:
    """Return the output transform: ``M [1, th, tw, 16 OC]`` -> NHWC ``[1, OH, OW, OC]``.

    ``Y[., y, x, o] = (A^T M A)[y % 2, x % 2]`` of tile ``(y // 2, x // 2)`` (dilated: of
    the tile holding the pixel, :func:`winograd_tiles`): unscheduled and
    output-elementwise-fusable (op pattern 4), so TVM fuses the epilogue after it;
    :func:`~hwcomp.lower.cpu.kernels.tiling.schedule_winograd_output` stores each tile's
    four pixels through it.
    """
    from tvm import te

    out_h, out_w, tiles_h, tiles_w = winograd_tiles(data_shape, padding, dilation)
    d_h, d_w = dilation
    m = te.placeholder(int64_shape((1, tiles_h, tiles_w, POSITIONS * out_channels)), "float32",
                       name="M")

    def transform(n: Any, y: Any, x: Any, o: Any) -> Any:
        t_h = (y // (2 * d_h)) * d_h + y % d_h
        t_w = (x // (2 * d_w)) * d_w + x % d_w
        values = [[m[n, t_h, t_w, (4 * i + j) * out_channels + o] for j in range(4)]
                  for i in range(4)]
        cols = [[_combination(A_T[p], [values[i][j] for i in range(4)]) for j in range(4)]
                for p in range(2)]
        pixels = [[_combination(A_T[q], cols[p]) for q in range(2)] for p in range(2)]
        return _select((y // d_h) % 2, [_select((x // d_w) % 2, pixels[p]) for p in range(2)])

    out = te.compute(int64_shape((1, out_h, out_w, out_channels)), transform,
                     name=WINOGRAD_OUTPUT_BLOCK,
                     attrs={CHANNELS_LAST_ATTR: 1, DILATION_ATTR: [d_h, d_w]})
    return te.create_prim_func([m, out])


def winograd_fits(geometry: Any, out_channels: int, spec: KernelSpec) -> bool:
    """Whether a conv takes the Winograd kernels: NHWC, batch 1, groups 1, 3x3 stride 1 (any dilation).

    Its output channels must be whole vectors (the GEMMs' groups); the rest is measured
    (the constants below).
    """
    g = geometry
    if not (g.channels_last and g.groups == 1 and g.kernel == (3, 3) and g.strides == (1, 1)
            and g.data_shape[0] == 1 and len(g.out_shape) == 4):
        return False
    if spec.intrin or out_channels % spec.lanes:
        return False
    channels = g.data_shape[1]
    out_h, out_w, tiles_h, tiles_w = winograd_tiles(g.data_shape, g.padding, g.dilation)
    tiles = tiles_h * tiles_w
    # A dilated conv's tiles cover 2d rows per block: past the map's edge they compute
    # nothing (dilation 12 on a 32-row map: 48 rows, 2.25x the tiles the map needs).
    if tiles < _MIN_TILES or POSITIONS * tiles > _MAX_MULTIPLIES * 9 * out_h * out_w:
        return False
    intensity = channels * out_channels / (channels + out_channels)
    spilled = POSITIONS * tiles * (channels + out_channels) * 4 > _CACHED_BYTES
    return intensity >= (_MIN_INTENSITY_SPILLED if spilled else _MIN_INTENSITY)


# When a Winograd conv pays, against the direct NHWC kernel (AVX-512, one thread, each conv
# timed inside its network with ``hwcomp profile``, and single layers with bias and ReLU).
# A tile's transforms move 16 (C + OC) values through memory for 16 C OC multiply-adds, so
# C OC / (C + OC) says how much GEMM work each transformed byte carries:
# - transformed input and GEMM output within about an L2 (``_CACHED_BYTES``): 24 is enough
#   (DenseNet-121's 128 -> 32 convs, 25.6: 28x28 0.87x the time, 14x14 0.81x; ResNet-18's
#   128 -> 128 on 28x28 0.64x, 256 -> 256 on 14x14 0.67x; 16 -> 64 on 55x55, 12.8, 1.43x);
# - beyond it they stream from L3 or memory: 32 breaks even (64 -> 64 on 56x56: 0.99x,
#   on 64x64 0.8x) and 25.6 loses (DenseNet's 128 -> 32 on 56x56: 1.65x);
# - fewer than 32 tiles (a 7x7 map's 16) reuse each transformed weight too little: 512 ->
#   512 on 7x7 0.97x, DenseNet's 128 -> 32 on 7x7 1.1x;
# - a dilated conv whose tiles overrun the map: dilation 6 on 32x32 (0.56 of the direct
#   multiplies) 0.95x, dilation 12 (1.0 of them) 2.0x.
_MIN_INTENSITY = 24
_MIN_INTENSITY_SPILLED = 32
_CACHED_BYTES = 2 << 20
_MIN_TILES = 32
_MAX_MULTIPLIES = 0.6
