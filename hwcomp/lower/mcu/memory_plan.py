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

In-place reuse: an elementwise kernel may write its output over an input of the same size
that dies at that step (each element is read before the same element is written). The
caller names such pairs (``in_place``: output -> input); the pair becomes one buffer living
from the input's first step to the output's last, and both bounds are taken over the
buffers that remain.

An analysis: pure, no IR, returns data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    """Offsets of every buffer in the arena, how good the packing is, buffers written in place."""

    offsets: dict[str, int]
    arena_bytes: int
    total_bytes: int
    largest_step_bytes: int
    largest_pair_bytes: int
    in_place: int = 0
    live_by_step: tuple[int, ...] = ()  # bytes of buffers live at each step (kernel call)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (offsets are in the generated C, not repeated here)."""
        return {
            "arena_bytes": self.arena_bytes,
            "sum_of_buffers_bytes": self.total_bytes,
            "lower_bound_bytes": self.largest_step_bytes,
            "largest_two_live_bytes": self.largest_pair_bytes,
            "in_place_buffers": self.in_place,
            "live_bytes_by_step": list(self.live_by_step),
        }


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to :data:`ALIGNMENT`."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def plan_arena(buffers: Sequence[Buffer], step_pairs: Sequence[tuple[str, ...]] = (),
               in_place: Mapping[str, str] | None = None) -> ArenaPlan:
    """Place ``buffers`` in one arena (greedy by size) and return the plan.

    Args:
        buffers: What to place; names are unique.
        step_pairs: For each step, the names of the buffers it reads and writes (for the
            largest-pair bound); names not in ``buffers`` (inputs, weights) are ignored.
        in_place: Output buffer -> the input buffer it overwrites (same size, the input's
            last step is the output's first).

    """
    owner = _owners(buffers, in_place or {})
    total = sum(aligned(b.nbytes) for b in buffers)
    merged: dict[str, Buffer] = {}
    for buffer in buffers:
        root = owner[buffer.name]
        seen = merged.get(root, buffer)
        merged[root] = Buffer(root, max(seen.nbytes, buffer.nbytes),
                              min(seen.first, buffer.first), max(seen.last, buffer.last))
    buffers = list(merged.values())
    step_pairs = [tuple(owner.get(name, name) for name in names) for names in step_pairs]
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
    offsets.update({name: offsets[root] for name, root in owner.items()})
    arena = max((offset + aligned(b.nbytes) for b, offset in placed), default=0)
    steps = max((b.last for b in buffers), default=-1) + 1
    live = [sum(aligned(b.nbytes) for b in buffers if b.first <= step <= b.last)
            for step in range(steps)]
    sizes = {b.name: aligned(b.nbytes) for b in buffers}
    pairs = [sum(sizes.get(name, 0) for name in set(names)) for names in step_pairs]
    return ArenaPlan(
        offsets=offsets,
        arena_bytes=arena,
        total_bytes=total,
        largest_step_bytes=max(live, default=0),
        largest_pair_bytes=max(pairs, default=0),
        in_place=sum(1 for name, root in owner.items() if name != root),
        live_by_step=tuple(live),
    )


def _owners(buffers: Sequence[Buffer], in_place: Mapping[str, str]) -> dict[str, str]:
    """Each buffer's name -> the buffer whose bytes it uses (itself unless in place)."""
    by_name = {b.name: b for b in buffers}
    owner = {}
    for name in by_name:
        root = name
        while root in in_place:
            source = in_place[root]
            if by_name[source].last != by_name[root].first or by_name[source].nbytes != (
                    by_name[root].nbytes):
                raise ValueError(f"{root} cannot be written over {source}")
            root = source
        owner[name] = root
    return owner


def check_plan(buffers: Sequence[Buffer], plan: ArenaPlan,
               in_place: Mapping[str, str] | None = None) -> None:
    """Raise ``AssertionError`` if two buffers live at the same time share a byte.

    Pairs in ``in_place`` (and chains of them) may share theirs.
    """
    owner = _owners(buffers, in_place or {})
    for i, a in enumerate(buffers):
        a_start = plan.offsets[a.name]
        assert a_start % ALIGNMENT == 0 and a_start + a.nbytes <= plan.arena_bytes, a.name
        for b in buffers[i + 1:]:
            b_start = plan.offsets[b.name]
            disjoint = a_start + a.nbytes <= b_start or b_start + b.nbytes <= a_start
            shared = owner[a.name] == owner[b.name]
            assert disjoint or shared or not a.overlaps(b), f"{a.name} and {b.name} overlap"
