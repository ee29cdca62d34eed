"""Lowering for CPUs reached through LLVM: x86-64 natively, Arm Cortex-A by cross-compiling.

Both import the model into Relax, put convolutions and matmuls with constant weights on
hwcomp's kernels (int8 on the family's dot-product instruction where the profile has one,
fp32 FMAs otherwise), and compile with hwcomp's CPU pipeline (TVM's, plus tuned and default
schedules). They differ in their dot-product instruction, who links the library and how it
runs for verification: the host's g++ and a native run, or ``aarch64-linux-gnu-g++`` and
``qemu-aarch64`` with the aarch64 TVM runtime from PyPI.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwcomp.lower.cpu.kernels.rewrite import rewrite_kernels, to_channels_last
from hwcomp.lower.cpu.kernels.spec import SDOT, VNNI, float_spec
from hwcomp.lower.cpu.pipeline import cpu_pipeline
from hwcomp.lower.frontend.relax_import import import_checked
from hwcomp.lower.kernel_spec import KernelSpec
from hwcomp.lower.library.base import LibraryLowering, compile_relax
from hwcomp.lower.library.runner import require_tool, run_bundle
from hwcomp.lower.library.runtime_libs import aarch64_runtime_libs, host_runtime_libs
from hwcomp.lower.types import Compiled, Prepared, RunnerResult
from hwcomp.targets import Target, cpu_flags


class CpuLowering(LibraryLowering):
    """x86-64 (``family = "x86"``): native library, verified natively."""

    family = "x86"
    builds_runner = True
    tunable = True
    kernel_timing = "measured"
    rpc_device = "cpu"
    # The int8 dot product of the family, used where the profile says ``int8_dot``.
    dot_instruction: KernelSpec = VNNI

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Programs (and their Debian packages) needed before any work starts."""
        return [("g++", "g++")]

    def int8_kernel(self, target: Target) -> KernelSpec | None:
        """Return the dot-product instruction where the profile has one (None: int8 in float)."""
        return self.dot_instruction if target.int8_dot else None

    # Activations between layers kept channels-last (NHWC): see :func:`to_channels_last`.
    channels_last = True

    def prepare(self, legal: onnx.ModelProto, target: Target) -> Prepared:
        """Import, then put conv2d / matmul with constant weights on hwcomp's kernels."""
        module = import_checked(legal)
        if self.channels_last:
            module = to_channels_last(module)
        module, kernels = rewrite_kernels(module, self.int8_kernel(target), float_spec(target))
        return Prepared(module, kernels)

    def compile(self, mod: Any, target: Target, database: Path | None = None,
                name: str = "model") -> Compiled:
        """Compile with TVM's CPU pipeline plus tuned (``database``) and default schedules."""
        pipeline, tuned = cpu_pipeline(target, database)
        return Compiled(compile_relax(mod, target, pipeline), tuned.functions, tuned.unscheduled)

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

    def verify_ways(self, target: Target) -> dict[str, str | None]:
        """Natively where this CPU has the target's ISA; x86 code is not emulated here."""
        return {"host": self.not_run_reason(target),
                "emulator": "x86 bundles run natively, not under an emulator (--verify host)"}

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray],
                way: str = "auto") -> RunnerResult:
        """Run the bundle's own runner on ``inputs``."""
        return run_bundle(bundle, target, inputs)


class ArmLowering(CpuLowering):
    """Arm Cortex-A (``family = "arm-a"``): cross-compiled, verified under qemu-aarch64."""

    kernel_timing = ""  # an aarch64 library: emulated here, so not timed
    family = "arm-a"
    dot_instruction = SDOT

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

    def verify_ways(self, target: Target) -> dict[str, str | None]:
        """Under qemu where it is installed; natively only on an aarch64 machine."""
        machine = platform.machine()
        return {
            "host": None if machine in ("aarch64", "arm64") else (
                f"this machine is {machine}: aarch64 code runs here only under "
                f"{target.emulator} (--verify emulator)"),
            "emulator": None if shutil.which(target.emulator) else (
                f"{target.emulator} is missing (apt-get install {target.emulator_package})"),
        }

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray],
                way: str = "auto") -> RunnerResult:
        """Run the bundle's runner under qemu, or natively (``host``, on aarch64)."""
        native = way == "host" or (way == "auto" and self.verify_ways(target)["host"] is None)
        return run_bundle(bundle, target, inputs, native=native)
