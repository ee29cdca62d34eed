"""Default schedule rules for functions no tuning record covers, one rule per file.

TVM's DLight style: each rule returns a schedule for a function it recognises and None for
"not mine"; ``dlight.ApplyDefaultSchedule(*rules)`` keeps the first schedule. In order:

1. :class:`~hwcomp.lower.cpu.rules.fused_kernel.FusedKernel`: hwcomp's NCHW-writing kernels
   with their epilogue stored from the register tiles;
2. :class:`~hwcomp.lower.cpu.rules.window.WindowReduction`: depthwise convolution, pooling;
3. :class:`~hwcomp.lower.cpu.rules.layout.TiledLayout`: a conv kernel's return to NCHW;
4. :class:`~hwcomp.lower.cpu.rules.row_reduction.RowReduction`: softmax, layer and RMS norm
   (reductions along each row's innermost axis), row by row;
5. :class:`~hwcomp.lower.cpu.rules.generic.ParallelVector`: anything else.

With one lane and one core (microcontrollers) only
:class:`~hwcomp.lower.cpu.rules.epilogue.FoldIntoEpilogue` runs: no vector types, no threads.
"""

from __future__ import annotations

from typing import Any

from hwcomp.lower.cpu.rules.epilogue import FoldIntoEpilogue
from hwcomp.lower.cpu.rules.fused_kernel import FusedKernel
from hwcomp.lower.cpu.rules.generic import ParallelVector
from hwcomp.lower.cpu.rules.layout import TiledLayout
from hwcomp.lower.cpu.rules.row_reduction import RowReduction
from hwcomp.lower.cpu.rules.window import WindowReduction


def default_rules(lanes: int, cores: int, failures: list[str] | None = None) -> list[Any]:
    """Return the rules, in order, for ``lanes`` fp32 vector lanes and ``cores`` cores.

    ``failures`` receives a line for each hwcomp kernel the kernel rule could not tile.
    """
    if lanes == 1 and cores == 1:
        return [FoldIntoEpilogue()]
    vector_rules = [FusedKernel(lanes, failures), WindowReduction(lanes, cores),
                    TiledLayout(lanes), RowReduction(lanes, cores)]
    return [*(vector_rules if lanes > 1 else []), ParallelVector(lanes, cores)]


def first_schedule(rules: list[Any], func: Any, tvm_target: Any) -> Any:
    """Return the schedule of ``func`` by the first rule that takes it, or None."""
    for rule in rules:
        schedule = rule.apply(func, tvm_target, False)
        if schedule is not None:
            return schedule
    return None
