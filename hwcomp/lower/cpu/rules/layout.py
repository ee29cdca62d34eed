"""Rule: a conv kernel's return to NCHW and the elementwise ops TVM fused with it.

The int8 conv kernels (and the fp32 ones on maps the NCHW kernel does not fit) write
pixel-major rows; the return to NCHW is the block :data:`~hwcomp.lower.cpu.kernels.blocks.LAYOUT_BLOCK`,
and the bias, residual add, activation and rescaling after it join its function. Each
block left after inlining gets the tiled order of
:func:`hwcomp.lower.cpu.kernels.tiling.tile_pixels_by_channels`.
"""

from __future__ import annotations

from typing import Any

from hwcomp.lower.cpu.kernels.blocks import LAYOUT_BLOCK
from hwcomp.lower.cpu.kernels.tiling import tile_pixels_by_channels
from hwcomp.lower.cpu.rules.base import SafeRule


class TiledLayout(SafeRule):
    """Tiles pixels x channels over a function holding :data:`LAYOUT_BLOCK`."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def schedule(self, func: Any) -> Any:
        """Return the tiled schedule, or None (nothing changed) when not every block fits.

        Every block left after inlining must be spatial over ([n,] c, [h,] w); a reduction
        that joined the function leaves it to the generic rule.
        """
        from tvm import s_tir
        from tvm.s_tir.dlight.analysis import normalize_prim_func
        from tvm.s_tir.dlight.base import try_inline

        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not any(sch.get(info.block_rv).name_hint == LAYOUT_BLOCK
                                    for info in infos):
            return None
        infos = try_inline(sch, infos)
        if not all(info.dom_kind() in ("SS", "SSS", "SSSS")
                   and len(sch.get_loops(info.block_rv)) == len(info.dom_kind()) for info in infos):
            return None
        for info in infos:
            tile_pixels_by_channels(sch, info.block_rv, self.lanes)
        return sch
