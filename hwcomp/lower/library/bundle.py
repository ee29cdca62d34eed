"""Bundle contents for targets that get a TVM library (x86, Arm Cortex-A, CUDA).

``lib/model.so`` (exported by the lowering), the TVM runtime libraries and headers for the
target's architecture, the runner's source and, where it runs here, the prebuilt runner.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import hwcomp
from hwcomp.lower.library.runner import compile_runner
from hwcomp.lower.library.runtime_libs import ffi_include_dir
from hwcomp.lower.types import model_id
from hwcomp.resources import kernels_path
from hwcomp.targets import Target
from hwcomp.templates import render_to


class LibraryExport(Protocol):
    """What writing a library bundle asks of a family's lowering."""

    builds_runner: bool

    def export(self, executable: Any, target: Target, path: Path) -> None:
        """Write the shared library to ``path``."""
        ...

    def runtime_libs(self, target: Target) -> list[Path]:
        """Return the TVM runtime libraries the bundle ships."""
        ...


def package_library(lowering: LibraryExport, executable: Any, target: Target,
                    staging: Path, model_name: str) -> None:
    """Write the library, runtime, headers, runner and CMake file into ``staging``.

    The CMake targets are named by the model (``hwcomp::<model>``, ``hwcomp::<model>_c``):
    two bundles add_subdirectory()'d into one project do not collide.
    """
    (staging / "lib").mkdir()
    lowering.export(executable, target, staging / "lib" / "model.so")
    libs = lowering.runtime_libs(target)
    if not libs:
        return
    runtime = staging / "runtime"
    runtime.mkdir()
    for lib in libs:
        shutil.copy2(lib, runtime / lib.name)
    shutil.copytree(ffi_include_dir() / "tvm", staging / "include" / "tvm")
    shutil.copytree(ffi_include_dir() / "dlpack", staging / "include" / "dlpack")
    (staging / "runner").mkdir()
    for name in ("runner.cc", "task_pool.h", "CMakeLists.txt"):
        shutil.copy2(kernels_path("runner", name), staging / "runner" / name)
    (staging / "host_api").mkdir()
    shutil.copy2(kernels_path("host_api", "hwcomp_model.cc"), staging / "host_api")
    shutil.copy2(kernels_path("host_api", "hwcomp_model.h"), staging / "include")
    render_to(
        "bundle/CMakeLists.txt.in", staging / "CMakeLists.txt",
        hwcomp_version=hwcomp.__version__, target=target.name, family=target.family,
        bundle_id=model_id(model_name),
    )
    if lowering.builds_runner:
        (staging / "bin").mkdir()
        shutil.copy2(compile_runner(target, runtime), staging / "bin" / "hwcomp_runner")
