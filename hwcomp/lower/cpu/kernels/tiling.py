"""Register tiling of hwcomp's CPU kernels: tiles, parallel tasks, K blocks, tensorization.

Each kernel is a matmul (for a convolution: over an implicit im2col matrix read from a padded
NHWC copy). :func:`tile_matmul` gives every parallel task ``rows x (blocks * L)`` accumulators
in registers across the K loop; :func:`schedule_fused_kernel` does the same for the kernels that
write NCHW with their epilogue fused; :func:`tile_pixels_by_channels` schedules a return to NCHW.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from hwcomp.lower.cpu.kernels.blocks import (
    CHANNELS_LAST_ATTR,
    CONV_BLOCK,
    DEPTHWISE_BLOCK,
    DILATION_ATTR,
    FUSED_KERNEL_BLOCKS,
    GROUP_ATTR,
    LANES_ATTR,
    PIXELS_ATTR,
    POINTWISE_BLOCK,
    STORE_BLOCK,
    WINOGRAD_OUTPUT_BLOCK,
)
from hwcomp.lower.cpu.kernels.intrinsics import by_element_intrinsic, register_intrinsic
from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.lower.kernel_spec import KernelSpec, round_up

logger = logging.getLogger(__name__)


# The rows of A (output pixels) each parallel task computes; 4 keeps A's 4-byte groups and
# the L-lane accumulators in registers without spilling on either ISA.
ROW_TILE = 4


# The register tile for maps of 7 x 7 (or 7 x 14) pixels, whose rows no 4-row tile divides.
ODD_ROW_TILE = 7


# Lane blocks (of L output channels) per task: 4 rows x 4 blocks = 16 accumulator registers,
# half of AVX-512's and NEON's 32.
LANE_BLOCKS = 4


def schedule_fused_kernel(sch: Any, instruction: KernelSpec) -> bool:
    """Schedule a function holding a kernel that writes NCHW and the elementwise ops after it.

    The kernel is :data:`POINTWISE_BLOCK`, :data:`DEPTHWISE_BLOCK` or :data:`CONV_BLOCK`
    (after its padded NHWC copy; for groups 1, followed by its NCHW :data:`STORE_BLOCK`).
    The ops after it collapse into one block, which is inlined into the store of each
    register tile: bias, activation and residual add cost no pass of their own (an NHWC
    depthwise block: :func:`_schedule_depthwise_nhwc`). Returns False
    (nothing done) for a function without either block, or (with a warning) one whose other
    blocks are not the elementwise tail FuseOps gives an output-fusable op.
    """
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    infos = normalize_prim_func(sch)
    names = [sch.get(info.block_rv).name_hint for info in infos or []]
    kernel = next((name for name in FUSED_KERNEL_BLOCKS if name in names), None)
    if kernel is None:
        return False
    block = sch.get_sblock(kernel)
    # The conv's NHWC copy comes first (none: the pointwise kernel, an NHWC input in place).
    first = 0 if kernel == POINTWISE_BLOCK or _nhwc_block(sch) is None else 1
    # The groups-1 conv: a GEMM over padded rows and columns, then its NCHW store.
    padded = first + 1 < len(names) and names[first + 1] == STORE_BLOCK
    channels_last = CHANNELS_LAST_ATTR in sch.get(block).annotations
    if kernel == DEPTHWISE_BLOCK and channels_last and names.index(kernel) == 0:
        return _schedule_depthwise_nhwc(sch, block, infos[1:])
    if kernel == WINOGRAD_OUTPUT_BLOCK:
        return (names.index(kernel) == 0 and not any(info.is_reduction() for info in infos)
                and schedule_winograd_output(sch, block, infos[1:], instruction.lanes))
    roles = None if padded else _output_roles(sch.get(block), channels_last)
    if (names.index(kernel) != first or any(info.is_reduction() for info in infos[first + 1:])
            or (roles is None and not padded)):
        logger.warning("%s kernel left to the generic schedule: blocks %s", kernel, names)
        return False
    epilogue = [info.block_rv for info in infos[first + 1:]]
    lanes = sch.get(block).annotations.get(LANES_ATTR)
    if lanes is not None and int(lanes) != instruction.lanes:
        instruction = fma_spec(int(lanes))
    for tail in epilogue[:-1]:
        sch.compute_inline(tail)
    if padded:
        return _schedule_padded_conv(sch, block, epilogue[-1], instruction, channels_last)
    assert roles is not None
    out_shape = [int(v) for v in sch.get(block).writes[0].source.shape]
    width = out_shape[-2] if channels_last else out_shape[-1]
    group_out = sch.get(block).annotations.get(GROUP_ATTR)
    group_out = int(group_out) if group_out is not None else None
    # Iterate over (o, p = h * W + w): a register tile is then one rectangle of a 2-D scratch
    # (reindex) rather than a ragged piece of the NCHW map, and the store of each tile can
    # take the NCHW output's place (and the epilogue's) exactly. The pointwise kernel's rows
    # are output channels (each weight broadcast over a vector of pixels); the conv's rows are
    # pixels (each input value broadcast over a vector of output channels). A grouped conv
    # iterates (group, p, o within the group): a batch of GEMMs.

    def layout(*iters: Any) -> tuple[Any, ...]:
        o, h, w, k = (0 if role is None else iters[role] for role in roles)
        pixel = h * width + w
        if kernel == POINTWISE_BLOCK:
            return (o, pixel, k)
        if group_out is not None:
            return (o // group_out, pixel, o % group_out, k)
        return (pixel, o, k)

    from tvm.tirx import IndexMap

    iter_count = len(sch.get(block).iter_vars)
    sch.transform_block_layout(block, IndexMap.from_func(layout, ndim=iter_count))
    sch.reindex(block, ("write", 0))
    copy = sch.get_consumers(block)[0]
    im2col = None
    if kernel == CONV_BLOCK:
        out_channels = out_shape[-1] if channels_last else out_shape[1]
        im2col = _im2col_split(sch, block, out_channels // group_out if group_out else 1)
    tail = sch.get(epilogue[-1]) if epilogue else None
    # The pointwise kernel's rows are output channels and its vectors pixels of the NCHW
    # input: 4 reduction steps of a pixel vector are 4 rows apart (TVM's tensorize fails on
    # some of those regions), and the depthwise kernel's reduction is the taps.
    tile_matmul(sch, block, instruction, im2col,
                pixels_inner=(kernel != POINTWISE_BLOCK and not channels_last
                              and _pixels_inner(tail)),
                by_element=kernel == CONV_BLOCK)
    if kernel == DEPTHWISE_BLOCK:
        copy_elements = int(np.prod([int(v) for v in
                                     sch.get(sch.get_sblock("nhwc")).writes[0].source.shape]))
        _schedule_nhwc(sch, copy_elements >= _MIN_PARALLEL_COPY)
    sch.reverse_compute_inline(copy)
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1])
    return True


def _schedule_depthwise_nhwc(sch: Any, block: Any, epilogue: list[Any]) -> bool:
    """Tile an NHWC depthwise conv: per task a run of a row's pixels, all channels.

    Each tile is ``pixels x lanes`` accumulators (a run of one row's output pixels,
    :func:`_depthwise_tile`, by one vector of channels) over the unrolled window: each tap is
    one weight vector and one FMA per pixel, its bounds test affine in the pixel. The channel
    blocks run inside the task, so a task reads a few whole input rows. The store applies the
    last ``epilogue`` block (bias, activation, residual; the blocks before it inlined into it).
    Against the GEMM schedule it had (the taps one K loop, a division and remainder by the
    kernel width per load, a row tile and one channel block per task), single layers with
    bias and ReLU, one thread (``hwcomp profile``): 72 channels 3x3 on 56x56 (8 lanes)
    158 -> 85 us, 120 5x5 on 28x28 139 -> 61, 480 5x5 on 14x14 78 -> 39, 1152 5x5 on 7x7
    59 -> 26; maps bigger than L2 gain less (their reads stream from L3): 144 on 56x56
    241 -> 182, 32 on 112x112 193 -> 176, 96 on 112x112 stride 2 280 -> 262.
    """
    roles = _output_roles_nhwc(sch.get(block))
    if roles is None or any(info.is_reduction() for info in epilogue):
        logger.warning("%s kernel left to the generic schedule", DEPTHWISE_BLOCK)
        return False
    lanes = int(sch.get(block).annotations[LANES_ATTR])
    for info in epilogue[:-1]:
        sch.compute_inline(info.block_rv)
    tail = epilogue[-1].block_rv if epilogue else None
    loops = sch.get_loops(block)
    h, w, c = (None if r is None else loops[r] for r in roles[:3])
    window = [loops[r] for r in roles[3]]
    width = 1 if w is None else int(sch.get(w).extent)
    tile = _depthwise_tile(width, int(sch.get(block).annotations[PIXELS_ATTR]))
    c_outer, c_inner = sch.split(c, [None, lanes])
    pixel_loops = []
    w_outer = None
    if w is not None:
        w_outer, w_inner = sch.split(w, [None, tile])
        pixel_loops = [w_inner]
    outer = [loop for loop in (h, w_outer) if loop is not None]
    tasks = int(np.prod([int(sch.get(loop).extent) for loop in outer]))
    blocks = int(sch.get(c_outer).extent)
    chunks = next((d for d in range(1, blocks + 1)
                   if blocks % d == 0 and tasks * d >= _MIN_DEPTHWISE_TASKS), blocks)
    if chunks > 1:
        c_chunk, c_outer = sch.split(c_outer, [chunks, None])
        outer = [c_chunk, *outer]
    sch.reorder(*outer, c_outer, *window, *pixel_loops, c_inner)
    if outer:
        sch.parallel(_fuse(sch, outer))
    acc = sch.cache_write(block, 0, "local")
    if tail is not None:
        sch.reverse_compute_inline(tail)
    sch.reverse_compute_at(acc, c_outer)
    sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, lanes])[-1])
    for loop in (*window, *pixel_loops):
        sch.unroll(loop)
    sch.vectorize(c_inner)
    if window:
        init = sch.decompose_reduction(block, window[0])
        sch.vectorize(sch.get_loops(init)[-1])
    return True


def schedule_winograd_output(sch: Any, block: Any, epilogue: list[Any], lanes: int) -> bool:
    """Schedule the output transform with the ``epilogue`` blocks applied in its store.

    Per parallel task a row of tiles; per tile and vector of output channels the four pixels
    are unrolled (``y % 2`` and ``x % 2`` constants: the selects fold), each reading the
    tile's 16 vectors of ``M``.
    """
    for info in epilogue[:-1]:
        sch.compute_inline(info.block_rv)
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1].block_rv)
    dims = _written_iterators(sch.get(block))
    if len(dims) != 4 or None in dims[1:] or len(sch.get(block).iter_vars) != sum(
            d is not None for d in dims):
        return False
    d_h, d_w = (int(v) for v in sch.get(block).annotations[DILATION_ATTR])
    loops = sch.get_loops(block)
    y, x, o = (loops[d] for d in dims[1:])
    # y = (block * 2 + parity) * d + phase: the parity unrolled, the selects fold.
    b_h, p_h, r_h = sch.split(y, [None, 2, d_h])
    b_w, p_w, r_w = sch.split(x, [None, 2, d_w])
    channels = int(sch.get(o).extent)
    vector = pow2_tile(channels, lanes)
    o_outer, o_inner = sch.split(o, [None, vector])
    sch.reorder(b_h, r_h, b_w, r_w, o_outer, p_h, p_w, o_inner)
    sch.parallel(sch.fuse(b_h, r_h))
    sch.unroll(p_h)
    sch.unroll(p_w)
    if vector > 1:
        sch.vectorize(o_inner)
    return True


# Parallel tasks a depthwise conv wants at least: where its row tiles are fewer (7 on a 7x7
# map, split 4 / 3 over two threads) the channel blocks split into chunks too, each task a
# chunk of a row (MnasNet at two threads 0.97x the time; 32 measured the same). Every channel
# block a task of its own measured slower (MnasNet 1.03-1.05x): each re-read its rows.
_MIN_DEPTHWISE_TASKS = 16


def _depthwise_tile(width: int, most: int) -> int:
    """Return the output pixels of a depthwise tile of a row ``width`` pixels wide.

    8 where that divides the row, else its largest divisor up to ``most`` (a tile that does
    not divide the row costs a test per pixel: 120 channels 5x5 on 28x28 ran at 20 GMAC/s in
    tiles of 8, 48 in tiles of 14). Whole networks against tiles of up to 14 on every map
    (one thread, A/B; their 56- and 112-pixel rows in 8s rather than 14s): MnasNet 0.99x the
    time, MobileNetV2 0.96x, EfficientNet-B0 0.96x. Where the best divisor is under 4
    (a prime width: EfficientNet at 260 pixels has 17x17 maps), even tiles cover the row, the
    last with a test per pixel: 720 channels 5x5 on 17x17 took 277 us in 1-pixel tiles, 140
    in tiles of 9.
    """
    if width % _DEPTHWISE_PREFERRED == 0:
        return _DEPTHWISE_PREFERRED
    best = max(d for d in range(1, most + 1) if width % d == 0)
    if best >= 4:
        return best
    return -(-width // -(-width // most))


def depthwise_pixels(spec: KernelSpec) -> int:
    """Return the most output pixels an NHWC depthwise tile holds on ``spec``'s registers.

    One accumulator vector per pixel, the tap's weight vector beside them (the input is an
    FMA's memory operand): 14 with AVX-512's 32 registers, 12 with AVX2's 16.
    """
    return min(_DEPTHWISE_PIXELS, spec.accumulators)


# The most output pixels of a depthwise tile where registers allow (14 divides the 28-, 14-
# and 7-pixel rows of 224-pixel networks), and the tile taken where it divides the row.
_DEPTHWISE_PIXELS = 14


_DEPTHWISE_PREFERRED = 8


def _output_roles_nhwc(block: Any) -> tuple[Any, ...] | None:
    """Return an NHWC depthwise block's iterators (h, w, c, [window]) as indices (None: absent).

    TVM drops iterators of extent 1 (the batch, a 1-row map's h, a 1-wide window axis).
    """
    roles = _written_and_reduced(block)
    if roles is None or len(roles[0]) != 4 or roles[0][-1] is None:
        return None
    (_, h, w, c), window = roles
    return h, w, c, window


def _written_and_reduced(block: Any) -> tuple[list[int | None], list[int]] | None:
    """Return a kernel block's written iterators (:func:`_written_iterators`) and reductions.

    None unless every iterator either indexes one written dimension or is a reduction.
    """
    iters = list(block.iter_vars)
    dims = _written_iterators(block)
    reductions = [i for i, it in enumerate(iters) if int(it.iter_type) == _REDUCE]
    if sum(d is not None for d in dims) + len(reductions) != len(iters):
        return None
    return dims, reductions


def _pixels_inner(epilogue: Any) -> bool:
    """Whether an NCHW kernel's tile store runs pixels innermost, given its last epilogue block.

    Pixels innermost, a vector of them is one contiguous NCHW store per channel; but a task's
    pixels may come in runs of 2 (66 rows), and an epilogue of exponentials (SiLU, GELU,
    sigmoid) or divisions then ran on pairs. Channels innermost, it runs on whole vectors of
    the tile buffer and the store scatters them: a 672-channel 5x5 depthwise conv on 14x14
    with SiLU took 0.62 ms (with ReLU 0.37), channels innermost 0.35-0.50 ms; EfficientNet-B0
    0.77-0.79x the time. Bias and ReLU keep pixels innermost (DeepLab and MnasNet took
    1.02-1.10x the time with channels).
    """
    return epilogue is None or not _costly(epilogue)


def _costly(block: Any) -> bool:
    """Whether a block's expression holds an exponential, logarithm or division."""
    return re.search(r"exp|log|tanh|erf|sigmoid|(?<![/])/(?![/])", str(block.body)) is not None


def _im2col_split(sch: Any, block: Any, groups: int) -> tuple[int, int]:
    """Return a conv block's K as (taps, channels per group), from its NHWC input's channels."""
    channels = int(_conv_input_shape(sch, block)[-1]) // groups
    return int(sch.get(block).iter_vars[-1].dom.extent) // channels, channels


def _nhwc_block(sch: Any) -> Any:
    """Return a conv kernel's padded NHWC copy block, or None (an NHWC input read in place)."""
    try:
        return sch.get_sblock("nhwc")
    except Exception:  # noqa: BLE001 - TVM raises its own error for a missing block
        return None


def _conv_input_shape(sch: Any, block: Any) -> list[int]:
    """Return the shape of what a conv block reads its rows from: its NHWC copy, or input."""
    copy = _nhwc_block(sch)
    if copy is not None:
        return [int(v) for v in sch.get(copy).writes[0].source.shape]
    return [int(v) for v in sch.get(block).reads[0].source.shape]


def _schedule_padded_conv(sch: Any, block: Any, store: Any, instruction: KernelSpec,
                          channels_last: bool = False) -> bool:
    """Tile the groups-1 conv's GEMM (rows x columns, both padded); store tiles in NCHW (NHWC).

    ``store`` is the one block after the GEMM: its NCHW store with the epilogue inlined.
    Iterated over (p = h * W + w, o), it goes into each task's loop after the task's tiles,
    reading their accumulators; only the real pixels and channels are written (a predicate
    the last task's padding rows and the padding columns fail). An NHWC store runs the
    channels innermost: each accumulator vector is one contiguous store.
    """
    from tvm import tirx
    from tvm.tirx import IndexMap

    dims = _written_iterators(sch.get(store))
    shape = sch.get(store).writes[0].source.shape
    if channels_last:
        width = int(shape[-2])
        o_dim, plane = dims[-1], dims[1:-1]
    else:
        width = int(shape[-1])
        o_dim, *plane = dims[1:]
    h_dim, w_dim = (None, plane[0]) if len(plane) == 1 else plane

    def layout(*iters: Any) -> tuple[Any, ...]:
        o, h, w = (tirx.const(0, "int64") if role is None else iters[role]
                   for role in (o_dim, h_dim, w_dim))
        return (h * width + w, o)

    sch.transform_block_layout(store, IndexMap.from_func(layout, ndim=len(sch.get(store).iter_vars)))
    tile_matmul(sch, block, instruction, _im2col_split(sch, block, 1),
                pixels_inner=not channels_last and _pixels_inner(sch.get(store)), store=store)
    return True


def _output_roles(block: Any, channels_last: bool = False) -> tuple[int | None, ...] | None:
    """Which of a kernel block's iterators is (o, h, w, k): their index, None where absent.

    TVM drops iterators of extent 1 (the batch, a 1-row map's h) from fused functions, and a
    1-D conv has no h; the write region says which iterator indexes which output dimension.
    None when the block is not a spatial write over its iterators plus one reduction.
    """
    roles = _written_and_reduced(block)
    if roles is None:
        return None
    dims, reductions = roles
    if len(reductions) != 1 or len(dims) not in (3, 4):
        return None
    if channels_last:
        o, plane = dims[-1], dims[1:-1]
    else:
        o, *plane = dims[1:]
    h, w = (None, plane[0]) if len(plane) == 1 else plane
    return o, h, w, reductions[0]


def _written_iterators(block: Any) -> list[int | None]:
    """For each dimension ``block`` writes, the index of the iterator indexing it (None: none).

    TVM drops iterators (and their loops) of extent 1 from fused functions.
    """
    iters = list(block.iter_vars)
    return [next((i for i, it in enumerate(iters) if rng.min.same_as(it.var)), None)
            for rng in block.writes[0].region]


# tirx.IterVar.CommReduce: a reduction iterator.
_REDUCE = 2


def tile_pixels_by_channels(sch: Any, block: Any, lanes: int) -> None:
    """Schedule an NCHW (or 1-D NCW) block that reads pixel-major rows: pixels x channels tiles.

    Tiles are up to ``lanes`` pixels of the flattened ``h * w`` plane (a 7x7 or 14x14 map
    tiles as well as a 56x56 one) by ``lanes`` channels: a tile reads one cache line of each
    of its rows, which stays in L1, and writes one contiguous vector per channel (TVM's
    default order walks the rows a cache line per element).
    """
    loops = sch.get_loops(block)
    # ([n,] c, h, w), or ([n,] c, w) for a 1-D conv's output; TVM drops a batch loop of
    # extent 1.
    rank = len(sch.get(block).writes[0].source.shape)
    *batch, c = loops[:len(loops) - rank + 2]
    plane = loops[len(loops) - rank + 2:]
    channels = sch.get(c).extent.value
    pixels = int(np.prod([sch.get(loop).extent.value for loop in plane]))
    tile = max(d for d in range(1, lanes + 1) if pixels % d == 0)
    group = pow2_tile(channels, lanes)
    p_outer, p_inner = sch.split(_fuse(sch, plane), [None, tile])
    c_outer, c_inner = sch.split(c, [None, group])
    sch.reorder(*batch, p_outer, c_outer, c_inner, p_inner)
    sch.parallel(_fuse(sch, [*batch, p_outer]))
    if tile > 1:
        sch.vectorize(p_inner)


def schedule_matmul(func: Any, block_name: str, instruction: KernelSpec,
              im2col: tuple[int, int] | None = None) -> Any:
    """Return ``func`` with its matmul block ``block_name`` scheduled by :func:`tile_matmul`."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if im2col is not None:
        sch.compute_inline(sch.get_sblock("col"))
    tile_matmul(sch, sch.get_sblock(block_name), instruction, im2col)
    return sch.mod["main"]


def tile_matmul(sch: Any, block: Any, instruction: KernelSpec,
                 im2col: tuple[int, int] | None = None, pixels_inner: bool = False,
                 store: Any = None, by_element: bool = True) -> Any:
    """Register-tile the matmul ``block`` (loops m, n, k) and tensorize its inner block.

    Each parallel task owns ``rows x (blocks * L)`` accumulators (a local buffer LLVM keeps in
    vector registers) across the whole K loop, so the inner loop is loads of A elements and W
    vectors feeding one dot-product instruction (int8) or vector FMA (fp32) each; with
    ``by_element`` (where A's reduction steps and W's rows are contiguous) and a spec whose
    FMA multiplies by a lane (NEON), 4 reduction steps per A vector. Returns the
    block that stores each tile's accumulators: ``store``, where given, is the block that
    reads ``block``'s output (it then reads the accumulators instead).
    """
    if instruction.intrin:
        register_intrinsic(instruction)
    local = sch.cache_write(block, 0, "local")
    # (m, n, k), or (g, m, n, k) for a grouped conv: a batch of GEMMs, one per group.
    *group, m, n, k = sch.get_loops(block)
    groups = sch.get(group[0]).extent.value if group else 1
    rows = sch.get(m).extent.value
    lane_blocks = sch.get(n).extent.value // instruction.lanes
    block_tile = _block_tile(lane_blocks, instruction.accumulators)
    widest = _widest_row_tile(block_tile, instruction.accumulators)
    # The most rows that divide the rows evenly (a 9x11 map: 11; a 50-frame sequence: 10).
    row_tile = max(t for t in range(1, widest + 1) if rows % t == 0)
    if row_tile < ROW_TILE and rows % ODD_ROW_TILE == 0:
        # A 7x7 map (49 rows) the NCHW conv kernel cannot pad: 7 rows by as many vectors as
        # the registers hold; one row per tile would stream every weight once per pixel.
        row_tile = ODD_ROW_TILE
        block_tile = _odd_block_tile(block_tile, lane_blocks, instruction.accumulators)
    depth = sch.get(k).extent.value
    row_bytes = depth * np.dtype(instruction.activation_dtype).itemsize
    weight_bytes = (lane_blocks * instruction.lanes * depth
                    * np.dtype(instruction.weight_dtype).itemsize)
    # Which operand stays in cache while the other streams past it. Where A outweighs the
    # weights (early conv layers, long token sequences) a task keeps a group of rows and every
    # column block's weights stream past them; a convolution runs parallel over row groups
    # only (its rows are read from a window of the padded input). Otherwise (late
    # layers: 14x14 and 7x7 maps with 1-9 MiB of weights) consecutive tasks share one column
    # block's weight panel and rows stream past it: the weights are read from memory once,
    # not once per row group. Within a task, the panel is reused over `tiles` row tiles.
    rows_in_cache = rows * row_bytes >= weight_bytes
    tile_bytes = row_tile * row_bytes
    if im2col is not None:
        # A convolution's rows are windows of its padded input, not rows of their own: the
        # bytes that stay in cache are the input's (a 256->256 3x3 conv on 32x32 has 9 MiB of
        # im2col rows but 1.2 MiB of input against 2.3 MiB of weights: rows kept, its weights
        # streamed from L3 once per row group, it ran 0.8x the time with the weights kept).
        input_bytes = _input_bytes(sch, block, instruction)
        rows_in_cache = input_bytes >= weight_bytes
        # Likewise a row tile reads its im2col rows, or its share of the input where that is
        # less (a window's taps read the same pixels): ResNet-50's 512-channel 3x3 on 7x7
        # has 110 KiB of im2col rows per 6-row tile but 18 KiB of input. Counted as im2col
        # rows, a task held one row tile and streamed the whole weight panel (1.2 MiB) past
        # it; now the panel's slices stay in L1 across the map's 9 row tiles: 2343 -> 1949 us
        # (onnxruntime 2037), ResNet-50 0.97x the time at one thread.
        tile_bytes = min(tile_bytes, -(-input_bytes * row_tile // rows))
    rows_only = im2col is not None and rows_in_cache
    column_tasks = 1 if rows_only else lane_blocks // block_tile
    tiles = _row_tiles_per_task(rows // row_tile, tile_bytes, column_tasks * groups)
    m_outer, m_tile, m_inner = sch.split(m, [None, tiles, row_tile])
    n_outer, n_block, n_lane = sch.split(n, [None, block_tile, instruction.lanes])
    outer = (*group, m_outer, n_outer) if rows_in_cache else (*group, n_outer, m_outer)
    if instruction.intrin:
        k_outer, k_inner = sch.split(k, [None, instruction.group])
        sch.reorder(*outer, m_tile, k_outer, m_inner, n_block, n_lane, k_inner)
    else:
        k_outer = k
        sch.reorder(*outer, m_tile, k_outer, m_inner, n_block, n_lane)
    # A kernel of a few microseconds runs on one thread: waking the pool costs more.
    parallel = groups * rows * lane_blocks * instruction.lanes * depth >= _MIN_PARALLEL_MACS
    fused = _fuse(sch, [*group, m_outer] if rows_only else list(outer))
    if parallel:
        sch.parallel(fused)
    store_at = m_tile
    by_lane = None  # the 4-step reduction loop of FMA by element
    if im2col is None:
        split = (_split_by_element(sch, k_outer, n_block, m_inner, n_lane, instruction)
                 if by_element else None)
        if split is not None:
            k_outer, by_lane = split
    else:
        # Implicit im2col: the matmul reads A straight from the padded NHWC copy, K split as
        # (tap, channel), so an A element is nhwc[oh + dy, ow + dx, c] with the pixel's base
        # address hoisted out of the K loop, instead of building im2col rows (9x the input,
        # written then read; the caller inlined the im2col expression, if any). K is also
        # blocked: for each tap and block of channels every row tile of the task runs
        # against the same slice of the weight panel, which stays in L1,
        # where a whole-K pass per row tile streamed the panel (up to 600 KiB) from L2 for
        # every 4 pixels. The accumulators go to the task's tile buffer between blocks: a load
        # and a store per block of channels. Both together: ResNet-style and ResNet-50
        # bundles 0.88x and 0.87x the time of the im2col version (A/B, alternating rounds).
        taps, c_pad = im2col
        steps = c_pad // instruction.group
        k_tap, k_channel = sch.split(k_outer, [taps, steps])
        step_bytes = (block_tile * instruction.lanes * instruction.group
                      * np.dtype(instruction.weight_dtype).itemsize)
        k_steps = pow2_tile(steps, max(1, _K_BLOCK_BYTES // step_bytes))
        # A panel that fits L1 needs no blocking, and blocks of a few channels (a 3-channel
        # stem) would store the accumulators every few FMAs.
        inner_k = k_channel
        if k_steps >= _min_k_block(instruction) and taps * steps * step_bytes > _L1_BYTES:
            k_block, k_step = sch.split(k_channel, [None, k_steps])
            sch.reorder(k_tap, k_block, m_tile, k_step)
            store_at = fused
            inner_k = k_step
        split = (_split_by_element(sch, inner_k, n_block, m_inner, n_lane, instruction)
                 if by_element else None)
        by_lane = None if split is None else split[1]
        channel_loop = inner_k if split is None else split[0]
        if (instruction.by_element and inner_k == k_channel
                and sch.get(channel_loop).extent.value <= _FEW_CHANNEL_STEPS):
            # Few channels per tap (a 3-channel stem, SqueezeNet's 16-channel expand): the
            # per-tap address arithmetic (dy, dx from the tap index) cost as much as the
            # FMAs; unrolled, the taps are constant offsets. NEON under qemu (cortex-a72):
            # 16 -> 64 3x3 at 55x55 12.9 M -> 12.5 M instructions, a 3-channel stem at
            # 111x111 19.9 M -> 16.3 M.
            sch.unroll(k_tap)
        k_outer = k_tap
    sch.reverse_compute_at(local, store_at)
    if store is not None:
        sch.reverse_compute_at(store, store_at)
        sch.compute_inline(local)
        local = store
    if pixels_inner and row_tile > 1:
        # The caller makes this store write NCHW (pixels x channels transposed): with pixels
        # innermost a vector of them is one contiguous store per channel, its elements read
        # across the tile buffer's rows.
        rows_loop, cols_loop = sch.get_loops(local)[-2:]
        sch.reorder(cols_loop, rows_loop)
        extent = sch.get(rows_loop).extent.value
        vec = pow2_tile(extent, instruction.lanes)
        if vec > 1:
            sch.vectorize(sch.split(rows_loop, [None, vec])[1])
    else:
        # A store of 24 or 40 channels (an NHWC tile's real columns) as one <24 x float>
        # vector: LLVM split its exponential's floor into a libm call per lane (a 24-channel
        # SiLU conv took 4x the time of the same conv with ReLU, a 3 -> 24 stem 5x that of 3
        # -> 32). Vectors of the widest power of two dividing the columns instead.
        columns = sch.get_loops(local)[-1]
        extent = sch.get(columns).extent.value
        vec = pow2_tile(extent, instruction.lanes)
        if extent % instruction.lanes and 1 < vec < extent:
            columns = sch.split(columns, [None, vec])[1]
        sch.vectorize(columns)
    if not instruction.intrin and by_lane is None:  # before decompose: still a reduction
        sch.vectorize(n_lane)
    init = sch.decompose_reduction(block, k_outer)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(m_inner)
    sch.unroll(n_block)
    if by_lane is not None:
        sch.tensorize(by_lane, by_element_intrinsic(instruction))
    elif instruction.intrin:
        sch.tensorize(n_lane, instruction.intrin)
    if im2col is not None and _nhwc_block(sch) is not None:
        _schedule_nhwc(sch, parallel)
    return local


# Reduction steps per tap (channel vectors with FMA by element) up to which the tap loop is
# unrolled.
_FEW_CHANNEL_STEPS = 4


def _split_by_element(sch: Any, k: Any, n_block: Any, m_inner: Any, n_lane: Any,
                      instruction: KernelSpec) -> tuple[Any, Any] | None:
    """Take the reduction 4 steps at a time for NEON's FMLA/SDOT by element: its loops, or None.

    Each (row, lane block) cell of the register tile becomes one
    :func:`~hwcomp.lower.cpu.kernels.intrinsics.by_element_intrinsic` update: one vector
    load of a row's 4 A values (int8: 4 groups of 4 bytes) and 4 FMLAs (SDOTs) by its
    lanes. The lane blocks go outside the rows, so a block's 4 weight vectors are loaded
    once for all rows of the tile and each row's A vector once for all blocks (16
    accumulators, 4 A and 4 weight vectors live: 24 of NEON's 32 registers). A 3x3 conv of
    64 channels on 56x56, per inference under qemu (cortex-a72): 54.0 M instructions with
    one A element per FMA step, 42.2 M this way.
    """
    if not instruction.by_element or sch.get(k).extent.value % 4:
        return None
    k_outer, k_inner = sch.split(k, [None, 4])
    sch.reorder(k_outer, n_block, m_inner, k_inner, n_lane)
    return k_outer, k_inner


def _schedule_nhwc(sch: Any, parallel: bool) -> None:
    """Schedule a kernel's padded NHWC copy of its input ("nhwc")."""
    # NCHW -> padded NHWC in tiles of 16 pixels x 16 channels: the tile's 16 input rows
    # stay in L1 while it writes 16 contiguous channel vectors. Rows and column tiles run in
    # parallel (a 1-D conv's copy is one row). Loops of extent 1 are gone (batch 1, a 1-D
    # conv's one row, a single input channel).
    nhwc = sch.get_sblock("nhwc")
    n, h, w, c = _loops_by_dim(sch, nhwc)
    rows_loops = [loop for loop in (n, h) if loop is not None]
    w_outer, w_inner = w, None
    if w is not None:
        w_outer, w_inner = sch.split(w, [None, pow2_tile(sch.get(w).extent.value, 16)])
    c_outer, c_inner, c_tile = c, None, 1
    if c is not None:
        c_tile = pow2_tile(sch.get(c).extent.value, 16)
        c_outer, c_inner = sch.split(c, [None, c_tile])
    order = [*rows_loops, w_outer, c_outer, w_inner, c_inner]
    sch.reorder(*(loop for loop in order if loop is not None))
    tasks = [loop for loop in (*rows_loops, w_outer) if loop is not None]
    if parallel and tasks:
        sch.parallel(_fuse(sch, tasks))
    if c_tile > 1:
        sch.vectorize(c_inner)


def _loops_by_dim(sch: Any, block: Any) -> list[Any]:
    """Return the loops of a spatial ``block``, one per dimension it writes (None: dropped)."""
    loops = iter(sch.get_loops(block))
    return [None if index is None else next(loops)
            for index in _written_iterators(sch.get(block))]


def _fuse(sch: Any, loops: list[Any]) -> Any:
    """Return ``loops`` fused into one (a single loop as it is)."""
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


# Parallel tasks wanted at least (a few per core, so uneven tasks balance out), and the most
# bytes of A rows one task should touch (about half an L2).
_MIN_TASKS = 8


_TASK_ROW_BYTES = 256 << 10


# Bytes of a weight panel slice a convolution's row tiles share, and the L1 it must stay in
# (the smallest of the CPU profiles': 32 KiB on Zen 4 and Cortex-A72, 48 KiB on Sapphire Rapids).
_K_BLOCK_BYTES = 16 << 10


_L1_BYTES = 32 << 10


_MIN_K_BLOCK = 16


def _min_k_block(instruction: KernelSpec) -> int:
    """Return the fewest reduction steps a K block may take for ``instruction``'s tile.

    Each block loads and stores the whole register tile: a 24-accumulator tile (AVX-512)
    takes blocks of 32 steps (SqueezeNet's 16 -> 64 3x3 on 55x55, 16 channels a tap: blocks
    of one tap ran 1.19x the time of unblocked taps).
    """
    if instruction.accumulators > ROW_TILE * LANE_BLOCKS:
        return 2 * _MIN_K_BLOCK
    return _MIN_K_BLOCK


def _input_bytes(sch: Any, block: Any, instruction: KernelSpec) -> int:
    """Return the bytes of a convolution's padded NHWC input copy (or its NHWC input)."""
    shape = _conv_input_shape(sch, block)
    return int(np.prod(shape)) * np.dtype(instruction.activation_dtype).itemsize


# Multiply-accumulates below which a kernel stays on one thread (~2 us of one core's FMAs;
# a transformer block of 16 tokens x 64 ran 0.043 ms on one thread, 0.08 ms on two).
_MIN_PARALLEL_MACS = 1 << 18


# Elements of an input copy below which it stays on one thread.
_MIN_PARALLEL_COPY = 1 << 14


def _row_tiles_per_task(row_tiles: int, tile_bytes: int, column_tasks: int = 1) -> int:
    """Row tiles per parallel task: the largest divisor up to 16 that keeps enough tasks.

    Each row group runs against ``column_tasks`` column blocks in tasks of its own; a task's
    rows of A must stay in cache.
    """
    for tiles in range(16, 1, -1):
        if (row_tiles % tiles == 0 and row_tiles // tiles * column_tasks >= _MIN_TASKS
                and tiles * tile_bytes <= _TASK_ROW_BYTES):
            return tiles
    return 1


def _block_tile(lane_blocks: int, accumulators: int = ROW_TILE * LANE_BLOCKS) -> int:
    """Lane blocks per register tile: 4 with 16 accumulators, at most 2 with AVX2's 12."""
    widest = LANE_BLOCKS if accumulators >= ROW_TILE * LANE_BLOCKS else 2
    return next(t for t in (widest, 2, 1) if t <= widest and lane_blocks % t == 0)


def _odd_block_tile(block_tile: int, lane_blocks: int, accumulators: int) -> int:
    """Lane blocks beside 7 register-tile rows: 7 x b accumulators plus b weight vectors.

    AVX-512 and NEON have 32 vector registers and take the broadcast operand without one of
    its own (AVX-512's embedded broadcast, NEON's FMA by element): 7 x 4. AVX2 (12
    accumulators, 16 registers) needs a register for the broadcast: 7 x 1 (7 x 2 spilled:
    ResNet-18's 512-channel 3x3 on 7x7 ran 2.36 ms, 7 x 1 1.59 ms; MnasNet's 7x7 1x1
    convs 0.25-0.26 ms, 7 x 1 0.20-0.21 ms).
    """
    registers, broadcast = (16, 1) if accumulators < ROW_TILE * LANE_BLOCKS else (32, 0)
    return next(b for b in (block_tile, 2, 1)
                if b <= block_tile and lane_blocks % b == 0
                and ODD_ROW_TILE * b + b + broadcast <= registers)


def _widest_row_tile(block_tile: int, accumulators: int = ROW_TILE * LANE_BLOCKS) -> int:
    """Narrow outputs (fewer lane blocks) take more rows, keeping the accumulators busy."""
    return accumulators // block_tile


def conv_columns(out_channels: int, spec: KernelSpec) -> int:
    """Return the columns of a conv kernel's GEMM: its output channels in whole vectors.

    Where the vectors come to an odd count of 7 or more, one more (at most 1/8 more work).

    An odd count of vectors makes one-vector register tiles (AVX2: 12 rows x 1): a 512 -> 1000
    1x1 conv on 13x13 took 3.48 ms as 125 vectors, 2.29 ms as 126 (6 x 2 tiles).
    """
    blocks = round_up(out_channels, spec.lanes) // spec.lanes
    if blocks % 2 and blocks >= 7:
        blocks += 1
    return blocks * spec.lanes


def conv_rows(pixels: int, out_channels: int, spec: KernelSpec) -> int:
    """Rows of a conv kernel's output: its pixels, padded to whole register tiles.

    Without the padding a 7x7 map (49 rows) would run one row per tile, streaming every
    weight from memory once per output pixel.
    """
    return round_up(pixels, _widest_rows(out_channels, spec))


def _widest_rows(columns: int, spec: KernelSpec) -> int:
    """Return the widest register tile's rows for a GEMM of ``columns`` outputs."""
    block_tile = _block_tile(round_up(columns, spec.lanes) // spec.lanes, spec.accumulators)
    return _widest_row_tile(block_tile, spec.accumulators)


def matmul_columns(cols: int, spec: KernelSpec) -> int:
    """Return the columns of a matmul kernel's GEMM: ``cols`` in whole vectors, or whole tiles.

    :func:`tile_matmul` takes register tiles of as many lane blocks as divide the columns
    (4, 2 or 1). A classifier's 1000 outputs are 63 vectors of 16: tiles of one vector, and a
    one-row GEMV then ran one chain of dependent FMAs per task (1280 -> 1000: 348 us in
    MobileNetV2, onnxruntime 250). Columns are padded to whole tiles of
    :data:`LANE_BLOCKS` vectors where that adds at most a sixteenth (fp32 only).
    """
    cols_pad = round_up(cols, spec.lanes)
    if spec.intrin or cols_pad % (spec.lanes * 2) == 0:
        return cols_pad
    wide = round_up(cols, spec.lanes * LANE_BLOCKS)
    return wide if 16 * (wide - cols_pad) <= cols_pad else cols_pad


def matmul_rows(rows: int, cols: int, spec: KernelSpec) -> int:
    """Rows of a matmul kernel's GEMM: ``rows``, or padded where no divisor makes a tile.

    :func:`tile_matmul` takes the most rows dividing the rows evenly; ViT's 197 tokens (a
    prime) made one-row tiles, each weight vector loaded for a single FMA (ViT-B/16 ran 2.1x
    onnxruntime's time). Where the best divisor is under half the widest tile, the rows are
    padded to whole widest tiles (a padding row repeats the last) instead.
    """
    widest = _widest_rows(cols, spec)
    best = max(t for t in range(1, widest + 1) if rows % t == 0)
    # Fewer rows than a tile (a classifier's or a recurrent step's one row) are one tile as
    # they are: padding them would multiply a weight-bound GEMV's work.
    if (spec.intrin or rows <= widest or 2 * best >= widest
            or (rows % ODD_ROW_TILE == 0 and widest >= 4)):
        return rows
    return round_up(rows, widest)


def pow2_tile(extent: int, most: int) -> int:
    """Return the largest power of two up to ``most`` that divides ``extent``."""
    tile = 1
    while tile * 2 <= most and extent % (tile * 2) == 0:
        tile *= 2
    return tile
