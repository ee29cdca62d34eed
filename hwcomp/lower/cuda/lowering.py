"""Lowering for NVIDIA GPUs: TVM's CUDA pipeline (DLight default schedules) and nvcc.

The library builds on any machine with nvcc; it is verified only where a CUDA device is
present, and the manifest says "not run" otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hwcomp.lower.frontend.relax_import import compile_relax
from hwcomp.lower.library.bundle import package_library
from hwcomp.lower.library.runner import RunnerResult
from hwcomp.lower.types import BundleInfo
from hwcomp.targets import Target


class CudaLowering:
    """CUDA GPUs (``family = "cuda"``)."""

    family = "cuda"
    builds_runner = False

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Nvcc compiles the generated CUDA kernels."""
        return [("nvcc", "nvidia-cuda-toolkit")]

    def compile(self, mod: Any, target: Target, database: Path | None = None,
                applied: dict[str, int] | None = None, name: str = "model") -> Any:
        """Compile with TVM's default CUDA pipeline (DLight schedules bind GPU threads).

        Tuning databases are for CPU targets; ``database`` is not used here.
        """
        return compile_relax(mod, target)

    def package(self, executable: Any, target: Target, staging: Path,
                info: BundleInfo) -> dict[str, Any]:
        """Write the library alone (loaded with TVM's Python runtime)."""
        package_library(self, executable, target, staging)
        return {}

    def export(self, executable: Any, target: Target, path: Path) -> None:
        """Write the host library with the device code embedded."""
        executable.export_library(str(path))

    def runtime_libs(self, target: Target) -> list[Path]:
        """CUDA bundles are loaded with the TVM Python runtime; no C++ runner yet."""
        return []

    def not_run_reason(self, target: Target) -> str | None:
        """None where a CUDA device is present."""
        import tvm

        if tvm.cuda(0).exist:
            return None
        return "no CUDA device on this machine"

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray]) -> RunnerResult:
        """Run the library on GPU 0 with TVM's Python runtime."""
        import tvm
        from tvm import relax

        device = tvm.cuda(0)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(bundle / "lib" / "model.so")), device)
        result = vm["main"](*[tvm.runtime.tensor(a, device) for a in inputs])
        return RunnerResult(outputs=_flatten(result), timing="")


def _flatten(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [array for item in result for array in _flatten(item)]
