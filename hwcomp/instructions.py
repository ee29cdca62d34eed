"""Instructions executed per inference, counted under qemu's user-mode emulator.

``hwcomp bench BUNDLE --count-instructions [--compare-ort]`` runs the bundle's runner under
the target's emulator (``qemu-aarch64 -cpu cortex-a72`` for arm-a72; ``qemu-x86_64 -cpu
max`` for a host bundle) with a TCG plugin of hwcomp's (``kernels/qemu/insn_count.c``,
compiled once with the host's gcc) that counts every guest instruction. The runner marks its
timed runs (see the plugin), so start-up and warm-up stay out: the figure is instructions
per inference, one thread. With ``--compare-ort``, onnxruntime runs the bundle's
``model.optimized.onnx`` on the same inputs under the same emulator and CPU model, marked the
same way (``kernels/qemu/ort_count.py``): for Arm, onnxruntime's own aarch64 build in an
arm64 Python (:mod:`hwcomp.lower.library.guest_python`); for the host, this Python's
onnxruntime.

Counts are deterministic (a repeat differs by well under 0.1 %) but **they are not times**:
an out-of-order core such as the A72 retires several instructions per cycle, a vector
instruction does more work than a scalar one, and qemu models neither caches nor memory
stalls. A ratio of counts says which program does less work on that instruction set; a
device (``hwcomp bench --device rpc://...``) says which one is faster.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from hwcomp.errors import ExecutionError, HwcompError
from hwcomp.lower import lowering_for
from hwcomp.lower.library.qemu_plugin import plugin_path
from hwcomp.lower.library.runner import require_tool
from hwcomp.resources import kernels_path
from hwcomp.targets import Target
from hwcomp.threads import thread_env

ORT_SCRIPT = ("qemu", "ort_count.py")
# One counted process: start-up under emulation (an arm64 Python importing onnxruntime
# executes ~1.9 G instructions, ~7 s) plus the runs.
COUNT_TIMEOUT_S = 1800
# Places (libraries, the model's functions) listed per count.
TOP_PLACES = 12


class CountError(HwcompError):
    """The bundle's instructions cannot be counted as asked."""


@dataclass(frozen=True)
class Place:
    """Where instructions went: ``library`` or ``library:function``, per inference."""

    name: str
    instructions: float


@dataclass(frozen=True)
class Count:
    """One runtime's count: instructions per inference, over ``runs`` marked runs."""

    runtime: str
    per_inference: float
    runs: int
    process_total: int  # the whole process, start-up included
    places: tuple[Place, ...]


@dataclass(frozen=True)
class CountResult:
    """Instruction counts of a bundle and, if asked, of onnxruntime on the same model."""

    bundle: str
    target: str
    emulator: str
    threads: int
    hwcomp: Count
    onnxruntime: Count | None

    @property
    def ratio(self) -> float | None:
        """Hwcomp's instructions over onnxruntime's, below 1 when hwcomp executes fewer."""
        if self.onnxruntime is None:
            return None
        return self.hwcomp.per_inference / self.onnxruntime.per_inference

    def to_json(self) -> str:
        """JSON text of the result."""
        return json.dumps({**asdict(self), "ratio": self.ratio,
                           "note": "instructions executed under emulation, not times"}, indent=2)


@dataclass(frozen=True)
class Emulation:
    """How a target's programs run counted: the emulator, its arguments, the CPU modelled."""

    program: str
    args: tuple[str, ...]
    cpu: str
    arch: str  # "aarch64" or "x86_64"

    def command(self, plugin: Path, out: Path, sysroot: str = "") -> list[str]:
        """Return the emulator's words before the guest program."""
        root = ["-L", sysroot] if sysroot else []
        return [self.program, *root, *self.args, "-plugin", f"{plugin},out={out}"]

    def describe(self) -> str:
        """Return the emulator and CPU, for the output."""
        return f"{Path(self.program).name} -cpu {self.cpu}"


