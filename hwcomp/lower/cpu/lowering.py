"""Lowering for CPUs reached through LLVM: x86-64 natively, Arm Cortex-A by cross-compiling.

Both use TVM's default Relax CPU pipeline (legalise, fuse, plan memory, build) with the
profile's LLVM target; they differ only in who links the library and how it is run for
verification: the host's g++ and a native run, or ``aarch64-linux-gnu-g++`` and
``qemu-aarch64`` with the aarch64 TVM runtime from PyPI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hwcomp.lower.cpu.pipeline import cpu_pipeline
from hwcomp.lower.frontend.relax_import import compile_relax
from hwcomp.lower.library.bundle import package_library
from hwcomp.lower.library.runner import RunnerResult, require_tool, run_bundle
from hwcomp.lower.library.runtime_libs import aarch64_runtime_libs, host_runtime_libs
from hwcomp.lower.types import BundleInfo
from hwcomp.targets import Target, cpu_flags


class CpuLowering:
    """x86-64 (``family = "x86"``): native library, verified natively."""

    family = "x86"
    builds_runner = True

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Programs (and their Debian packages) needed before any work starts."""
        return [("g++", "g++")]

    def compile(self, mod: Any, target: Target, database: Path | None = None,
                applied: dict[str, int] | None = None, name: str = "model") -> Any:
        """Compile with TVM's CPU pipeline plus tuned (``database``) and default schedules."""
        return compile_relax(mod, target, cpu_pipeline(target, database, applied))

    def package(self, executable: Any, target: Target, staging: Path,
                info: BundleInfo) -> dict[str, Any]:
        """Library, runtime, headers and runner; nothing to add to the manifest."""
        package_library(self, executable, target, staging)
        return {}

    def export(self, executable: Any, target: Target, path: Path) -> None:
        """Write the shared library."""
        executable.export_library(str(path))

    def runtime_libs(self, target: Target) -> list[Path]:
        """Runtime libraries the bundle ships."""
        return host_runtime_libs()

    def not_run_reason(self, target: Target) -> str | None:
        """Why the artifact cannot run here (its ISA exceeds this CPU's), else None."""
        flags = cpu_flags()
        if target.vector_bits >= 512 and "avx512f" not in flags:
            return f"target '{target.name}' needs AVX-512, which this CPU lacks"
        if target.int8_dot and not flags & {"avx512_vnni", "avx_vnni"}:
            return f"target '{target.name}' needs VNNI, which this CPU lacks"
        return None

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray]) -> RunnerResult:
        """Run the bundle's own runner on ``inputs``."""
        return run_bundle(bundle, target, inputs)


class ArmLowering(CpuLowering):
    """Arm Cortex-A (``family = "arm-a"``): cross-compiled, verified under qemu-aarch64."""

    family = "arm-a"

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Return the cross compiler; the emulator is checked when verification runs."""
        return [(target.cross_compiler, target.cross_package)]

    def export(self, executable: Any, target: Target, path: Path) -> None:
        """Link the library with the cross compiler."""
        from tvm.support import cc

        compiler = require_tool(target.cross_compiler, target.cross_package, "to link for Arm")
        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))

    def runtime_libs(self, target: Target) -> list[Path]:
        """aarch64 runtime libraries from the matching PyPI wheels."""
        return aarch64_runtime_libs()

    def not_run_reason(self, target: Target) -> str | None:
        """Arm bundles always run here, under the emulator."""
        return None
