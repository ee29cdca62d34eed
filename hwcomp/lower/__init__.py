"""Lowering: from a legalised ONNX model to a verified artifact, per target family.

The whole contract a family provides is :class:`Lowering` (plus :class:`LibraryLowering` for
the families that ship a TVM shared library), and :data:`LOWERINGS` maps a profile's
``family`` to it. This table is the one place that dispatches on a family: core code asks it
(``lowering_for(target).prepare(...)``) and never compares family or target names.

One room per family: ``cpu/`` (x86, Arm Cortex-A), ``mcu/`` (Cortex-M), ``cuda/``; shared
rooms: ``frontend/`` (legalisation, Relax import), ``library/`` (shared-library bundles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from hwcomp.errors import TargetError
from hwcomp.lower.cpu.lowering import ArmLowering, CpuLowering
from hwcomp.lower.cuda.lowering import CudaLowering
from hwcomp.lower.kernel_spec import KernelSpec
from hwcomp.lower.library.bundle import LibraryExport
from hwcomp.lower.mcu.lowering import McuLowering
from hwcomp.lower.types import BundleInfo, Compiled, Prepared, RunnerResult
from hwcomp.targets import Target


class Lowering(Protocol):
    """What a target family provides to ``hwcomp build``, ``tune`` and ``bench``.

    Attributes:
        family: The profiles' ``family`` this lowering serves.
        builds_runner: Whether the bundle carries a prebuilt runner for this machine.
        tunable: Whether ``hwcomp tune`` (MetaSchedule) applies to its functions.
        kernel_timing: How ``hwcomp profile`` gets each kernel's time: "measured" (timed
            one by one in a process here: a library for this CPU, loaded by TVM's VM),
            "counted" (the build counts each kernel call's instructions on the emulated
            board), or "" (neither here).
        rpc_device: The TVM RPC device a bundle's library runs on for ``--verify device``
            ("cpu", "cuda"), or "" where the bundle is not a library a device server loads.
        epilogue_ops: Elementwise ops its kernels run in the kernel of the conv / matmul
            before them (``analyze``'s layers as compiled).

    """

    family: str
    builds_runner: bool
    tunable: bool
    kernel_timing: str
    rpc_device: str
    epilogue_ops: frozenset[str]

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Programs (and their Debian packages) needed before any work starts."""
        ...

    def int8_kernel(self, target: Target) -> KernelSpec | None:
        """Return the kernel int8 layers run on for ``target``; None when they stay float."""
        ...

    def prepare(self, legal: onnx.ModelProto, target: Target) -> Prepared:
        """Check, import into Relax, and apply the family's kernel rewrites."""
        ...

    def compile(self, mod: Any, target: Target, database: Path | None = None,
                name: str = "model") -> Compiled:
        """Compile a prepared module (with the tuning ``database`` where it applies)."""
        ...

    def package(self, executable: Any, target: Target, staging: Path,
                info: BundleInfo) -> dict[str, Any]:
        """Write the bundle's family-specific files; return what to add to the manifest."""
        ...

    def not_run_reason(self, target: Target) -> str | None:
        """Why the artifact cannot run on this machine, or None."""
        ...

    def verify_ways(self, target: Target) -> dict[str, str | None]:
        """For ``host`` and ``emulator``: None where the bundle can run that way here, else why.

        ``auto`` is the family's preferred way among those available.
        """
        ...

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray],
                way: str = "auto") -> RunnerResult:
        """Run the bundle on ``inputs`` here: ``host``, ``emulator`` or ``auto`` (the default)."""
        ...


class LibraryLowering(Lowering, LibraryExport, Protocol):
    """A family whose bundle is a TVM shared library: it also exports and ships runtimes."""


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
            f"target '{target.name}' (family {target.family}) has no lowering yet; "
            f"families with one: {', '.join(sorted(LOWERINGS))}"
        ) from None


def tunable_families() -> list[str]:
    """Return the families ``hwcomp tune`` serves."""
    return sorted(family for family, lowering in LOWERINGS.items() if lowering.tunable)


def activation_dtype(target: Target) -> str:
    """Return the activation dtype quantization should produce for the int8 kernels."""
    kernel = lowering_for(target).int8_kernel(target)
    return kernel.activation_dtype if kernel else "uint8"
