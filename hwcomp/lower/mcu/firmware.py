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
from hwcomp.lower.library.qemu_plugin import plugin_path
from hwcomp.lower.library.runner import require_tool
from hwcomp.lower.mcu.sources import Sources
from hwcomp.resources import kernels_path
from hwcomp.targets import Target
from hwcomp.templates import render_source

RUN_TIMEOUT_S = 600
# -ffp-contract=off: what -std=c99 implies for GCC, said outright (the bundle's CMake and
# Make fragments pass it too: GCC's GNU modes would fuse a * b + c into one rounding).
_OPT = ["-O2", "-std=c99", "-ffp-contract=off", "-ffunction-sections", "-fdata-sections"]


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


class FirmwareTimeout(ExecutionError):
    """The firmware did not finish in time (hung, or far too slow under the emulator)."""


@dataclass(frozen=True)
class StepCount:
    """Instructions one kernel call of the firmware's run executed (qemu, not cycles)."""

    kernel: str  # the kernel's function (TVM's name, without the __tvm_ffi_<prefix>_ part)
    instructions: int


@dataclass(frozen=True)
class FirmwareCount:
    """The firmware's run counted per kernel call."""

    output: str  # what the firmware printed
    steps: list[StepCount]
    program: int  # instructions of the whole firmware (start-up and printing included)


def count_firmware(elf: Path, target: Target) -> FirmwareCount:
    """Run ``elf`` as :func:`run_firmware` does, counting each kernel call's instructions.

    qemu's TCG plugin (``kernels/qemu/insn_count.c``) notes how many instructions the
    firmware had executed each time it enters ``hwcomp_call``, a kernel, or
    ``hwcomp_step_end`` (hwcomp_runtime.c, called when a kernel returns): a step is from
    the first to the last, so it includes ``hwcomp_call``'s argument packing (a few
    instructions) and every function the kernel calls. Deterministic: counts, not cycles.

    Raises:
        ToolchainError: the plugin or the symbol table could not be built, read or loaded
            (the caller runs the firmware uncounted instead).
        ExecutionError: the firmware failed or timed out.
    """
    emulator = require_tool(target.emulator, target.emulator_package, "to run the firmware")
    symbols = _function_addresses(elf, target)
    # Kernels are __tvm_ffi_<prefix>_<name>; the model's API is <prefix>_run_with_arena.
    prefixes = [n.removesuffix("_run_with_arena") for n in symbols if n.endswith("_run_with_arena")]
    kernel_prefix = f"__tvm_ffi_{prefixes[0]}_" if len(prefixes) == 1 else "__tvm_ffi_"
    kernels = {address: name.removeprefix(kernel_prefix) for name, address in symbols.items()
               if name.startswith("__tvm_ffi_")}
    try:
        call, end = symbols["hwcomp_call"], symbols["hwcomp_step_end"]
    except KeyError as missing:
        raise ToolchainError(f"{elf} has no {missing} to mark") from None
    marks = [call, end, *kernels]
    with tempfile.TemporaryDirectory(prefix="hwcomp-count-") as scratch:
        out = Path(scratch) / "counts.txt"
        plugin = ",".join([str(plugin_path()), f"out={out}", *(f"mark={a:x}" for a in marks)])
        try:
            text = _run([emulator, *target.emulator_args, "-plugin", plugin, "-kernel",
                         str(elf)], f"the {target.name} firmware under {target.emulator}")
        except ExecutionError as error:
            if out.is_file() or isinstance(error, FirmwareTimeout):  # the firmware's own fault
                raise
            raise ToolchainError(f"{target.emulator} did not run with the counting plugin "
                                 f"({error})") from None
        if not out.is_file():
            raise ToolchainError(f"{target.emulator} wrote no counts (does it load TCG plugins? "
                                 "qemu 7.2+ does)")
        program, events = _read_events(out.read_text())
    steps: list[StepCount] = []
    started: int | None = None
    kernel = ""
    for mark, so_far in events:
        if mark == 0:
            started, kernel = so_far, ""
        elif mark == 1 and started is not None:
            steps.append(StepCount(kernel, so_far - started))
            started = None
        elif mark >= 2 and started is not None and not kernel:
            kernel = kernels[marks[mark]]
    return FirmwareCount(text, steps, program)


def _function_addresses(elf: Path, target: Target) -> dict[str, int]:
    """Return the function symbols of ``elf``, addresses with the Thumb bit cleared (cross nm)."""
    tool = target.cross_compiler.replace("-gcc", "-nm")
    try:
        done = subprocess.run([tool, "--defined-only", str(elf)], capture_output=True, text=True,
                              check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise ToolchainError(f"{tool} could not read {elf}: {error}") from None
    found = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "Tt":
            found[fields[2]] = int(fields[0], 16) & ~1
    return found


def _read_events(text: str) -> tuple[int, list[tuple[int, int]]]:
    """Return the plugin's whole-program total and its ``@ mark so_far`` notes, no repeats.

    qemu may translate a block twice before it runs (the note repeats with the same count).
    """
    program = 0
    events: list[tuple[int, int]] = []
    for line in text.splitlines():
        if line.startswith("# total "):
            program = int(line.split()[2])
        elif line.startswith("@ "):
            _, mark, so_far = line.split()
            event = (int(mark), int(so_far))
            if not events or events[-1] != event:
                events.append(event)
    return program, events


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
        raise FirmwareTimeout(f"{what} did not finish within {RUN_TIMEOUT_S} s") from None
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
