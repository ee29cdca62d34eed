"""Loop queries the schedule rules share."""

from __future__ import annotations

from typing import Any


def loop_extent(sch: Any, loop: Any) -> int:
    """Return a loop's constant extent (1 when it is not a constant)."""
    value = sch.get(loop).extent
    return int(value.value) if hasattr(value, "value") else 1


def loops_product(sch: Any, loops: list[Any]) -> int:
    """Return the product of the loops' extents."""
    total = 1
    for loop in loops:
        total *= loop_extent(sch, loop)
    return total