def emulation(target: Target) -> Emulation:
    """Return the emulator that counts ``target``'s instructions here.

    Raises:
        CountError: The target runs neither under qemu-user nor natively on an x86-64 host
            (Cortex-M bundles have no runner: ``bench/mcu_size.py --qemu`` counts them).
    """
    if target.emulator:
        program = require_tool(target.emulator, target.emulator_package,
                               "to count the bundle's instructions")
        args = tuple(target.emulator_args)
        cpu = args[args.index("-cpu") + 1] if "-cpu" in args else "max"
        arch = "aarch64" if "aarch64" in target.emulator else target.emulator.removeprefix("qemu-")
        return Emulation(program, args, cpu, arch)
    reason = lowering_for(target).not_run_reason(target)
    if reason:
        raise CountError(f"cannot count {target.name} bundles here: {reason}")
    if platform.machine() != "x86_64":
        raise CountError(f"counting instructions of {target.name} bundles needs an x86-64 host "
                         f"(qemu-x86_64), this is {platform.machine()}")
    if target.vector_bits > 256:
        raise CountError(f"cannot count {target.name} bundles: they use {target.vector_bits}-bit "
                         "vectors (AVX-512), which qemu-x86_64 does not emulate; build for "
                         "x86-avx2 to count instructions")
    program = require_tool("qemu-x86_64", "qemu-user", "to count the bundle's instructions")
    return Emulation(program, ("-cpu", "max"), "max", "x86_64")


def count_bundle(bundle: Path, target: Target, inputs: list[Path], runs: int = 1,
                 warmup: int = 2, compare_ort: bool = False) -> CountResult:
    """Count ``bundle``'s instructions per inference (and onnxruntime's, if asked)."""
    emu = emulation(target)
    plugin = plugin_path()
    runner = [str(bundle / "bin" / "hwcomp_runner"), str(bundle / "lib" / "model.so"),
              "--warmup", str(warmup), "--repeat", str(runs), "--number", "1",
              "--inputs", *map(str, inputs)]
    ours = _count(emu, plugin, runner, thread_env(1), target.sysroot, "hwcomp", runs,
                  symbols=bundle / "lib" / "model.so")
    theirs = None
    if compare_ort:
        theirs = _count_onnxruntime(emu, plugin, bundle / "model.optimized.onnx", inputs, runs,
                                    warmup)
    return CountResult(bundle=str(bundle), target=target.name, emulator=emu.describe(),
                       threads=1, hwcomp=ours, onnxruntime=theirs)


def _count_onnxruntime(emu: Emulation, plugin: Path, model: Path, inputs: list[Path],
                       runs: int, warmup: int) -> Count:
    script = [str(kernels_path(*ORT_SCRIPT)), str(model), "--warmup", str(warmup),
              "--runs", str(runs), "--inputs", *map(str, inputs)]
    # The guest's environment: nothing of this process's Python leaks into it.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "OMP_", "TVM_"))}
    if emu.arch == "aarch64":
        from hwcomp.lower.library.guest_python import aarch64_python

        guest = aarch64_python(emu.cpu)
        command = [str(guest.python), *script]
        extra = [arg for key, value in guest.env.items() for arg in ("-E", f"{key}={value}")]
        emu = Emulation(emu.program, (*emu.args, *extra), emu.cpu, emu.arch)
        return _count(emu, plugin, command, env, str(guest.root), "onnxruntime", runs)
    if emu.arch == "x86_64":
        env["PYTHONHASHSEED"] = "0"
        return _count(emu, plugin, [sys.executable, *script], env, "", "onnxruntime", runs)
    raise CountError(f"no onnxruntime to count for {emu.arch} guests")


