"""The schema of a target profile (``targets/*.toml``): every field's type, unit and range.

A profile is user input (``--target my-board.toml``): a wrong type, a number outside what
hardware can be ("clock_hz = 1.5", meant as GHz), a typo in a key that would silently fall
back to a default, all end in one :class:`~hwcomp.errors.TargetError` naming the file, the
field and the expected unit and range. :func:`validate` checks a parsed TOML document;
``hwcomp targets schema`` prints :data:`FIELDS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwcomp.errors import TargetError


@dataclass(frozen=True)
class Field:
    """One profile field: where it lives, its type, unit and allowed range."""

    section: str  # "" for the top level, "compute.macs_per_cycle" for a sub-table
    key: str
    kind: str  # "int", "float", "bool", "str", "str-list", "table"
    unit: str = ""
    low: float | None = None
    high: float | None = None
    required: bool = True
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``section.key`` (the key alone at the top level)."""
        return f"{self.section}.{self.key}" if self.section else self.key

    def describe_range(self, with_unit: bool = True) -> str:
        """Return the range in words, with the unit unless told: ``1e+06 to 1e+10 Hz``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is None and self.high is None:
            return ""
        unit = f" {self.unit}" if self.unit and with_unit else ""
        return f"{self.low:g} to {self.high:g}{unit}"


_PRECISIONS = ("fp32", "fp16", "int8")

# Lowering families; lowering dispatches on them (hwcomp.lower.LOWERINGS).
FAMILIES = ("x86", "arm-a", "cuda", "mcu")

FIELDS: tuple[Field, ...] = (
    Field("", "name", "str", required=False, help="profile name (the file's stem wins)"),
    Field("", "description", "str", required=False, help="one line for humans"),
    Field("", "family", "str", choices=FAMILIES,
          help="lowering family"),
    Field("", "runtime", "str", required=False, choices=("so", "c"),
          help="so: shared library on TVM's runtime; c: C sources"),
    Field("", "cross_compiler", "str", required=False, help="compiler for the target"),
    Field("", "cross_package", "str", required=False, help="Debian package of the compiler"),
    Field("", "emulator", "str", required=False, help="program that runs target binaries"),
    Field("", "emulator_package", "str", required=False, help="Debian package of the emulator"),
    Field("", "emulator_args", "str-list", required=False, help="emulator arguments"),
    Field("", "sysroot", "str", required=False, help="library root for the emulator"),
    Field("", "cflags", "str-list", required=False, help="C flags for the target"),
    Field("", "tvm_target", "table", help="TVM target as a JSON-style table (TVM checks it)"),
    Field("", "tvm_host", "table", required=False, help="host target of a device target"),
    Field("", "compute", "table"),
    Field("", "memory", "table"),
    Field("", "channel_multiple", "table", required=False),
    Field("compute", "clock_hz", "float", "Hz", 1e6, 1e10, help="sustained core clock"),
    Field("compute", "cores", "int", "cores", 0, 4096,
          help="cores used for inference (0: this machine's physical cores; SMs for CUDA)"),
    Field("compute", "vector_bits", "int", "bits", 8, 4096, help="SIMD register width"),
    Field("compute", "int8_dot", "bool", help="an int8 dot-product instruction exists"),
    Field("compute", "fp16_arith", "bool", help="fp16 arithmetic runs natively"),
    Field("compute", "cycles_per_instruction", "float", "cycles", 0.05, 20, required=False,
          help="average cycles per executed instruction, to read emulated instruction "
               "counts as time (hwcomp profile; default 1)"),
    Field("compute", "detect_features", "bool", required=False,
          help="read vector width and dot/fp16 support from this CPU"),
    Field("compute", "macs_per_cycle", "table", help="peak MACs per cycle per core"),
    *(Field("compute.macs_per_cycle", p, "float", "MACs/cycle", 0.001, 65536,
            help=f"{p} peak per core") for p in _PRECISIONS),
    Field("memory", "dram_bandwidth_bytes_s", "float", "bytes/s", 1e5, 1e14,
          help="sustained main-memory bandwidth"),
    *(Field("memory", key, "int", "bytes", 0, 2**44, required=False, help=what)
      for key, what in (("l1d_bytes", "L1 data cache per core (0: none)"),
                        ("l2_bytes", "L2 cache (0: none)"), ("l3_bytes", "L3 cache (0: none)"),
                        ("sram_bytes", "on-chip RAM of a microcontroller"),
                        ("flash_bytes", "flash of a microcontroller"))),
    *(Field("channel_multiple", p, "int", "channels", 1, 1024, required=False,
            help=f"channel counts that keep {p} kernels dense") for p in _PRECISIONS),
)

# Tables whose contents belong to TVM, not to hwcomp's schema.
_FREE_TABLES = frozenset({"tvm_target", "tvm_host"})


def validate(data: Mapping[str, Any], path: Path) -> None:
    """Check ``data`` (a parsed profile) against :data:`FIELDS`.

    Raises:
        TargetError: The first missing, unknown, mistyped or out-of-range field, named with
            its section, unit and range.

    """
    sections = {f.section for f in FIELDS}
    for section in sorted(sections, key=len):
        table = _table(data, section)
        if table is None:
            continue
        known = {f.key for f in FIELDS if f.section == section}
        for key in table:
            if key not in known:
                raise TargetError(
                    f"{_where(path, section, key)} is not a profile field (known here: "
                    f"{', '.join(sorted(known))}); see 'hwcomp targets schema'")
        for spec in (f for f in FIELDS if f.section == section):
            if spec.key not in table:
                if spec.required:
                    raise TargetError(f"{_where(path, section, spec.key)} is missing "
                                      f"({_expected(spec)})")
                continue
            _check(spec, table[spec.key], path)


def _table(data: Mapping[str, Any], section: str) -> Mapping[str, Any] | None:
    table: Any = data
    for part in filter(None, section.split(".")):
        table = table.get(part) if isinstance(table, Mapping) else None
    return table if isinstance(table, Mapping) else None


def _check(spec: Field, value: Any, path: Path) -> None:
    where = _where(path, spec.section, spec.key)
    wrong = f"{where} = {value!r}: expected {_expected(spec)}"
    if spec.kind == "table":
        if not isinstance(value, Mapping):
            raise TargetError(f"{where} must be a table ([{spec.name}])")
        return
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise TargetError(wrong)
        return
    if spec.kind == "str":
        if not isinstance(value, str) or (spec.choices and value not in spec.choices):
            raise TargetError(wrong)
        return
    if spec.kind == "str-list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TargetError(wrong)
        return
    integer = spec.kind == "int"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TargetError(wrong)
    assert spec.low is not None and spec.high is not None
    if not math.isfinite(value) or not spec.low <= value <= spec.high:
        raise TargetError(wrong)


def _expected(spec: Field) -> str:
    kind = {"int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a string", "str-list": "a list of strings", "table": "a table"}[spec.kind]
    extent = spec.describe_range()
    return f"{kind}{', ' + extent if extent else ''}"


def _where(path: Path, section: str, key: str) -> str:
    return f"{path}: {f'[{section}] ' if section else ''}field '{key}'"


def rows() -> list[tuple[str, str, str, str, str]]:
    """Return the schema as table rows: field, type, unit, range, meaning."""
    return [(f.name, f.kind + ("" if f.required else "?"), f.unit,
             f.describe_range(with_unit=False),
             f.help) for f in FIELDS]
