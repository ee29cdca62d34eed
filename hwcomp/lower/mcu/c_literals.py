"""Exact float constants in TVM's generated C.

TVM's C code generator prints a float32 constant with seven significant digits
(``std::scientific``, precision 6), which does not round-trip every float32: a quantization
scale of 0.0141084604 comes out as ``1.410846e-02f``, one unit in the last place off. That is
enough to change the rounding of a quantized value now and then, so int8 kernels would not
match onnxruntime bit for bit, and fp32 kernels would carry a needless error.

:func:`exact_float_literals` rewrites each such literal in the source with nine significant
digits (always enough for float32), using the exact values read from the lowered TIR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from hwcomp.errors import LoweringError

_SCRIPT_FLOAT32 = re.compile(r"T\.float32\(([-+0-9.eE]+)\)")


def float32_constants(funcs: Iterable[Any]) -> set[float]:
    """Every finite float32 immediate in the TIR functions ``funcs`` (absolute values).

    Read from their TVMScript, which prints each as ``T.float32(<shortest repr>)``: TVM 0.27
    has no Python visitor for TIR expressions.
    """
    from tvm import tirx

    found: set[float] = set()
    for func in funcs:
        if isinstance(func, tirx.PrimFunc):
            for text in _SCRIPT_FLOAT32.findall(func.script()):
                value = float(text)
                if np.isfinite(value):
                    found.add(abs(value))
    return found


def exact_float_literals(source: str, constants: Iterable[float]) -> str:
    """Replace TVM's 7-digit printing of each of ``constants`` by a round-tripping one."""
    replacements: dict[str, str] = {}
    for value in constants:
        printed = f"{value:.6e}"
        if np.float32(float(printed)) == np.float32(value):
            continue
        exact = f"{value:.9e}"
        if replacements.get(printed, exact) != exact:
            raise LoweringError(
                f"two float constants both print as {printed} in TVM's C; hwcomp cannot tell "
                "them apart in the generated source")
        replacements[printed] = exact
    for printed, exact in replacements.items():
        # A literal starts after a non-digit (its sign or an operator) and ends with 'f'.
        source = re.sub(rf"(?<![\d.]){re.escape(printed)}f", f"{exact}f", source)
    return source
