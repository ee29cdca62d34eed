"""Float convolution and dense kernels for microcontrollers (the ``c`` runtime).

TVM's ``c`` target lowers a float conv2d to scalar loops that reload every operand (0.05 to
0.09 multiply-adds per executed instruction on Cortex-M7). Here each float layer

    [relu | clip](conv2d | matmul(x, W) [+ b])          W, b constants, float32, batch 1

becomes one call of hwcomp's C kernels (``kernels/mcu/hwcomp_f32.c``): the convolution (1x1
included) 4 output channels x 2 pixels per step with the receptive fields gathered a pixel
pair at a time (no im2col buffer), the depthwise convolution over a padded plane with a 3x3
window's taps in registers, dense layers 4 outputs per step; the bias and the clamp applied
as each output is stored. GCC keeps the sums in FPU registers and multiplies with VFMA.
Float results differ from TVM's loops and onnxruntime only by summation order (the build's
verification compares them with its float tolerance).

The bias and the activation fold in only where the intermediate tensor has no other reader
(a convolution whose output also feeds a residual keeps its add). Grouped convolutions other
than depthwise, layouts other than NCHW/OIHW and batches above 1 keep TVM's lowering.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwcomp.lower.kernel_spec import FLT_MAX, conv_output_size, layer_macs, tir_shape
from hwcomp.lower.relax_match import (
    dtype_of,
    is_op,
    min_max_op,
    mutate_functions,
    relax_array,
    scalar_operand,
    shape_of,
)

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class _FloatLayer:
    """A float conv2d / matmul with constant weights, its bias and clamp folded in."""

    op: Any  # the conv2d or matmul call
    data: Any  # its input variable
    kind: str  # "conv", "depthwise" or "dense"
    weight: np.ndarray  # [OC, K] conv, [C, KH*KW] depthwise, [N, K] dense
    bias: np.ndarray  # float32, per output channel (zeros until an add folds in)
    window: tuple[int, int] = (1, 1)  # the convolution's KH, KW
    low: float = -FLT_MAX  # the clamp of the outputs
    high: float = FLT_MAX

    @property
    def activation(self) -> str:
        """How the manifest names the folded clamp: "", "relu", "clip [0, 6]"."""
        return _clamp_name(self.low, self.high)


def rewrite_fp32_layers(mod: Any) -> tuple[Any, list[str], dict[str, int]]:
    """Replace float conv2d / matmul layers by hwcomp's fp32 C kernels.

    Returns the module, what was rewritten, and each kernel's multiply-adds by its name.
    """
    from tvm import relax

    layers: dict[Any, _FloatLayer] = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            layers.update(_plan(func))
    if not layers:
        return mod, [], {}
    rewriter = _make_rewriter(mod, layers)
    new_mod = relax.transform.DeadCodeElimination()(mutate_functions(rewriter, mod))
    logger.info("fp32 C kernels: %d layer(s)", len(rewriter.rewritten))
    return new_mod, rewriter.rewritten, rewriter.macs


def _plan(func: Any) -> dict[Any, _FloatLayer]:
    """Map the outermost call of each foldable chain (layer, bias add, activation) to it."""
    from tvm import relax

    values: dict[Any, Any] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                values[binding.var] = binding.value
    uses, users = _uses(func, values)

    def only_user(var: Any) -> tuple[Any, Any] | None:
        if uses[var] != 1 or len(users[var]) != 1:
            return None
        user = users[var][0]
        return user, values[user]

    layers = {}
    for var, value in values.items():
        layer = _float_layer(value, values)
        if layer is None:
            continue
        outer, outer_value = var, value
        bias, low, high = layer.bias, layer.low, layer.high
        user = only_user(outer)
        if user is not None and is_op(user[1], "relax.add"):
            added = _bias(user[1], outer, values, layer.weight.shape[0], layer.kind)
            if added is not None:
                bias = added
                outer, outer_value = user
                user = only_user(outer)
        # Activations in a chain (ReLU6 imports as maximum then minimum), each a clamp.
        while user is not None:
            step = _clamp(user[1], outer, values)
            if step is None:
                break
            step_low, step_high = step
            # clamp(clamp(v, low, high), a, b) = clamp(v, clamp(low, a, b), clamp(high, a, b))
            low, high = (min(max(bound, step_low), step_high) for bound in (low, high))
            outer, outer_value = user
            user = only_user(outer)
        layers[outer_value] = dataclasses.replace(layer, bias=bias, low=low, high=high)
    return layers


def _uses(func: Any, values: dict[Any, Any]) -> tuple[collections.Counter[Any],
                                                         dict[Any, list[Any]]]:
    """How often each variable is read in ``func``, and which bindings read it."""
    from tvm import relax

    counts: collections.Counter[Any] = collections.Counter()

    @relax.expr_functor.visitor
    class Uses(relax.PyExprVisitor):  # type: ignore[misc, name-defined]
        def visit_var_(self, var: Any) -> None:
            counts[var] += 1

        def visit_dataflow_var_(self, var: Any) -> None:
            counts[var] += 1

    Uses().visit_expr(func)
    users: dict[Any, list[Any]] = collections.defaultdict(list)
    for var, value in values.items():
        if isinstance(value, relax.Call):
            for arg in value.args:  # call_tir passes its arguments as a tuple
                for item in arg.fields if isinstance(arg, relax.Tuple) else [arg]:
                    if isinstance(item, relax.Var):
                        users[item].append(var)
    return counts, users


def _constant(expr: Any, values: dict[Any, Any]) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    expr = values.get(expr, expr)
    if is_op(expr, "relax.reshape") or is_op(expr, "relax.permute_dims"):
        return None
    return relax_array(expr) if isinstance(expr, Constant) else None


def _float_layer(value: Any, values: dict[Any, Any]) -> _FloatLayer | None:
    """Return the layer ``value`` computes if a kernel covers it, else None."""
    if is_op(value, "relax.nn.conv2d"):
        data, attrs = value.args[0], value.attrs
        weight = _constant(value.args[1], values)
        shape = shape_of(data)
        if (weight is None or weight.ndim != 4 or dtype_of(data) != "float32"
                or weight.dtype != np.float32 or len(shape) != 4 or shape[0] != 1
                or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                or (attrs.out_layout or "NCHW") != "NCHW"
                or (attrs.out_dtype and str(attrs.out_dtype) not in ("", "float32"))):
            return None
        groups, channels, out_channels = int(attrs.groups), shape[1], weight.shape[0]
        if groups == 1:
            kind = "conv"
        elif groups == channels == out_channels and weight.shape[1] == 1:
            kind = "depthwise"
        else:
            return None
        matrix = np.ascontiguousarray(weight.reshape(out_channels, -1))
        return _FloatLayer(value, data, kind, matrix, np.zeros(out_channels, np.float32),
                           (int(weight.shape[2]), int(weight.shape[3])))
    if is_op(value, "relax.matmul"):
        data, weight_expr = value.args[0], values.get(value.args[1], value.args[1])
        transposed = is_op(weight_expr, "relax.permute_dims")
        weight = _constant(weight_expr.args[0] if transposed else weight_expr, values)
        if (weight is None or weight.ndim != 2 or dtype_of(data) != "float32"
                or weight.dtype != np.float32 or len(shape_of(data)) < 1
                or dtype_of(value) != "float32"):
            return None
        if transposed and list(weight_expr.attrs.axes or [1, 0]) != [1, 0]:
            return None
        rows = weight if transposed else weight.T  # [N, K]
        return _FloatLayer(value, data, "dense", np.ascontiguousarray(rows),
                           np.zeros(rows.shape[0], np.float32))
    return None


def _bias(add: Any, layer_var: Any, values: dict[Any, Any], channels: int,
          kind: str) -> np.ndarray | None:
    """Return the per-channel constant ``add`` adds to the layer's output, else None."""
    left, right = add.args[:2]
    other = right if left.same_as(layer_var) else left if right.same_as(layer_var) else None
    if other is None:
        return None
    expr = values.get(other, other)
    if is_op(expr, "relax.reshape"):
        expr = values.get(expr.args[0], expr.args[0])
    array = _constant(expr, values)
    if array is None or array.dtype != np.float32 or array.size != channels:
        return None
    broadcast = shape_of(other)
    wanted = [1] * len(broadcast)
    if kind == "dense":
        wanted[-1] = channels
    elif len(broadcast) == 4:
        wanted[1] = channels
    if list(broadcast) != wanted and not (kind == "dense" and list(broadcast) == [channels]):
        return None
    return np.ascontiguousarray(array.reshape(-1))


