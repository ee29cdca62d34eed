"""Rule for one core without vector types (microcontrollers): inline, then fold reductions.

Producers (pads, bias adds) are inlined into their consumers, and each reduction is computed
inside the loops of its one elementwise consumer. A conv or matmul followed by
bias/activation/residual-add would otherwise leave the reduction's whole output as a scratch
buffer; computed per output element under the consumer's loops it shrinks to one value on
the stack. On a single core without vectors a separate pass gains nothing and costs arena RAM.
"""

from __future__ import annotations

import logging
from typing import Any

from hwcomp.lower.cpu.rules.base import SafeRule, inlined_blocks

logger = logging.getLogger(__name__)


class FoldIntoEpilogue(SafeRule):
    """Inline producers, compute each reduction at its elementwise consumer's innermost loop."""

    def schedule(self, func: Any) -> Any:
        """Return the schedule, or None when the function's blocks cannot be analysed."""
        inlined = inlined_blocks(func)
        if inlined is None:
            return None
        sch, infos = inlined
        for info in infos:
            if not info.is_reduction():
                continue
            consumers = sch.get_consumers(info.block_rv)
            if len(consumers) != 1:
                continue
            loops = sch.get_loops(consumers[0])
            try:
                sch.compute_at(info.block_rv, loops[-1], preserve_unit_loops=True)
            except Exception as exc:  # noqa: BLE001 - not every consumer admits it; keep as is
                logger.debug("reduction kept separate: %s", exc)
        return sch
