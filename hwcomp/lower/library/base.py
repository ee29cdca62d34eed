"""What the families that ship a TVM shared library (x86, Arm Cortex-A, CUDA) share.

Compiling with a TVM pipeline (TVM's failures turned into one hwcomp error), writing the
library bundle, exporting the ``.so``. A family subclasses :class:`LibraryLowering` and says
what differs: its pipeline, linker, runtime libraries and how the bundle runs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwcomp.errors import LoweringError, reason_line
from hwcomp.lower.library.bundle import package_library
from hwcomp.lower.types import TVM_EPILOGUE_OPS, BundleInfo
from hwcomp.targets import Target


class LibraryLowering:
    """The shared half of a library family's lowering (see :class:`hwcomp.lower.Lowering`)."""

    builds_runner = False
    epilogue_ops = TVM_EPILOGUE_OPS  # TVM fuses them into the layer's kernel

    def package(self, executable: Any, target: Target, staging: Path,
                info: BundleInfo) -> dict[str, Any]:
        """Library, runtime, headers and runner; nothing to add to the manifest."""
        package_library(self, executable, target, staging, info.model_name)
        return {}

    def export(self, executable: Any, target: Target, path: Path) -> None:
        """Write the shared library with the host's compiler."""
        executable.export_library(str(path))

    def runtime_libs(self, target: Target) -> list[Path]:
        """Runtime libraries the bundle ships (none: loaded with TVM's Python runtime)."""
        return []


def compile_relax(mod: Any, target: Target, pipeline: Any = "default") -> Any:
    """Compile a Relax module for ``target`` into a ``tvm.runtime.Executable``."""
    import tvm

    try:
        return tvm.compile(mod, target=target.tvm(), relax_pipeline=pipeline)
    except Exception as exc:  # noqa: BLE001 - any TVM failure is a lowering failure
        reason = reason_line(exc, last=True, limit=400)
        raise LoweringError(
            f"TVM could not compile the model for target '{target.name}': {reason}") from None
