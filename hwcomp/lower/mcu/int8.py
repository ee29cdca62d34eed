"""Integer convolution and matmul kernels for microcontrollers (the ``c`` runtime).

TVM's Relax frontend imports a QDQ model as float, so without this rewrite an int8 model
runs in fp32 on a microcontroller: four times the weight flash and activation RAM. Here each
quantized layer

    quantize(conv2d | matmul(dequantize(x_q), dequantize(W_q)) [+ dequantize(b_q)], s_y, z_y)

becomes one TIR kernel that reads 8-bit activations (u8 or s8) and int8 weights and writes 8 bits:

    acc = sum_k x_q * W_q + (b_q - z_x * sum_k W_q)            (int32; padding reads z_x)
    y_q = saturate(round_half_even(clamp(float(acc) * m, q_min - z_y, q_max - z_y)) + z_y)
    m   = (s_x * s_w[c]) / s_y                                 (float32, per output channel)

which is onnxruntime's own arithmetic for a fused QDQ layer (``QLinearConv``, ``QGemm``:
the int32 bias added to the accumulator, requantization in float32 with that multiplier
expression, round to nearest even), so the C matches onnxruntime bit for bit on these
layers. Grouped and depthwise convolutions are included. Everything between layers
(``dequantize -> relu -> quantize`` where the quantizer left an activation, pooling, the
model's float input and output) stays in Relax; TVM lowers it to the same float operations
onnxruntime runs.

A layer that does not match (a float bias, a weight zero point, per-channel activation
scales, a dequantized output consumed as float) keeps TVM's float lowering; the rewrite
reports why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwcomp.lower.kernel_spec import KernelRewrite, KernelSpec, conv_output_size, int64_shape
from hwcomp.lower.relax_match import (
    bound,
    dtype_of,
    is_op,
    layer_operands,
    mutate_functions,
    relax_array,
    shape_of,
)
from hwcomp.targets import Target

logger = logging.getLogger(__name__)

KERNEL_NAME = "int8 C kernel"
# u8 x s8 -> s32 kernels in C with the requantization fused, depthwise included. Activations
# are u8 because onnxruntime's x86 kernels, the reference, take u8: it converts s8 activations
# and leaves a layer in float where a shared tensor blocks that, and a float layer's rounding
# cannot be matched bit for bit.
C_INT8 = KernelSpec(KERNEL_NAME, "", 1, "uint8", group=1, grouped=True)
_LIMITS = {"int8": (-128, 127), "uint8": (0, 255)}
# The bias scale the quantizer wrote must be s_x * s_w: onnxruntime adds the int32 bias to
# the accumulator as is, so a different scale would mean a different model.
_BIAS_SCALE_RTOL = 1e-5


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of a per-tensor quantized activation."""

    scale: float
    zero_point: int
    dtype: str


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's shape parameters, the key of its kernel."""

    data_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    groups: int
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]


def rewrite_int8_layers(mod: Any, target: Target) -> tuple[Any, KernelRewrite]:
    """Replace quantized conv2d/matmul layers by int8 kernels on ``c``-runtime targets."""
    from tvm import relax

    rewriter = _make_rewriter(mod)
    new_mod = relax.transform.DeadCodeElimination()(mutate_functions(rewriter, mod))
    summary = KernelRewrite(KERNEL_NAME, rewriter.rewritten, [], rewriter.kept_float)
    logger.info("int8 kernels for %s: %d layer(s), %d quantized layer(s) left in float",
                target.name, len(summary.rewritten), len(summary.kept_float))
    return new_mod, summary


def requant_multiplier(x_scale: float, w_scale: np.ndarray, y_scale: float) -> np.ndarray:
    """``(s_x * s_w) / s_y`` in float32, in onnxruntime's order of operations."""
    product = np.float32(x_scale) * w_scale.astype(np.float32)
    return (product / np.float32(y_scale)).astype(np.float32)


