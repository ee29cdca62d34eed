"""What every default schedule rule shares: TVM's DLight rule interface, failures kept quiet.

A rule returns a schedule for a function it recognises and None for "not mine"; TVM's
``dlight.ApplyDefaultSchedule`` tries the rules in order and keeps the first schedule. A rule
that raises (TVM raises many types for a function it cannot transform) counts as "not mine":
the next rule, or TVM's own loops, take the function.
"""

from __future__ import annotations

import logging
from typing import Any

from hwcomp import stop

logger = logging.getLogger(__name__)


class SafeRule:
    """A DLight rule whose :meth:`schedule` may raise; :meth:`apply` turns that into None.

    It has DLight's ``ScheduleRule.apply`` signature, which is all ``ApplyDefaultSchedule``
    calls; not subclassing keeps TVM out of hwcomp's import time until a build runs.
    """

    # Why the last call did not apply (an exception's first line), or None.
    last_error: str | None = None

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """Return ``func`` scheduled by this rule, or None when the rule does not apply."""
        self.last_error = None
        try:
            return self.schedule(func)
        except Exception as exc:  # noqa: BLE001 - TVM raises many types; keep TVM's loops
            stop.raise_if_requested()  # a Ctrl-C TVM turned into its own error is no fallback
            logger.debug("%s not applied: %s", type(self).__name__, exc)
            text = str(exc).strip()
            self.last_error = type(exc).__name__ + (f": {text.splitlines()[0][:200]}" if text
                                                    else "")
            return None

    def schedule(self, func: Any) -> Any:
        """Return a schedule of ``func``, or None for a function this rule does not handle."""
        raise NotImplementedError


def inlined_blocks(func: Any) -> tuple[Any, list[Any]] | None:
    """Return a schedule of ``func`` with inlinable blocks inlined, and the blocks left.

    None when TVM cannot analyse the function's blocks (the rule then leaves it alone).
    """
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    return sch, try_inline(sch, infos)
