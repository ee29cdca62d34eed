"""Reading and rewriting imported Relax: the helpers hwcomp's Relax rewriters share.

The CPU kernel rewriter (:mod:`hwcomp.lower.cpu.kernels`), the int8 microcontroller kernels
(:mod:`hwcomp.lower.mcu.int8`), the polynomial transcendentals (:mod:`hwcomp.lower.cpu.fast_math`)
and the C program builder (:mod:`hwcomp.lower.mcu.aot`) all walk TVM's Relax functions with a
``PyExprMutator`` and match ops through dataflow bindings.
"""

from __future__ import annotations

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
