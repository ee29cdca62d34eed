"""Lowering: from a legalised ONNX model to a TVM-compiled library, per target family.

One table maps a profile's ``family`` to the object that compiles, packages and
executes for it. Core code asks this table; it never compares target names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hwcomp.errors import TargetError
from hwcomp.lower.cpu.lowering import ArmLowering, CpuLowering
from hwcomp.lower.cuda.lowering import CudaLowering
from hwcomp.lower.library.runner import RunnerResult
from hwcomp.lower.mcu.lowering import McuLowering
from hwcomp.lower.types import BundleInfo
from hwcomp.targets import Target


class Lowering(Protocol):
    """What a target family provides to ``hwcomp build``."""

    family: str
    builds_runner: bool

    def required_tools(self, target: Target) -> list[tuple[str, str]]: ...  # noqa: D102
    def compile(  # noqa: D102
        self, mod: Any, target: Target, database: Path | None = None,
        applied: dict[str, int] | None = None, name: str = "model",
    ) -> Any: ...
    def package(  # noqa: D102
        self, executable: Any, target: Target, staging: Path, info: BundleInfo
    ) -> dict[str, Any]: ...
    def not_run_reason(self, target: Target) -> str | None: ...  # noqa: D102
    def execute(  # noqa: D102
        self, bundle: Path, target: Target, inputs: list[np.ndarray]
    ) -> RunnerResult: ...


LOWERINGS: dict[str, Lowering] = {
    "x86": CpuLowering(),
    "arm-a": ArmLowering(),
    "cuda": CudaLowering(),
    "mcu": McuLowering(),
}


def lowering_for(target: Target) -> Lowering:
    """Return the lowering for ``target``'s family."""
    try:
        return LOWERINGS[target.family]
    except KeyError:
        raise TargetError(
            f"target '{target.name}' (family {target.family}) has no TVM library lowering yet; "
            f"families with one: {', '.join(sorted(LOWERINGS))}"
        ) from None