def _clamp(value: Any, var: Any, values: dict[Any, Any]) -> tuple[float, float] | None:
    """Return ``(low, high)`` where ``value`` clamps ``var`` by constants, else None.

    relu, clip with constant bounds, and maximum / minimum with a scalar constant (as the
    ONNX frontend imports Clip with bound inputs).
    """
    from tvm import relax

    if is_op(value, "relax.nn.relu") and value.args[0].same_as(var):
        return 0.0, FLT_MAX
    if (is_op(value, "relax.clip") and value.args[0].same_as(var)
            and all(isinstance(a, relax.PrimValue) for a in value.args[1:3])):
        low, high = (float(a.value.value) for a in value.args[1:3])
        return max(low, -FLT_MAX), min(high, FLT_MAX)
    kind = min_max_op(value)
    if kind is None:
        return None
    operand = scalar_operand(_Bindings(values), value)
    # scalar_operand gives the other operand's bound value: the layer's call here.
    if (operand is None or not operand[0].same_as(values.get(var, var))
            or not np.isfinite(operand[1])):
        return None
    return (float(operand[1]), FLT_MAX) if kind == "max" else (-FLT_MAX, float(operand[1]))


def _clamp_name(low: float, high: float) -> str:
    """How the manifest names a folded clamp: "", "relu", "clip [0, 6]"."""
    if (low, high) == (-FLT_MAX, FLT_MAX):
        return ""
    if (low, high) == (0.0, FLT_MAX):
        return "relu"

    def text(v: float) -> str:
        return "inf" if v >= FLT_MAX else "-inf" if v <= -FLT_MAX else f"{v:g}"

    return f"clip [{text(low)}, {text(high)}]"