def conv_kernel(geometry: ConvGeometry, x: QuantParams, y: QuantParams) -> Any:
    """``Y = requant(conv(X - z_x, W) + B, S)``: X NCHW, W OIHW int8, B int32, S float32."""
    from tvm import te, tirx

    batch, channels, height, width = geometry.data_shape
    out_channels, group_channels, kh_, kw_ = geometry.weight_shape
    top, left, bottom, right = geometry.padding
    (sh, sw), (dh, dw) = geometry.strides, geometry.dilation
    out_h, out_w = conv_output_size(geometry.data_shape, (kh_, kw_), geometry.strides,
                                    geometry.padding, geometry.dilation)
    outs_per_group = out_channels // geometry.groups

    data = te.placeholder(int64_shape(geometry.data_shape), x.dtype, name="X")
    weight = te.placeholder(int64_shape(geometry.weight_shape), "int8", name="W")
    bias = te.placeholder(int64_shape((out_channels,)), "int32", name="B")
    scale = te.placeholder(int64_shape((out_channels,)), "float32", name="S")

    def padded_value(n: Any, c: Any, h: Any, w_: Any) -> Any:
        # Padding stands for 0.0, which is the zero point in the quantized domain.
        inside = tirx.all(h >= top, h < top + height, w_ >= left, w_ < left + width)
        return tirx.if_then_else(inside, data[n, c, h - top, w_ - left],
                                 tirx.const(x.zero_point, x.dtype))

    padded = te.compute(int64_shape((batch, channels, height + top + bottom, width + left + right)),
                        padded_value, name="pad")
    ic = te.reduce_axis(int64_shape((0, group_channels)), "ic")
    ky = te.reduce_axis(int64_shape((0, kh_)), "ky")
    kx = te.reduce_axis(int64_shape((0, kw_)), "kx")
    acc = te.compute(
        int64_shape((batch, out_channels, out_h, out_w)),
        lambda n, o, oy, ox: te.sum(
            padded[n, (o // outs_per_group) * group_channels + ic, oy * sh + ky * dh,
                   ox * sw + kx * dw].astype("int32")
            * weight[o, ic, ky, kx].astype("int32"),
            axis=[ic, ky, kx]),
        name="acc")
    out = te.compute(acc.shape, lambda n, o, oy, ox: _requantize(
        acc[n, o, oy, ox] + bias[o], scale[o], y), name="requant")
    return te.create_prim_func([data, weight, bias, scale, out])


def matmul_kernel(rows: int, depth: int, cols: int, x: QuantParams, y: QuantParams) -> Any:
    """``Y[rows, cols] = requant(X[rows, depth] x W[cols, depth]^T + B, S)``."""
    from tvm import te

    data = te.placeholder(int64_shape((rows, depth)), x.dtype, name="X")
    weight = te.placeholder(int64_shape((cols, depth)), "int8", name="W")
    bias = te.placeholder(int64_shape((cols,)), "int32", name="B")
    scale = te.placeholder(int64_shape((cols,)), "float32", name="S")
    k = te.reduce_axis(int64_shape((0, depth)), "k")
    acc = te.compute(int64_shape((rows, cols)), lambda m, n: te.sum(
        data[m, k].astype("int32") * weight[n, k].astype("int32"), axis=k), name="acc")
    out = te.compute(int64_shape((rows, cols)), lambda m, n: _requantize(acc[m, n] + bias[n], scale[n], y),
                     name="requant")
    return te.create_prim_func([data, weight, bias, scale, out])


def _requantize(acc: Any, scale: Any, y: QuantParams) -> Any:
    """Requantize as onnxruntime does: float multiply, clamp, round half to even, add z_y."""
    from tvm import tirx

    low, high = _LIMITS[y.dtype]
    value = acc.astype("float32") * scale
    value = tirx.max(tirx.min(value, tirx.const(float(high - y.zero_point), "float32")),
                     tirx.const(float(low - y.zero_point), "float32"))
    rounded = tirx.nearbyint(value).astype("int32") + y.zero_point
    return rounded.astype(y.dtype)


@dataclass(frozen=True)
class _Layer:
    """A matched quantized layer: its float op, operands and quantization."""

    op: Any
    x_q: Any
    x: QuantParams
    weight: np.ndarray  # int8, conv OIHW or matmul [N, K]
    w_scale: np.ndarray  # per output channel
    bias: np.ndarray  # int32, per output channel
    y: QuantParams


def _make_rewriter(mod: Any) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.rewritten: list[str] = []
            self.kept_float: list[str] = []
            self.kernels: dict[tuple[Any, ...], Any] = {}

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not is_op(call, "relax.quantize"):
                return call
            layer = _match_layer(self, call)
            if layer is None:
                return call
            if isinstance(layer, str):
                self.kept_float.append(layer)
                return call
            multiplier = requant_multiplier(layer.x.scale, layer.w_scale, layer.y.scale)
            sums = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.int64).sum(axis=1)
            bias = layer.bias.astype(np.int64) - layer.x.zero_point * sums
            if np.abs(bias).max(initial=0) >= 2**31:
                self.kept_float.append(f"{_op_name(layer.op)}: bias overflows int32")
                return call
            operands = [relax.const(layer.weight), relax.const(bias.astype(np.int32)),
                        relax.const(multiplier)]
            if _op_name(layer.op) == "conv2d":
                return self._conv(layer, operands)
            return self._matmul(layer, operands)

        def _kernel(self, key: tuple[Any, ...], make: Any) -> Any:
            if key not in self.kernels:
                name = f"hwcomp_int8_{key[0]}_{len(self.kernels)}"
                # Opaque (op pattern 8): FuseOps fuses nothing into it. The kernel already
                # ends in the layer's requantization, so its output is the quantized tensor
                # the next layer reads; within it the default schedule inlines the padding.
                func = make().with_attrs({"global_symbol": name, "op_pattern": 8})
                self.kernels[key] = self.builder_.add_func(func, name)
            return self.kernels[key]

        def _conv(self, layer: _Layer, operands: list[Any]) -> Any:
            attrs = layer.op.attrs
            geometry = ConvGeometry(
                shape_of(layer.x_q), layer.weight.shape, int(attrs.groups),
                (int(attrs.strides[0]), int(attrs.strides[1])),
                tuple(int(v) for v in attrs.padding),  # type: ignore[arg-type]
                (int(attrs.dilation[0]), int(attrs.dilation[1])))
            kernel = self._kernel(("conv", geometry, layer.x, layer.y),
                                  lambda: conv_kernel(geometry, layer.x, layer.y))
            out_shape = shape_of(layer.op)
            self.rewritten.append(f"conv2d {out_shape}" + (
                f" groups {geometry.groups}" if geometry.groups > 1 else ""))
            return relax.op.call_tir(kernel, [layer.x_q, *operands],
                                     relax.TensorType(out_shape, layer.y.dtype))

        def _matmul(self, layer: _Layer, operands: list[Any]) -> Any:
            shape = shape_of(layer.x_q)
            cols, depth = layer.weight.shape
            rows = int(np.prod(shape[:-1]))
            flat = self.builder_.emit(relax.op.reshape(layer.x_q, (rows, depth)))
            kernel = self._kernel(("matmul", rows, depth, cols, layer.x, layer.y),
                                  lambda: matmul_kernel(rows, depth, cols, layer.x, layer.y))
            self.rewritten.append(f"matmul {(*shape[:-1], cols)}")
            out = self.builder_.emit(relax.op.call_tir(
                kernel, [flat, *operands], relax.TensorType((rows, cols), layer.y.dtype)))
            return relax.op.reshape(out, (*shape[:-1], cols))

    return Rewriter(mod)


