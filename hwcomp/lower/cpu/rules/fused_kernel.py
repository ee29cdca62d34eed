"""Rule: a function holding one of hwcomp's NCHW-writing kernels and its fused epilogue.

The pointwise and NCHW conv kernels (:mod:`hwcomp.lower.cpu.kernels.compute`) are left
unscheduled so TVM fuses the bias, activation and residual add after them; this rule tiles
the kernel and stores each register tile through the epilogue
(:func:`hwcomp.lower.cpu.kernels.tiling.schedule_fused_kernel`).
"""

from __future__ import annotations

from typing import Any

from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.lower.cpu.kernels.tiling import schedule_fused_kernel
from hwcomp.lower.cpu.rules.base import SafeRule


class FusedKernel(SafeRule):
    """Tiles a fused function whose first block is an hwcomp NCHW kernel."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def schedule(self, func: Any) -> Any:
        """Return the tiled schedule, or None for a function without such a kernel."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        return sch if schedule_fused_kernel(sch, fma_spec(self.lanes)) else None