class _Bindings:
    """The ``lookup_binding`` the int8 rewrite's matching helpers ask a mutator for."""

    def __init__(self, values: dict[Any, Any]) -> None:
        self.values = values

    def lookup_binding(self, var: Any) -> Any:
        return self.values.get(var)


def _make_rewriter(mod: Any, layers: dict[Any, _FloatLayer]) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.rewritten: list[str] = []
            self.kernels: dict[tuple[Any, ...], Any] = {}
            self.macs: dict[str, int] = {}

        def visit_call_(self, call: Any) -> Any:
            layer = layers.get(call)
            if layer is None:
                return super().visit_call_(call)
            data = self.visit_expr(layer.data)
            out_shape = shape_of(call)
            key = (layer.kind, tuple(shape_of(layer.data)), layer.weight.shape, out_shape,
                   _layer_attrs(layer), layer.low, layer.high)
            if key not in self.kernels:
                name = f"hwcomp_fp32_{layer.kind}_{len(self.kernels)}"
                func = _kernel(layer, out_shape).with_attrs(
                    {"global_symbol": name, "op_pattern": 8})
                self.kernels[key] = self.builder_.add_func(func, name)
                self.macs[name] = layer_macs(layer.weight.shape, out_shape)
            operands = [relax.const(layer.weight), relax.const(layer.bias)]
            extra = f" + {layer.activation}" if layer.activation else ""
            self.rewritten.append(f"{layer.kind} {tuple(out_shape)}{extra}")
            if layer.kind != "dense":
                return relax.op.call_tir(self.kernels[key], [data, *operands],
                                         relax.TensorType(out_shape, "float32"))
            rows, depth = int(np.prod(shape_of(layer.data)[:-1])), layer.weight.shape[1]
            flat = self.builder_.emit(relax.op.reshape(data, (rows, depth)))
            out = self.builder_.emit(relax.op.call_tir(
                self.kernels[key], [flat, *operands],
                relax.TensorType((rows, layer.weight.shape[0]), "float32")))
            return relax.op.reshape(out, out_shape)

    return Rewriter(mod)


