"""Compile, measure and run a microcontroller bundle: host gcc, arm-none-eabi-gcc, qemu.

* :func:`run_on_host` compiles the bundle's C (library + example main) with the host's gcc
  and runs it: the same C as on the device, checked on this machine's FPU.
* :func:`compile_library` compiles the library for the target (the profile's ``cflags``)
  once; :func:`library_sizes` reads the objects' section sizes and per-function stack use
  (the flash and RAM the firmware pays); :func:`build_firmware` links the same objects with
  the example for the profile's emulated board (startup code and linker script from
  ``kernels/mcu/boards/``); :func:`run_firmware` runs it under ``qemu-system-arm`` with
  semihosting.

Both runs print ``hwcomp-output <index> <count>`` followed by one value per line;
:func:`parse_outputs` reads them back.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import hwcomp
from hwcomp.errors import ExecutionError, ToolchainError
from hwcomp.lower.library.runner import require_tool
from hwcomp.lower.mcu.sources import Sources
from hwcomp.resources import kernels_path
from hwcomp.targets import Target
from hwcomp.templates import render_source

RUN_TIMEOUT_S = 600
_OPT = ["-O2", "-std=c99", "-ffunction-sections", "-fdata-sections"]


@dataclass(frozen=True)
class Board:
    """Memory map of an emulated board (code at ``flash``, data and stack at ``ram``)."""

    flash_origin: int
    flash_length: int
    ram_origin: int
    ram_length: int


# qemu's MPS2 images (hw/arm/mps2.c): 4 MiB ZBT SSRAM1 at 0 holds code; AN385/AN386 have
# SSRAM2/3 at 0x20000000, AN500 (Cortex-M7) has 16 MiB PSRAM at 0x60000000. The MPS3 AN547
# image (hw/arm/mps2-tz.c, Cortex-M55) boots from its 512 KiB ITCM at 0 and has a 512 KiB
# DTCM at 0x20000000.
BOARDS = {
    "mps2-an386": Board(0x00000000, 4 << 20, 0x20000000, 4 << 20),
    "mps2-an500": Board(0x00000000, 4 << 20, 0x60000000, 16 << 20),
    "mps3-an547": Board(0x00000000, 512 << 10, 0x20000000, 512 << 10),
}


@dataclass(frozen=True)
class LibrarySizes:
    """Bytes the library adds to a firmware image for the target."""

    text: int
    rodata: int
    data: int
    bss: int
    stack: int

    @property
    def flash(self) -> int:
        """Code, constants and the initial values of .data."""
        return self.text + self.rodata + self.data

    @property
    def ram(self) -> int:
        """RAM: .data + .bss (the static arena is in .bss) + the deepest call chain's stack."""
        return self.data + self.bss + self.stack

    def to_dict(self) -> dict[str, int]:
        """JSON-ready sizes."""
        return {**asdict(self), "flash": self.flash, "ram": self.ram}


def board_for(target: Target) -> str | None:
    """Return the qemu machine the profile names (``-M <machine>``), if hwcomp has its memory map."""
    args = list(target.emulator_args)
    machine = args[args.index("-M") + 1] if "-M" in args else None
    return machine if machine in BOARDS else None


def board_too_small(machine: str, sizes: LibrarySizes) -> str | None:
    """Say why the library does not fit the emulated board's memory, or None when it does.

    The example firmware adds a few KiB (startup, semihosting, printing) to the library.
    """
    board, margin = BOARDS[machine], 64 << 10
    if sizes.flash + margin > board.flash_length:
        return f"{sizes.flash} bytes of code and weights exceed {machine}'s code memory"
    if sizes.ram + margin > board.ram_length:
        return f"{sizes.ram} bytes of RAM exceed {machine}'s data memory"
    return None


def run_on_host(sources: Sources, workdir: Path) -> str:
    """Compile the library and example with the host's gcc, run it, return its output."""
    compiler = require_tool("gcc", "gcc", "to check the microcontroller C on this machine")
    program = workdir / "host_check"
    _compile([compiler, *_OPT, *_includes(sources), *map(str, sources.library),
              str(sources.example), "-o", str(program), "-lm"], "host")
    return _run([str(program)], "the host build of the microcontroller C")


def compile_library(sources: Sources, target: Target, workdir: Path) -> list[Path]:
    """Compile the library's sources for ``target`` into objects (with stack-usage files)."""
    compiler = require_tool(target.cross_compiler, target.cross_package, "to compile for the MCU")
    objects = []
    for source in sources.library:
        obj = workdir / f"{source.stem}.o"
        _compile([compiler, *target.cflags, *_OPT, "-fstack-usage", *_includes(sources),
                  "-c", str(source), "-o", str(obj)], target.name)
        objects.append(obj)
    return objects


