"""Rule: any other function. Inline, then parallel tasks x vector lanes over the spatial loops.

* blocks that can be inlined into their consumers are (one pass over memory per fused op);
* each remaining block's spatial loops are fused and split into
  ``[parallel tasks, vector lanes]`` — tasks across the profile's cores, lanes of the
  profile's vector width — with the reduction loops (if any) kept innermost and serial;
* a function whose blocks cannot be analysed is left as TVM made it (None).
"""

from __future__ import annotations

from typing import Any

from hwcomp.lower.cpu.rules.base import SafeRule, inlined_blocks
from hwcomp.lower.cpu.rules.loops import loop_extent, loops_product

# Below this many iterations a parallel loop costs more in thread wake-ups than it saves.
MIN_PARALLEL_WORK = 4096


class ParallelVector(SafeRule):
    """Inline, then split each block's spatial loops over ``cores`` tasks and ``lanes`` lanes."""

    def __init__(self, lanes: int, cores: int) -> None:
        self.lanes = lanes
        self.cores = cores

    def schedule(self, func: Any) -> Any:
        """Return the schedule, or None when the function's blocks cannot be analysed."""
        inlined = inlined_blocks(func)
        if inlined is None:
            return None
        sch, infos = inlined
        for info in infos:
            self._block(sch, info)
        return sch

    def _block(self, sch: Any, info: Any) -> None:
        block = info.block_rv
        loops = sch.get_loops(block)
        kinds = info.dom_kind()
        if not loops or len(kinds) != len(loops) or "O" in kinds:
            return
        spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
        reduction = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
        if not spatial:
            return
        sch.reorder(*spatial, *reduction)
        work = loops_product(sch, spatial) * max(1, loops_product(sch, reduction))
        # Vector lanes: the innermost spatial loop of an elementwise block, when it divides
        # into whole vectors (its index stays affine: no div/mod per element).
        lanes = self.lanes
        if lanes > 1 and not reduction and loop_extent(sch, spatial[-1]) % lanes == 0:
            head, vector = sch.split(spatial[-1], [None, lanes])
            spatial = [*spatial[:-1], head]
            sch.vectorize(vector)
        # Parallel tasks: the fewest leading spatial loops that give every core work.
        if self.cores > 1 and work >= MIN_PARALLEL_WORK:
            leading, count = [], 1
            for loop in spatial:
                leading.append(loop)
                count *= loop_extent(sch, loop)
                if count >= 4 * self.cores:
                    break
            if count > 1:
                sch.parallel(sch.fuse(*leading) if len(leading) > 1 else leading[0])