def _layer_attrs(layer: _FloatLayer) -> tuple[Any, ...]:
    if layer.kind == "dense":
        return ()
    attrs = layer.op.attrs
    return (tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.padding),
            tuple(int(v) for v in attrs.dilation))


def _kernel(layer: _FloatLayer, out_shape: Any) -> Any:
    """Return the PrimFunc calling the layer's C kernel (scratch from the workspace)."""
    import tvm

    channels_out = layer.weight.shape[0]
    clamp = f"T.float32({layer.low!r}), T.float32({layer.high!r})"
    head = "@T.prim_func\ndef main(X: T.Buffer({}, \"float32\"), " \
           "W: T.Buffer({}, \"float32\"), B: T.Buffer({}, \"float32\"), " \
           "Y: T.Buffer({}, \"float32\")):\n    T.func_attr({{\"tirx.noalias\": True}})\n"
    if layer.kind == "dense":
        rows, depth = int(np.prod(shape_of(layer.data)[:-1])), layer.weight.shape[1]
        source = head.format(tir_shape((rows, depth)), tir_shape(layer.weight.shape),
                             tir_shape((channels_out,)), tir_shape((rows, channels_out))) + (
            f'    T.call_extern("int32", "hwcomp_f32_dense", X.data, W.data, B.data, Y.data, '
            f"{rows}, {depth}, {channels_out}, {clamp})\n")
    else:
        data_shape = tuple(int(d) for d in shape_of(layer.data))
        _, channels, height, width = data_shape
        attrs = layer.op.attrs
        (sh, sw), (dh, dw) = ((int(v) for v in attrs.strides), (int(v) for v in attrs.dilation))
        top, left, bottom, right = (int(v) for v in attrs.padding)
        kh, kw = layer.window
        out_h, out_w = conv_output_size(data_shape, (kh, kw), (sh, sw), (top, left, bottom, right),
                                        (dh, dw))
        if layer.kind == "conv":
            scratch = 2 * channels * kh * kw
            call = (f'T.call_extern("int32", "hwcomp_f32_conv", X.data, W.data, B.data, Y.data, '
                    f"scratch.data, {channels}, {height}, {width}, {channels_out}, {kh}, {kw}, "
                    f"{sh}, {sw}, {dh}, {dw}, {top}, {left}, {out_h}, {out_w}, {clamp})")
        else:
            padded = top or left or bottom or right
            scratch = (height + top + bottom) * (width + left + right) if padded else 1
            call = (f'T.call_extern("int32", "hwcomp_f32_depthwise", X.data, W.data, B.data, '
                    f"Y.data, scratch.data, {channels}, {height}, {width}, {kh}, {kw}, {sh}, "
                    f"{sw}, {dh}, {dw}, {top}, {left}, {bottom}, {right}, {out_h}, {out_w}, "
                    f"{clamp})")
        source = head.format(tir_shape(data_shape), tir_shape(layer.weight.shape),
                             tir_shape((channels_out,)), tir_shape(out_shape)) + (
            f'    scratch = T.alloc_buffer(({scratch},), "float32")\n    {call}\n')
    func = tvm.script.from_source(source)
    return func.with_attr("tirx.is_scheduled", True)
