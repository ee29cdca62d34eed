"""Rule: a function holding one of hwcomp's NCHW-writing kernels and its fused epilogue.

The pointwise and NCHW conv kernels (:mod:`hwcomp.lower.cpu.kernels.compute`) are left
unscheduled so TVM fuses the bias, activation and residual add after them; this rule tiles
the kernel and stores each register tile through the epilogue
(:func:`hwcomp.lower.cpu.kernels.tiling.schedule_fused_kernel`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from hwcomp.lower.cpu.kernels.blocks import CONV_BLOCK, FUSED_KERNEL_BLOCKS, STORE_BLOCK
from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.lower.cpu.kernels.tiling import schedule_fused_kernel
from hwcomp.lower.cpu.rules.base import SafeRule


class FusedKernel(SafeRule):
    """Tiles a fused function whose first block is an hwcomp NCHW kernel.

    A function holding such a kernel that the rule cannot tile is left to the generic
    schedule (correct, many times slower) and reported in ``failures``: the build's manifest
    lists it.
    """

    def __init__(self, lanes: int, failures: list[str] | None = None) -> None:
        self.lanes = lanes
        self.failures = failures if failures is not None else []

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """Return ``func`` scheduled, or None; a kernel left untiled is recorded."""
        schedule = super().apply(func, target, tunable)
        if schedule is None:
            kernel = _kernel_output(func)
            if kernel is not None:
                self.failures.append(f"{kernel}: {self.last_error or 'not the expected blocks'}")
        return schedule

    def schedule(self, func: Any) -> Any:
        """Return the tiled schedule, or None for a function without such a kernel."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        return sch if schedule_fused_kernel(sch, fma_spec(self.lanes)) else None


def _kernel_output(func: Any) -> str | None:
    """Return "block (output shape)" of the hwcomp kernel block in ``func``, or None.

    The shape is the kernel's NCHW output: for the groups-1 conv, its store's (the GEMM
    block writes padded rows and columns).
    """
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for name in FUSED_KERNEL_BLOCKS:
        try:
            block = sch.get(sch.get_sblock(name))
        except Exception:  # noqa: BLE001 - TVM raises its own error for a missing block
            continue
        if name == CONV_BLOCK:
            with contextlib.suppress(Exception):  # a grouped conv has no store block
                block = sch.get(sch.get_sblock(STORE_BLOCK))
        shape = tuple(int(v) for v in block.writes[0].source.shape)
        return f"{name} {shape}"
    return None
