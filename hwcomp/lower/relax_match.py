"""Reading and rewriting imported Relax: the helpers hwcomp's Relax rewriters share.

The CPU kernel rewriter (:mod:`hwcomp.lower.cpu.kernels`), the int8 and fp32 microcontroller
kernels (:mod:`hwcomp.lower.mcu.int8`, :mod:`hwcomp.lower.mcu.fp32`), the polynomial
transcendentals (:mod:`hwcomp.lower.cpu.fast_math`) and the C program builder
(:mod:`hwcomp.lower.mcu.aot`) all walk TVM's Relax functions with a ``PyExprMutator`` and
match ops through dataflow bindings.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np


def mutate_functions(mutator: Any, mod: Any) -> Any:
    """Run a Relax ``PyExprMutator`` over every Relax function of ``mod``; return the result."""
    from tvm import relax

    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def bound(mutator: Any, expr: Any) -> Any:
    """Return the value a dataflow variable is bound to (the expression itself otherwise)."""
    from tvm import relax

    value = mutator.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    return expr if value is None else value


def is_op(expr: Any, name: str) -> bool:
    """Whether ``expr`` is a call of the Relax op ``name`` (``"relax.nn.conv2d"``)."""
    from tvm import relax

    return isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == name


def layer_operands(mutator: Any, call: Any) -> tuple[Any, Any, bool]:
    """Return (data, weight, transposed): a conv2d's or matmul's operands through their bindings.

    A ``permute_dims`` on a matmul's weight (Gemm ``transB``) is looked through.
    """
    data, weight = bound(mutator, call.args[0]), bound(mutator, call.args[1])
    if is_op(weight, "relax.permute_dims"):
        return data, bound(mutator, weight.args[0]), True
    return data, weight, False


def relax_array(constant: Any) -> np.ndarray:
    """Return a Relax constant's value."""
    return constant.value.numpy()


def dtype_of(expr: Any) -> str:
    """Return a tensor expression's dtype."""
    return str(expr.ty.dtype)


def shape_of(expr: Any) -> tuple[int, ...]:
    """Return a tensor expression's static shape."""
    return tuple(int(v) for v in expr.ty.shape)


def min_max_op(call: Any) -> str | None:
    """Return ``"max"`` / ``"min"`` for an elementwise maximum / minimum, else None.

    The Relax op, or the ``call_tir`` of the PrimFunc the ONNX frontend emits for Clip's
    bounds (``maximum``, ``minimum1``, ...).
    """
    from tvm import relax

    if is_op(call, "relax.maximum") or is_op(call, "relax.minimum"):
        return "max" if is_op(call, "relax.maximum") else "min"
    if is_op(call, "relax.call_tir") and isinstance(call.args[0], relax.GlobalVar):
        match = re.fullmatch(r"(maximum|minimum)\d*", call.args[0].name_hint)
        if match and isinstance(call.args[1], relax.Tuple) and len(call.args[1].fields) == 2:
            return match.group(1)[:3]
    return None


def scalar_operand(mutator: Any, call: Any) -> tuple[Any, float] | None:
    """Return (the other operand, the value) of a binary op with one scalar constant.

    The constant may be the frontend's ``where(isnan(c), -inf | inf, c)`` of Clip's bounds.
    """
    operands = list(call.args[1].fields) if is_op(call, "relax.call_tir") else list(call.args[:2])
    for other, const in ((operands[0], operands[1]), (operands[1], operands[0])):
        value = scalar_value(mutator, const)
        if value is not None:
            return bound(mutator, other), value
    return None


def scalar_value(mutator: Any, expr: Any) -> float | None:
    """Return the value of a scalar constant (through the frontend's isnan guard), else None."""
    from tvm.ir.expr import Constant

    expr = bound(mutator, expr)
    if isinstance(expr, Constant) and relax_array(expr).size == 1:
        return float(relax_array(expr).reshape(()))
    if is_op(expr, "relax.where"):
        cond = bound(mutator, expr.args[0])
        if is_op(cond, "relax.isnan"):
            tested = scalar_value(mutator, cond.args[0])
            if tested is not None:
                return scalar_value(mutator, expr.args[1] if np.isnan(tested) else expr.args[2])
    return None
