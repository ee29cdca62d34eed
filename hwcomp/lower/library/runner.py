"""Build and run the bundle's C++ runner (``kernels/runner/runner.cc``).

The runner is compiled once per (compiler, source, TVM version) into the user cache and
copied into each bundle as ``bin/hwcomp_runner``. Verification runs the bundle through
it: natively for the host's architecture, under the target's emulator (``qemu-aarch64``)
for others, so what is checked is exactly what ships.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from hwcomp.errors import ExecutionError, ToolchainError
from hwcomp.lower.library.runtime_libs import RUNTIME_LIBS, cache_dir, ffi_include_dir
from hwcomp.lower.types import RunnerResult
from hwcomp.resources import kernels_path
from hwcomp.targets import CROSS_PREFIX_ENV, Target

logger = logging.getLogger(__name__)

RUNNER_SOURCE = ("runner", "runner.cc")
RUNNER_HEADER = ("runner", "task_pool.h")
EMULATOR_TIMEOUT_S = 600


def require_tool(program: str, package: str, purpose: str) -> str:
    """Return the path of ``program`` or raise a ToolchainError naming the Debian package."""
    path = shutil.which(program)
    if path is None:
        raise ToolchainError(
            f"{program} is needed {purpose} but is not installed; "
            f"install it with: apt-get install {package}"
        )
    return path


def check_cross_prefix(target: Target) -> None:
    """Check a toolchain given by prefix: its compiler exists and builds for the target's arch.

    Raises:
        ToolchainError: The prefixed compiler is missing, or builds for another machine.

    """
    if not target.cross_prefix:
        return
    given = f"(--cross-prefix / {CROSS_PREFIX_ENV} {target.cross_prefix!r})"
    path = shutil.which(target.cross_compiler)
    if path is None:
        raise ToolchainError(
            f"{target.cross_compiler} {given} does not exist or is not executable; give the "
            "common prefix of the toolchain's programs, e.g. "
            f"/opt/toolchain/bin/{target.cross_arch}-none-linux-gnu-")
    try:
        machine = subprocess.run([path, "-dumpmachine"], capture_output=True, text=True,
                                 timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"{path} {given} does not answer -dumpmachine as gcc does: "
                             f"{_tail(str(exc))}") from None
    if machine.split("-", 1)[0] != target.cross_arch:
        raise ToolchainError(
            f"{path} {given} builds for {machine or 'an unknown machine'}, not "
            f"{target.cross_arch} ({target.name}); give the prefix of a toolchain for "
            f"{target.cross_arch}")


def compile_runner(target: Target, runtime_dir: Path) -> Path:
    """Return a runner binary for ``target``'s architecture, compiling it on first use."""
    compiler = target.cross_compiler or "g++"
    require_tool(compiler, target.cross_package or "g++", "to build the bundle runner")
    source = kernels_path(*RUNNER_SOURCE)
    header = kernels_path(*RUNNER_HEADER)
    key = hashlib.sha256(
        b"|".join(
            [compiler.encode(), source.read_bytes(), header.read_bytes(),
             " ".join(RUNTIME_LIBS).encode(),
             importlib.metadata.version("apache-tvm").encode()]
        )
    ).hexdigest()[:16]
    binary = cache_dir() / "runner" / f"hwcomp_runner-{key}"
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hwcomp-runner-") as scratch:
        partial = Path(scratch) / "hwcomp_runner"
        command = [
            compiler, "-std=c++17", "-O2", "-pthread", str(source), f"-I{ffi_include_dir()}",
            "-o", str(partial), f"-L{runtime_dir}", "-Wl,--no-as-needed",
            # The extra library registers the contrib functions (sort, TopK) when loaded.
            *(f"-l{lib[3:-3]}" for lib in RUNTIME_LIBS), "-ldl", "-Wl,-rpath,$ORIGIN/../runtime",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ToolchainError(
                f"{compiler} could not build the bundle runner: "
                f"{_tail(result.stderr)}"
            )
        shutil.move(str(partial), binary)
    return binary


def run_bundle(bundle: Path, target: Target, inputs: list[np.ndarray], repeat: int = 1,
               native: bool = False) -> RunnerResult:
    """Run ``bundle``'s runner on ``inputs`` (under the target's emulator unless ``native``)."""
    with tempfile.TemporaryDirectory(prefix="hwcomp-run-") as scratch:
        work = Path(scratch)
        paths = []
        for index, array in enumerate(inputs):
            path = work / f"input_{index}.npy"
            np.save(path, np.require(array, requirements="C"))
            paths.append(str(path))
        out_dir = work / "out"
        out_dir.mkdir()
        command = [
            str(bundle / "bin" / "hwcomp_runner"), str(bundle / "lib" / "model.so"),
            "--warmup", "0", "--repeat", str(repeat), "--out", str(out_dir), "--inputs", *paths,
        ]
        if not native:
            command = emulated(command, target, "to verify the bundle")
        logger.debug("running %s", " ".join(command))
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, timeout=EMULATOR_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise ExecutionError(
                f"the compiled model did not finish within {EMULATOR_TIMEOUT_S} s"
            ) from None
        if result.returncode != 0:
            raise ExecutionError(
                f"the compiled model failed when run: {_tail(result.stderr or result.stdout)}"
            )
        outputs = [np.load(p) for p in sorted(out_dir.glob("output_*.npy"), key=_index)]
        return RunnerResult(outputs=outputs, timing=result.stdout.strip())


def emulated(command: list[str], target: Target, purpose: str) -> list[str]:
    """Prefix ``command`` with the target's emulator (and its sysroot), if it has one."""
    if not target.emulator:
        return command
    emulator = require_tool(target.emulator, target.emulator_package, purpose)
    sysroot = ["-L", target.sysroot] if target.sysroot else []
    return [emulator, *sysroot, *target.emulator_args, *command]


def _index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[:600] if lines else "no output"
