"""Target profiles: hardware capabilities loaded from ``targets/*.toml``.

A profile describes what a device can do (peak MACs per precision, an int8 dot product,
fp16 arithmetic, memory bandwidth, sizes, channel alignment) and how TVM reaches it
(the target dict, the cross compiler). Passes and the planner ask capability questions
of a :class:`Target`; they never compare names.

Every number in a profile carries its source as a trailing ``# comment``;
:func:`load_target` keeps those comments in :attr:`Target.sources` so that
``hwcomp targets show`` can print them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hwcomp import profile_schema
from hwcomp.errors import TargetError, reason_line
from hwcomp.resources import data_dir
from hwcomp.threads import physical_cores

PRECISIONS = ("fp32", "fp16", "int8")
# Another toolchain for the cross-compiled targets: its programs' common prefix, as in
# Linux's CROSS_COMPILE ("/opt/arm-gnu/bin/aarch64-none-linux-gnu-"); `--cross-prefix` sets it.
CROSS_PREFIX_ENV = "HWCOMP_CROSS_PREFIX"

_KEY_WITH_COMMENT = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=\s*[^#]*#\s*(.+?)\s*$")
_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


@dataclass(frozen=True)
class Target:
    """A hardware profile, immutable once loaded.

    Attributes:
        name: Profile name, the TOML file's stem.
        description: One line for humans.
        family: One of :data:`FAMILIES`; lowering dispatches on it.
        runtime: ``so`` (a shared library driven by TVM's runtime) or ``c`` (C sources).
        tvm_target: The TVM target as a JSON-style dict.
        tvm_host: The host target dict for device targets (CUDA), else empty.
        cross_compiler: Compiler for the exported library, empty for the host compiler.
        cross_package: Debian package that installs ``cross_compiler``.
        emulator: Program that runs the target's binaries here (``qemu-aarch64``), or empty.
        emulator_package: Debian package that installs ``emulator``.
        emulator_args: Extra emulator arguments (``-cpu cortex-a72``, a board).
        sysroot: Library root the emulator needs (``qemu-aarch64 -L``).
        cflags: Flags for C/C++ compiled for the target (``-mcpu=...``).
        clock_hz: Sustained core clock.
        cores: Cores used for inference (SMs for CUDA).
        vector_bits: SIMD register width.
        int8_dot: Whether an int8 dot-product instruction exists (VNNI, SDOT, DP4A).
        fp16_arith: Whether fp16 arithmetic runs natively (not via conversion).
        macs_per_cycle: Peak multiply-accumulates per cycle per core, by precision.
        cycles_per_instruction: Average cycles per executed instruction, with which
            ``hwcomp profile`` reads emulated instruction counts as time (a model: 1 unless
            the profile gives a sourced figure).
        dram_bandwidth_bytes_s: Sustained main-memory bandwidth.
        l1d_bytes, l2_bytes, l3_bytes: Cache sizes (0 when absent).
        sram_bytes, flash_bytes: On-chip memories of microcontrollers (0 elsewhere).
        channel_multiple: Channel counts that keep kernels dense, by precision.
        sources: Source of each number, keyed ``section.field``.
        cross_prefix: The :data:`CROSS_PREFIX_ENV` prefix ``cross_compiler`` was made from
            (empty: the profile's own compiler).
        cross_arch: The architecture the profile's compiler builds for (``aarch64``,
            ``arm``), which a prefixed toolchain must build for too.

    """

    name: str
    description: str
    family: str
    runtime: str
    tvm_target: Mapping[str, Any]
    tvm_host: Mapping[str, Any]
    cross_compiler: str
    cross_package: str
    emulator: str
    emulator_package: str
    emulator_args: tuple[str, ...]
    sysroot: str
    cflags: tuple[str, ...]
    clock_hz: float
    cores: int
    vector_bits: int
    int8_dot: bool
    fp16_arith: bool
    macs_per_cycle: Mapping[str, float]
    dram_bandwidth_bytes_s: float
    l1d_bytes: int = 0
    l2_bytes: int = 0
    l3_bytes: int = 0
    sram_bytes: int = 0
    flash_bytes: int = 0
    channel_multiple: Mapping[str, int] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    cycles_per_instruction: float = 1.0
    cross_prefix: str = ""
    cross_arch: str = ""

    def peak_macs_per_s(self, precision: str) -> float:
        """Peak MACs per second over all cores for ``precision``."""
        return self.macs_per_cycle[precision] * self.clock_hz * self.cores

    @property
    def is_cross(self) -> bool:
        """Whether artifacts for this target cannot run natively on this machine."""
        return bool(self.cross_compiler)

    def tvm(self) -> Any:
        """Return the ``tvm.target.Target`` for this profile (imports TVM lazily)."""
        import tvm

        try:
            if self.tvm_host:
                return tvm.target.Target(dict(self.tvm_target), host=dict(self.tvm_host))
            return tvm.target.Target(dict(self.tvm_target))
        except Exception as exc:  # noqa: BLE001 - TVM raises ValueError or its own errors
            raise TargetError(
                f"profile '{self.name}': [tvm_target] {dict(self.tvm_target)} is not a TVM "
                f"target: {reason_line(exc)} (see 'hwcomp targets show x86-avx2' for one "
                "that is)") from None


def targets_dir() -> Path:
    """Return the directory holding the shipped profiles."""
    return data_dir("targets")


def known_targets() -> list[str]:
    """Return the names of all shipped profiles, sorted."""
    return sorted(path.stem for path in targets_dir().glob("*.toml"))


def load_target(name: str) -> Target:
    """Load the profile ``name`` (a shipped profile name or a path to a ``.toml``).

    Raises:
        TargetError: The name is unknown (the message lists the known ones) or the file
            misses a field.

    """
    path = Path(name)
    if path.suffix != ".toml":
        path = targets_dir() / f"{name}.toml"
    if not path.is_file():
        raise TargetError(
            f"unknown target '{name}'; known targets: {', '.join(known_targets())} "
            "(or pass a path to a .toml profile)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TargetError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    return _target_from_dict(data, _comment_sources(text), path)


def _comment_sources(text: str) -> dict[str, str]:
    """Collect ``section.key -> trailing comment`` from a profile's text."""
    sources: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if match := _SECTION.match(line):
            section = match.group(1).strip()
            continue
        if match := _KEY_WITH_COMMENT.match(line):
            key = f"{section}.{match.group(1)}" if section else match.group(1)
            sources[key] = match.group(2)
    return sources


def _target_from_dict(data: Mapping[str, Any], sources: dict[str, str], path: Path) -> Target:
    """Build a :class:`Target` from a profile :func:`profile_schema.validate` accepted."""
    profile_schema.validate(data, path)
    compute, memory = data["compute"], data["memory"]
    tvm_target = dict(data["tvm_target"])
    cores = int(compute["cores"])  # 0: this machine's
    if tvm_target.get("mcpu") == "auto":
        tvm_target["mcpu"] = _detect_llvm_cpu()
    if cores == 0:
        cores = physical_cores()
    if tvm_target.get("num-cores") == 0:
        tvm_target["num-cores"] = cores
    macs = {p: float(v) for p, v in compute["macs_per_cycle"].items()}
    detected = _detect_host_features() if compute.get("detect_features") else {}
    compiler = str(data.get("cross_compiler", ""))
    prefix = os.environ.get(CROSS_PREFIX_ENV, "") if compiler else ""
    return Target(
        name=path.stem,
        description=str(data.get("description", "")),
        family=data["family"],
        runtime=str(data.get("runtime", "so")),
        tvm_target=MappingProxyType(tvm_target),
        tvm_host=MappingProxyType(dict(data.get("tvm_host", {}))),
        # "aarch64-linux-gnu-g++" with a prefix: PREFIX + "g++"
        cross_compiler=prefix + compiler.rsplit("-", 1)[-1] if prefix else compiler,
        cross_package=str(data.get("cross_package", "")),
        emulator=str(data.get("emulator", "")),
        emulator_package=str(data.get("emulator_package", "")),
        emulator_args=tuple(data.get("emulator_args", ())),
        sysroot=str(data.get("sysroot", "")),
        cflags=tuple(data.get("cflags", ())),
        clock_hz=float(compute["clock_hz"]),
        cores=cores,
        vector_bits=int(detected.get("vector_bits", compute["vector_bits"])),
        int8_dot=bool(detected.get("int8_dot", compute["int8_dot"])),
        fp16_arith=bool(detected.get("fp16_arith", compute["fp16_arith"])),
        macs_per_cycle=MappingProxyType(
            {p: float(detected.get(f"macs_{p}") or v) for p, v in macs.items()}
        ),
        dram_bandwidth_bytes_s=float(memory["dram_bandwidth_bytes_s"]),
        **{key: int(memory.get(key, 0))
           for key in ("l1d_bytes", "l2_bytes", "l3_bytes", "sram_bytes", "flash_bytes")},
        channel_multiple=MappingProxyType(
            {p: int(v) for p, v in data.get("channel_multiple", {}).items()}),
        sources=MappingProxyType(sources),
        cycles_per_instruction=float(compute.get("cycles_per_instruction", 1.0)),
        cross_prefix=prefix,
        cross_arch=compiler.split("-", 1)[0] if prefix else "",
    )


def _detect_llvm_cpu() -> str:
    """Return LLVM's name for this machine's CPU (e.g. ``znver4``)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def cpu_flags() -> set[str]:
    """Return this CPU's feature flags from ``/proc/cpuinfo`` (empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _detect_host_features() -> dict[str, Any]:
    """Derive vector width, int8-dot and fp16 flags and peak MACs from ``/proc/cpuinfo``.

    Peak MACs assume two FMA pipes per core at the detected vector width, which holds for
    Zen 4 and for Intel cores since Skylake-SP; int8 with VNNI is 4x fp32 (4 bytes per lane).
    """
    flags = cpu_flags()
    vector_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    fp32_lanes = vector_bits // 32
    int8_dot = bool(flags & {"avx512_vnni", "avx_vnni"})
    fp16_arith = "avx512_fp16" in flags
    return {
        "vector_bits": vector_bits,
        "int8_dot": int8_dot,
        "fp16_arith": fp16_arith,
        "macs_fp32": 2 * fp32_lanes,
        "macs_fp16": 2 * fp32_lanes * (2 if fp16_arith else 1),
        "macs_int8": 2 * fp32_lanes * (4 if int8_dot else 2),
    }