def _match_layer(mutator: Any, quantize: Any) -> _Layer | str | None:
    """Match ``quantize(op(dq(x_q), dq(W_q)) [+ bias])``; a string says why not, None: no layer."""
    from tvm.ir.expr import Constant

    value = bound(mutator, quantize.args[0])
    bias_expr = None
    if is_op(value, "relax.add"):
        left, right = (bound(mutator, a) for a in value.args)
        value, bias_expr = (left, right) if _is_layer_op(left) else (right, left)
    if not _is_layer_op(value):
        return None
    op = value
    name = _op_name(op)
    data, weight, transposed = layer_operands(mutator, op)
    if not (is_op(data, "relax.dequantize") and is_op(weight, "relax.dequantize")):
        return None
    x_q, x_scale, x_zp = data.args
    w_q, w_scale, w_zp = (bound(mutator, a) for a in weight.args)
    _, y_scale, y_zp = quantize.args
    if not all(isinstance(c, Constant) for c in (x_scale, x_zp, w_q, w_scale, w_zp, y_scale, y_zp)):
        return f"{name}: quantization parameters are not constants"
    if relax_array(x_scale).size != 1 or relax_array(y_scale).size != 1:
        return f"{name}: activations quantized per channel; the kernel needs one scale"
    if dtype_of(w_q) != "int8" or np.any(relax_array(w_zp) != 0):
        return f"{name}: weights are not symmetric int8"
    x = QuantParams(float(relax_array(x_scale).reshape(())), int(relax_array(x_zp).reshape(())),
                    dtype_of(x_q))
    y = QuantParams(float(relax_array(y_scale).reshape(())), int(relax_array(y_zp).reshape(())),
                    str(quantize.attrs.out_dtype))
    if x.dtype not in _LIMITS or y.dtype not in _LIMITS:
        return f"{name}: activations are {x.dtype} -> {y.dtype}, not 8-bit"
    weights = relax_array(w_q)
    scales = relax_array(w_scale).astype(np.float32).reshape(-1)
    if name == "conv2d":
        attrs = op.attrs
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or weights.ndim != 4:
            return "conv2d: not an NCHW/OIHW 2-D convolution"
        matrix = weights
    else:
        if weights.ndim != 2 or len(shape_of(data)) < 1:
            return "matmul: weight is not a 2-D constant"
        matrix = np.ascontiguousarray(weights if transposed else weights.T)
    channels = matrix.shape[0]
    if scales.size not in (1, channels):
        return f"{name}: weight scale is not per output channel"
    w_scales = np.broadcast_to(scales, (channels,)).astype(np.float32)
    bias = _int32_bias(mutator, bias_expr, x.scale * w_scales, channels)
    if isinstance(bias, str):
        return f"{name}: {bias}"
    return _Layer(op, x_q, x, matrix, w_scales, bias, y)