def _count(emu: Emulation, plugin: Path, guest: list[str], env: dict[str, str], sysroot: str,
           runtime: str, runs: int, symbols: Path | None = None) -> Count:
    with tempfile.TemporaryDirectory(prefix="hwcomp-count-") as scratch:
        out, maps = Path(scratch) / "counts.txt", Path(scratch) / "maps.txt"
        command = [*emu.command(plugin, out, sysroot), *guest]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, check=False,
                                  env={**env, "HWCOMP_COUNT_MARKS": str(maps)},
                                  timeout=COUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExecutionError(f"{runtime} under {emu.describe()} did not finish within "
                                 f"{COUNT_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            raise ExecutionError(f"{runtime} failed under {emu.describe()}: "
                                 f"{' | '.join(lines[-2:])[:400] or 'no output'}")
        if not out.is_file():
            raise ExecutionError(f"{emu.describe()} wrote no counts for {runtime} "
                                 "(does this qemu load TCG plugins? qemu-user 7.2+ does)")
        total, marked, blocks = _read_counts(out)
        if marked == 0:
            raise CountError(f"{runtime}'s runs were not marked for counting; rebuild the "
                             "bundle with this hwcomp (its runner marks them)")
        regions = _read_maps(maps) if maps.is_file() else []
    per_place: dict[str, int] = defaultdict(int)
    symbolizer = _Symbols(symbols, regions) if symbols is not None else None
    for address, executed in blocks:
        per_place[_place(address, regions, symbolizer)] += executed
    counted = sum(per_place.values())
    places = sorted(per_place.items(), key=lambda item: -item[1])[:TOP_PLACES]
    return Count(runtime=runtime, per_inference=counted / runs, runs=runs, process_total=total,
                 places=tuple(Place(name, executed / runs) for name, executed in places))


def _read_counts(path: Path) -> tuple[int, int, list[tuple[int, int]]]:
    total = marked = 0
    blocks = []
    for line in path.read_text().splitlines():
        if line.startswith("# total "):
            total = int(line.split()[2])
        elif line.startswith("# marked "):
            marked = int(line.split()[2])
        elif line and not line.startswith(("#", "@")):  # "@": marks by address (firmware)
            address, executed = line.split()
            blocks.append((int(address, 16), int(executed)))
    return total, marked, blocks


# (start, end, file offset, path) of each mapping, sorted by start.
_Region = tuple[int, int, int, str]


def _read_maps(path: Path) -> list[_Region]:
    regions = []
    for line in path.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        regions.append((start, end, int(fields[2], 16), fields[5] if len(fields) > 5 else ""))
    return sorted(regions)


class _Symbols:
    """Function symbols of a shared library (``nm``) where the process map says it was loaded."""

    def __init__(self, library: Path, regions: list[_Region]) -> None:
        self.path = str(library.resolve())
        # The load base: the lowest mapping of the file, less its file offset.
        self.base = min((start - offset for start, _, offset, path in regions
                         if path == self.path), default=0)
        self.starts: list[int] = []
        self.names: list[str] = []
        nm = shutil.which("nm")
        if nm is None:
            return
        text = subprocess.run([nm, "--defined-only", str(library)], capture_output=True,
                              text=True, check=False).stdout
        pairs = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] in "tT" and not fields[2].startswith("$"):
                pairs.append((int(fields[0], 16), _function_name(fields[2])))
        for start, name in sorted(pairs):
            self.starts.append(start)
            self.names.append(name)

    def name(self, address: int) -> str:
        index = bisect.bisect_right(self.starts, address - self.base) - 1
        return self.names[index] if index >= 0 else "?"


def _function_name(symbol: str) -> str:
    """Return a TVM function's name: its FFI wrapper and its body count as one."""
    return re.sub(r"_compute_$", "", symbol.removeprefix("__tvm_ffi_"))


def _place(address: int, regions: list[_Region], symbols: _Symbols | None) -> str:
    index = bisect.bisect_right(regions, (address, float("inf"))) - 1
    if index < 0 or not regions[index][0] <= address < regions[index][1]:
        return "(unmapped: JIT or freed code)"
    path = regions[index][3]
    if not path:
        return "(anonymous memory)"
    name = Path(path).name if path.startswith("/") else path
    if symbols is not None and path == symbols.path:
        return f"{name}:{symbols.name(address)}"
    return name
