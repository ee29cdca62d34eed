"""Default CPU schedule for sliding-window reductions: depthwise convolution and pooling.

A depthwise 3x3 convolution (or a max/average pool) is a reduction over a small window
(9 elements) for every output pixel. The generic default rule inlines the zero padding into
it and keeps the window loops innermost: scalar code with a bounds test per tap. This rule
instead

* keeps the padding as its own pass (a plain copy, parallel over rows),
* computes each output row as ``for tap in window: row[:] += padded_row[tap:][:] * w[tap]``
  with the row in vector lanes of the profile's width (the taps outside, the pixels inside),
* runs rows in parallel tasks over the profile's cores, and applies the fused epilogue
  (bias, activation) to each row right after it is computed, while it is in cache.

It fires for a function with exactly one reduction whose window has at most
:data:`MAX_WINDOW` elements and whose innermost output axis holds at least one vector.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Window elements above which a reduction is not a sliding window (e.g. a global pool or a
# dense reduction) and the generic rule keeps it.
MAX_WINDOW = 64


def schedule_window_reduction(sch: Any, lanes: int, cores: int) -> bool:
    """Schedule ``sch``'s function as a window reduction if it is one; say whether it was."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    from hwcomp.lower.schedules import loop_extent, loops_product

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
    if len(spatial) < 3 or loops_product(sch, window) > MAX_WINDOW or loop_extent(sch, spatial[-1]) < lanes:
        return False
    position = [info.block_rv for info in infos].index(reduction.block_rv)
    epilogue = [info.block_rv for info in infos[position + 1:]]
    if any(info.is_reduction() for info in infos[position + 1:]):
        return False
    # The epilogue (bias, activation) collapses into its last block.
    for block in epilogue[:-1]:
        sch.compute_inline(block)
    row, pixels = spatial[:-1], spatial[-1]
    head, lane = sch.split(pixels, [None, lanes]) if loop_extent(sch, pixels) % lanes == 0 else (
        pixels, None)
    sch.reorder(*row, head, *window, *([lane] if lane is not None else []))
    task = sch.fuse(*row)
    if cores > 1:
        sch.parallel(task)
    if lane is not None:
        sch.vectorize(lane)
    if epilogue:
        sch.reverse_compute_at(epilogue[-1], task)
        out_loops = sch.get_loops(epilogue[-1])
        last = out_loops[-1]
        if loop_extent(sch, last) % lanes == 0 and loop_extent(sch, last) >= lanes:
            sch.vectorize(sch.split(last, [None, lanes])[1])
    init = sch.decompose_reduction(reduction.block_rv, window[0])
    if lane is not None:
        sch.vectorize(sch.get_loops(init)[-1])
    # The padding (and any other producer) stays a separate pass, parallel over its rows.
    for info in infos[:position]:
        producer_loops = sch.get_loops(info.block_rv)
        if cores > 1 and len(producer_loops) > 1:
            sch.parallel(sch.fuse(*producer_loops[:-1]))
    return True
