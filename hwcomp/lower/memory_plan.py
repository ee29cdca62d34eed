"""Static memory plan for the microcontroller executor: one arena, offsets from liveness.

Every intermediate tensor (and every kernel's scratch workspace) lives from the step that
writes it to the last step that reads it. Two buffers may share bytes when their lifetimes
do not overlap. The plan is TensorFlow Lite Micro's greedy-by-size heuristic: place buffers
largest first, each at the lowest 16-byte-aligned offset where it overlaps no already placed
buffer that is live at the same time. It is not optimal in general (the problem is
NP-hard), so the plan reports two lower bounds next to the arena size:

* ``largest_step_bytes``: the most bytes live at any one step (no plan can do better);
* ``largest_pair_bytes``: the biggest input-plus-output pair of a single step (the bound
  usually quoted for MCU networks; never above the first).

An analysis: pure, no IR, returns data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALIGNMENT = 16  # bytes: Helium and the DSP extension's 64-bit loads want 8; 16 covers both


@dataclass(frozen=True)
class Buffer:
    """One buffer to place: written at step ``first``, last read at step ``last``."""

    name: str
    nbytes: int
    first: int
    last: int

    def overlaps(self, other: Buffer) -> bool:
        """Whether both are live at some step."""
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class ArenaPlan:
    """Offsets of every buffer in the arena and how good the packing is."""

    offsets: dict[str, int]
    arena_bytes: int
    total_bytes: int
    largest_step_bytes: int
    largest_pair_bytes: int

    def to_dict(self) -> dict[str, int]:
        """JSON-ready summary (offsets are in the generated C, not repeated here)."""
        return {
            "arena_bytes": self.arena_bytes,
            "sum_of_buffers_bytes": self.total_bytes,
            "lower_bound_bytes": self.largest_step_bytes,
            "largest_two_live_bytes": self.largest_pair_bytes,
        }


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to :data:`ALIGNMENT`."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def plan_arena(buffers: Sequence[Buffer], step_pairs: Sequence[tuple[str, ...]] = ()) -> ArenaPlan:
    """Place ``buffers`` in one arena (greedy by size) and return the plan.

    Args:
        buffers: What to place; names are unique.
        step_pairs: For each step, the names of the buffers it reads and writes (for the
            largest-pair bound); names not in ``buffers`` (inputs, weights) are ignored.

    """
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    # Largest first; ties broken by start so the plan is deterministic.
    for buffer in sorted(buffers, key=lambda b: (-aligned(b.nbytes), b.first, b.name)):
        size = aligned(buffer.nbytes)
        conflicts = sorted((offset, aligned(other.nbytes)) for other, offset in placed
                           if other.overlaps(buffer))
        offset = 0
        for start, length in conflicts:
            if offset + size <= start:
                break
            offset = max(offset, start + length)
        offsets[buffer.name] = offset
        placed.append((buffer, offset))
    arena = max((offset + aligned(b.nbytes) for b, offset in placed), default=0)
    steps = max((b.last for b in buffers), default=-1) + 1
    live = [sum(aligned(b.nbytes) for b in buffers if b.first <= step <= b.last)
            for step in range(steps)]
    sizes = {b.name: aligned(b.nbytes) for b in buffers}
    pairs = [sum(sizes.get(name, 0) for name in set(names)) for names in step_pairs]
    return ArenaPlan(
        offsets=offsets,
        arena_bytes=arena,
        total_bytes=sum(sizes.values()),
        largest_step_bytes=max(live, default=0),
        largest_pair_bytes=max(pairs, default=0),
    )


def check_plan(buffers: Sequence[Buffer], plan: ArenaPlan) -> None:
    """Raise ``AssertionError`` if two buffers live at the same time share a byte."""
    for i, a in enumerate(buffers):
        a_start = plan.offsets[a.name]
        assert a_start % ALIGNMENT == 0 and a_start + a.nbytes <= plan.arena_bytes, a.name
        for b in buffers[i + 1:]:
            b_start = plan.offsets[b.name]
            disjoint = a_start + a.nbytes <= b_start or b_start + b.nbytes <= a_start
            assert disjoint or not a.overlaps(b), f"{a.name} and {b.name} overlap"