def library_sizes(objects: list[Path], target: Target) -> LibrarySizes:
    """Sections and deepest stack of the library's objects (from :func:`compile_library`)."""
    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    stack: dict[str, int] = {}
    for obj in objects:
        for section, size in _sections(obj, target):
            for kind in sizes:
                if section.startswith(f".{kind}"):
                    sizes[kind] += size
        stack.update(_stack_usage(obj.with_suffix(".su")))
    # Deepest call chain: run -> run_with_arena -> hwcomp_call -> the hungriest kernel.
    kernels = [v for k, v in stack.items() if k.startswith("__tvm_ffi_")]
    frames = [stack.get(k, 0) for k in stack if k.endswith("_run_with_arena") or k.endswith("_run")]
    depth = sum(frames) + stack.get("hwcomp_call", 0) + max(kernels, default=0)
    return LibrarySizes(stack=depth, **sizes)


def build_firmware(objects: list[Path], sources: Sources, target: Target, staging: Path,
                   machine: str) -> Path:
    """Link the library ``objects`` and the example for the emulated ``machine``.

    Returns ``bin/firmware.elf``.
    """
    compiler = require_tool(target.cross_compiler, target.cross_package, "to link the firmware")
    board_dir = staging / "board"
    board_dir.mkdir()
    shutil.copy2(kernels_path("mcu", "boards", "startup.c"), board_dir / "startup.c")
    board = BOARDS[machine]
    script = board_dir / f"{machine}.ld"
    script.write_text(render_source(
        "mcu/boards/board.ld.j2", board=machine, target=target.name, version=hwcomp.__version__,
        code_region="SSRAM1", ram_region="SSRAM2/3 or PSRAM",
        flash_origin=hex(board.flash_origin), flash_length=hex(board.flash_length),
        ram_origin=hex(board.ram_origin), ram_length=hex(board.ram_length)))
    elf = staging / "bin" / "firmware.elf"
    elf.parent.mkdir(exist_ok=True)
    _compile([compiler, *target.cflags, *_OPT, *_includes(sources), "--specs=rdimon.specs",
              "-nostartfiles", "-T", str(script), "-Wl,--gc-sections",
              str(board_dir / "startup.c"), str(sources.example), *map(str, objects),
              "-o", str(elf), "-lm"], f"{target.name} firmware")
    return elf


def run_firmware(elf: Path, target: Target) -> str:
    """Run ``elf`` under the profile's emulator (qemu-system-arm + semihosting)."""
    emulator = require_tool(target.emulator, target.emulator_package, "to run the firmware")
    return _run([emulator, *target.emulator_args, "-kernel", str(elf)],
                f"the {target.name} firmware under {target.emulator}")


def parse_outputs(text: str, dtypes: list[str], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Read the ``hwcomp-output`` blocks printed by the example program."""
    lines = text.splitlines()
    outputs: list[np.ndarray] = []
    for index, (dtype, shape) in enumerate(zip(dtypes, shapes, strict=True)):
        header = f"hwcomp-output {index} "
        start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
        if start is None:
            raise ExecutionError(f"the program printed no output {index}: {_tail(text)}")
        count = int(lines[start].split()[2])
        values = lines[start + 1:start + 1 + count]
        parsed = np.array([float(v) for v in values], dtype=np.float64)
        outputs.append(parsed.astype(dtype).reshape(shape))
    return outputs


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """Return a temporary folder for objects and host binaries that do not ship."""
    return tempfile.TemporaryDirectory(prefix="hwcomp-mcu-")


def _includes(sources: Sources) -> list[str]:
    return [f"-I{d}" for d in sources.include_dirs]


def _compile(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolchainError(f"compiling the {what} build failed ({Path(command[0]).name}): "
                             f"{_tail(done.stderr)}")


def _run(command: list[str], what: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ExecutionError(f"{what} did not finish within {RUN_TIMEOUT_S} s") from None
    if "hwcomp-check" not in done.stdout:
        raise ExecutionError(f"{what} failed (exit {done.returncode}): "
                             f"{_tail(done.stdout + done.stderr)}")
    return done.stdout


def _sections(obj: Path, target: Target) -> list[tuple[str, int]]:
    tool = target.cross_compiler.replace("-gcc", "-size")
    done = subprocess.run([tool, "-A", str(obj)], capture_output=True, text=True, check=True)
    found = []
    for line in done.stdout.splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            found.append((parts[0], int(parts[1])))
    return found


def _stack_usage(su: Path) -> dict[str, int]:
    usage = {}
    if su.is_file():
        for line in su.read_text().splitlines():
            match = re.match(r".*:(\w+)\t(\d+)\t", line)
            if match:
                usage[match.group(1)] = int(match.group(2))
    return usage


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-4:])[:600] if lines else "(no output)"