def _int32_bias(mutator: Any, expr: Any, scales: np.ndarray, channels: int) -> np.ndarray | str:
    """Return the int32 bias behind ``[reshape](dequantize(b_q))``; zeros when there is none."""
    from tvm.ir.expr import Constant

    if expr is None:
        return np.zeros(channels, np.int32)
    if is_op(expr, "relax.reshape"):
        expr = bound(mutator, expr.args[0])
    if not is_op(expr, "relax.dequantize"):
        return "bias is not quantized (int32 with the scale s_x * s_w)"
    b_q, b_scale, b_zp = (bound(mutator, a) for a in expr.args)
    if not all(isinstance(c, Constant) for c in (b_q, b_scale, b_zp)) or dtype_of(b_q) != "int32":
        return "bias is not a constant int32 tensor"
    values, b_scales = relax_array(b_q).reshape(-1), relax_array(b_scale).astype(np.float32).reshape(-1)
    if values.size != channels or np.any(relax_array(b_zp) != 0):
        return "bias is not one int32 per output channel with zero point 0"
    if not np.allclose(np.broadcast_to(b_scales, (channels,)), scales, rtol=_BIAS_SCALE_RTOL,
                       atol=0):
        return "bias scale is not s_x * s_w"
    return values.astype(np.int32)


def _is_layer_op(expr: Any) -> bool:
    return is_op(expr, "relax.nn.conv2d") or is_op(expr, "relax.matmul")


def _op_name(op: Any) -> str:
    return str(op.op.name).split(".")[-1]
