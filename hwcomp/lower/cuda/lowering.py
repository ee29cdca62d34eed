"""Lowering for NVIDIA GPUs: TVM's CUDA pipeline (DLight default schedules) and nvcc.

The library builds on any machine with nvcc; it is verified only where a CUDA device is
present, and the manifest says "not run" otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwcomp.lower.frontend.relax_import import import_checked
from hwcomp.lower.kernel_spec import KernelSpec
from hwcomp.lower.library.base import LibraryLowering, compile_relax
from hwcomp.lower.types import Compiled, Prepared, RunnerResult, flatten_outputs
from hwcomp.targets import Target


class CudaLowering(LibraryLowering):
    """CUDA GPUs (``family = "cuda"``)."""

    family = "cuda"
    tunable = False
    kernel_timing = ""
    rpc_device = "cuda"

    def required_tools(self, target: Target) -> list[tuple[str, str]]:
        """Nvcc compiles the generated CUDA kernels."""
        return [("nvcc", "nvidia-cuda-toolkit")]

    def int8_kernel(self, target: Target) -> KernelSpec | None:
        """No integer kernels yet: quantized layers run in float."""
        return None

    def prepare(self, legal: onnx.ModelProto, target: Target) -> Prepared:
        """Import as is: TVM's CUDA pipeline schedules every op (no kernel rewrite)."""
        return Prepared(import_checked(legal), None)

    def compile(self, mod: Any, target: Target, database: Path | None = None,
                name: str = "model") -> Compiled:
        """Compile with TVM's default CUDA pipeline (DLight schedules bind GPU threads).

        Tuning databases are for CPU targets; ``database`` is not used here.
        """
        return Compiled(compile_relax(mod, target))

    def not_run_reason(self, target: Target) -> str | None:
        """None where a CUDA device is present."""
        import tvm

        if tvm.cuda(0).exist:
            return None
        return "no CUDA device on this machine"

    def verify_ways(self, target: Target) -> dict[str, str | None]:
        """On this machine's GPU where there is one; nothing emulates CUDA here."""
        return {"host": self.not_run_reason(target),
                "emulator": "no emulator runs CUDA code (--verify host on a GPU machine, or "
                            "--verify device)"}

    def execute(self, bundle: Path, target: Target, inputs: list[np.ndarray],
                way: str = "auto") -> RunnerResult:
        """Run the library on GPU 0 with TVM's Python runtime."""
        import tvm
        from tvm import relax

        device = tvm.cuda(0)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(bundle / "lib" / "model.so")), device)
        result = vm["main"](*[tvm.runtime.tensor(a, device) for a in inputs])
        return RunnerResult(outputs=flatten_outputs(result), timing="")

