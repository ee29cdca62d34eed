"""Default CPU schedule for sliding-window reductions: depthwise convolution and pooling.

A depthwise 3x3 convolution (or a max/average pool) is a reduction over a small window
(9 elements) for every output pixel. The generic default rule inlines the zero padding into
it and keeps the window loops innermost: scalar code with a bounds test per tap. This rule
instead

* keeps the padding as its own pass (a plain copy, parallel over rows),
* computes each output row as ``for tap in window: row[:] += padded_row[tap:][:] * w[tap]``
  with the row in vector lanes (the taps outside, the pixels inside): the row's vectors are
  independent accumulators in registers (a row buffer on the stack, unrolled), not one chain
  of 9 dependent FMAs per vector through a full-size scratch output,
* takes the widest power-of-two vector up to the profile's that divides the row (8 lanes
  for a 24-wide map on AVX-512; such rows used to run scalar); strided windows (stride 2)
  stay scalar, one pixel's taps at a time,
* runs rows in parallel tasks over the profile's cores, and applies the fused epilogue
  (bias, activation) as each row's accumulators are stored: no scratch output, no second
  pass.

It fires for a function with exactly one reduction whose window has at most
:data:`MAX_WINDOW` elements and whose innermost output axis is at least 2 wide.
"""

from __future__ import annotations

import logging
from typing import Any

from hwcomp.lower.cpu.kernels.tiling import pow2_tile
from hwcomp.lower.cpu.rules.base import SafeRule
from hwcomp.lower.cpu.rules.loops import loop_extent, loops_product

logger = logging.getLogger(__name__)

# Window elements above which a reduction is not a sliding window (e.g. a global pool or a
# dense reduction) and the generic rule keeps it.
MAX_WINDOW = 64
# Vectors per row up to which the row's accumulators are unrolled into registers.
MAX_UNROLLED_VECTORS = 8


class WindowReduction(SafeRule):
    """Schedules a sliding-window reduction: taps outside, a row of pixels in vector lanes."""

    def __init__(self, lanes: int, cores: int) -> None:
        self.lanes = lanes
        self.cores = cores

    def schedule(self, func: Any) -> Any:
        """Return the schedule, or None for a function that is not a window reduction."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        return sch if schedule_window_reduction(sch, self.lanes, self.cores) else None


def schedule_window_reduction(sch: Any, lanes: int, cores: int) -> bool:
    """Schedule ``sch``'s function as a window reduction if it is one; say whether it was."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    infos = normalize_prim_func(sch)
    if infos is None:
        return False
    reductions = [info for info in infos if info.is_reduction()]
    if len(reductions) != 1:
        return False
    reduction = reductions[0]
    loops = sch.get_loops(reduction.block_rv)
    kinds = reduction.dom_kind()
    if len(kinds) != len(loops) or set(kinds) - {"S", "R"}:
        return False
    spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
    window = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
    if len(spatial) < 3 or loops_product(sch, window) > MAX_WINDOW or loop_extent(sch, spatial[-1]) < 2:
        return False
    position = [info.block_rv for info in infos].index(reduction.block_rv)
    epilogue = [info.block_rv for info in infos[position + 1:]]
    if any(info.is_reduction() for info in infos[position + 1:]):
        return False
    # The epilogue (bias, activation) collapses into its last block.
    for block in epilogue[:-1]:
        sch.compute_inline(block)
    producers = [info.block_rv for info in infos[:position]]
    if producers and _channels_inner(sch, reduction.block_rv):
        # Channels-last (NHWC) windows: the vector runs over channels and the padding test
        # depends on the pixel only, once per tap and vector; the padded copy was a pass over
        # the whole input (GoogLeNet's max pools: 1.6 ms against onnxruntime's 0.65).
        for block in reversed(producers):
            sch.compute_inline(block)
        producers = []
    row, pixels = spatial[:-1], spatial[-1]
    # A strided window (stride-2 depthwise, pooling) reads every other pixel: vector lanes
    # would be gathers, slower than scalar code here (64x48x48 -> 24x24: 0.096 vs 0.083 ms).
    vector = 1 if _strided(sch, reduction.block_rv) else pow2_tile(loop_extent(sch, pixels),
                                                                    lanes)
    head, lane = sch.split(pixels, [None, vector])
    # Vectors: taps outside, the row's vectors inside (independent accumulators). Scalars:
    # each pixel's taps in a row, its accumulator in a register.
    if vector > 1:
        sch.reorder(*row, *window, head, lane)
    else:
        sch.reorder(*row, head, *window)
    task = sch.fuse(*row)
    if cores > 1:
        sch.parallel(task)
    _vectorize_row(sch, head, lane, vector)  # while the block is still a reduction
    # The row's accumulators, stored (through the epilogue) once. Scope "global": TVM puts a
    # global allocation under 1 KiB on the stack, where LLVM keeps it in registers; a "local"
    # one goes through its workspace allocator, once per row (which doubled the time).
    store = sch.cache_write(reduction.block_rv, 0, "global")
    sch.reverse_compute_at(store, task)
    init = sch.decompose_reduction(reduction.block_rv, window[0])
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1])
    init_head, init_lane = sch.get_loops(init)[-2:]
    _vectorize_row(sch, init_head, init_lane, vector)
    store_head, store_lane = sch.split(sch.get_loops(store)[-1], [None, vector])
    _vectorize_row(sch, store_head, store_lane, vector)
    # The padding (and any other producer) stays a separate pass, parallel over its rows.
    for producer in producers:
        producer_loops = sch.get_loops(producer)
        if cores > 1 and len(producer_loops) > 1:
            sch.parallel(sch.fuse(*producer_loops[:-1]))
    return True


def _strided(sch: Any, block: Any) -> bool:
    """Whether a read of ``block`` steps more than one element per output pixel."""
    from tvm.sym.pattern import detect_linear_equation

    pixel = sch.get(block).iter_vars[-1 - _reduction_axes(sch, block)].var
    for region in sch.get(block).reads:
        index = region.region[-1].min
        coefficients = detect_linear_equation(index, [pixel])
        if coefficients and abs(int(coefficients[0])) > 1:
            return True
    return False


def _channels_inner(sch: Any, block: Any) -> bool:
    """Whether ``block``'s innermost output axis is read as it is (channels, not pixels).

    True for an NHWC window: every read's last index is the innermost output iterator
    itself, no window iterator in it.
    """
    from tvm.tirx.analysis import undefined_vars

    iters = sch.get(block).iter_vars
    inner = iters[-1 - _reduction_axes(sch, block)].var
    window = {iv.var for iv in iters if int(iv.iter_type) == 2}
    for region in sch.get(block).reads:
        if len(region.region) < 3:  # a weight or a bias: not the windowed input
            continue
        index = region.region[-1].min
        if not index.same_as(inner) or any(v in window for v in undefined_vars(index)):
            return False
    return True


def _reduction_axes(sch: Any, block: Any) -> int:
    """How many of the block's trailing iterators are reduction axes."""
    return sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) == 2)


def _vectorize_row(sch: Any, head: Any, lane: Any, vector: int) -> None:
    """Vector lanes on a row's ``lane`` loop; its vectors (``head``) unrolled when few."""
    if vector > 1:
        sch.vectorize(lane)
    if loop_extent(sch, head) <= MAX_UNROLLED_VECTORS:
        sch.unroll(head)
