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
layers. Plain (groups 1) and depthwise convolutions at batch 1 call hwcomp's own C kernels
(``kernels/mcu/hwcomp_q8.c``: Helium's VMLADAV on Cortex-M55, 16 multiply-adds per
instruction; SMLAD on the DSP extension of Cortex-M4/M7, two; a portable C loop elsewhere;
weights reordered here for SXTB16, which the Helium kernels read in that order); other
grouped convolutions and matmuls are TIR kernels TVM's C generator writes.
An activation between layers that onnxruntime computes exactly (``dequantize -> relu|clip ->
quantize``) becomes a 256-entry table of its results, looked up per element in place. A
residual add or a global mean (``quantize([mean](act(dq(a) + dq(b))))``) runs
``hwcomp_q8_elementwise`` and a max pool ``hwcomp_q8_maxpool`` on the 8-bit tensors, with
the QDQ graph's float steps (per-operand tables of dequantized values): the same results as
TVM's float code, without the float tensors. Everything else between layers (windowed
average pools, the model's float input and output) stays in Relax; TVM lowers it to the
same float operations onnxruntime runs.

A layer that does not match (a float bias, a weight zero point, per-channel activation
scales, a dequantized output consumed as float) keeps TVM's float lowering; the rewrite
reports why.
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwcomp.lower.kernel_spec import (
    FLT_MAX,
    KernelRewrite,
    KernelSpec,
    conv_output_size,
    int64_shape,
    layer_macs,
    tir_shape,
)
from hwcomp.lower.relax_match import (
    bound,
    dtype_of,
    is_op,
    layer_operands,
    min_max_op,
    mutate_functions,
    relax_array,
    scalar_operand,
    shape_of,
)
from hwcomp.model import quantize_like_onnx
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

    rewriter = _make_rewriter(mod, c_kernel_path(target))
    new_mod = relax.transform.DeadCodeElimination()(mutate_functions(rewriter, mod))
    summary = KernelRewrite(KERNEL_NAME, rewriter.rewritten, [], rewriter.kept_float,
                            rewriter.macs)
    logger.info("int8 kernels for %s: %d layer(s), %d quantized layer(s) left in float",
                target.name, len(summary.rewritten), len(summary.kept_float))
    return new_mod, summary


def c_kernel_path(target: Target) -> str:
    """Which path of hwcomp_q8.c the target's C compiler takes, for the kernels' scratch sizes.

    "helium": ``__ARM_FEATURE_MVE`` with its floating point (Cortex-M55); "dsp":
    ``__ARM_FEATURE_DSP`` with a single-precision FPU (Cortex-M4/M7: the assembly loops,
    whose convolution interleaves its columns into twice the scratch); "c" otherwise (the
    host check, M0/M3). The C decides by the same macros, so the sizes come from the same
    compiler with the same flags. Where that compiler cannot be run, "any": sizes that
    cover every path.
    """
    macros = _target_macros(target)
    if macros is None:
        return "any"
    if int(macros.get("__ARM_FEATURE_MVE", "0")) & 3 == 3:
        return "helium"
    if "__ARM_FEATURE_DSP" in macros and int(macros.get("__ARM_FP", "0")) & 4:
        return "dsp"
    return "c"


def _target_macros(target: Target) -> dict[str, str] | None:
    """Return the target C compiler's predefined macros (its flags); None if it cannot run."""
    if not target.cross_compiler:
        return {}
    return _compiler_macros(target.cross_compiler, tuple(target.cflags))


@functools.cache
def _compiler_macros(compiler: str, cflags: tuple[str, ...]) -> dict[str, str] | None:
    try:
        done = subprocess.run([compiler, *cflags, "-dM", "-E", "-x", "c", "/dev/null"],
                              capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(re.findall(r"^#define (\w+) ?(.*)$", done.stdout, re.M))


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


# hwcomp's C kernels (kernels/mcu/hwcomp_q8.c) for the layers they cover; the others keep
# the TIR kernels above. Flags: x is s8, y is s8.
_C_FLAGS = {"int8": (1, 2), "uint8": (0, 0)}
# hwcomp_q8_elementwise: a second input; the mean per channel; an activation's clamp.
_ADD_FLAG, _MEAN_FLAG, _CLAMP_FLAG = 4, 8, 16
_C_SUFFIX = {"int8": "s8", "uint8": "u8"}


def c_kernel_kind(geometry: ConvGeometry) -> str | None:
    """Which C kernel computes this convolution: "conv", "depthwise", or None (TIR's).

    The convolution: groups 1, batch 1 (1x1 and fully connected included). Depthwise: one
    input and one output channel per group.
    """
    batch, channels = geometry.data_shape[:2]
    out_channels, group_channels = geometry.weight_shape[:2]
    if batch != 1:
        return None
    if geometry.groups == 1:
        return "conv"
    if geometry.groups == channels == out_channels and group_channels == 1:
        return "depthwise"
    return None


def pack_c_weight(weight: np.ndarray, kind: str) -> np.ndarray:
    """Weights in the C kernel's layout (see hwcomp_q8.h).

    Convolution: ``[OC, Kp]``, K = C*KH*KW zero-padded to a multiple of 4, each group of four
    stored as w0 w2 w1 w3 (the order SXTB16 unpacks into two 16-bit pairs). Depthwise:
    ``[C, KH*KW]``.
    """
    rows = weight.reshape(weight.shape[0], -1)
    if kind == "depthwise":
        return np.ascontiguousarray(rows)
    depth = rows.shape[1]
    padded = np.zeros((rows.shape[0], -(-depth // 4) * 4), np.int8)
    padded[:, :depth] = rows
    groups = padded.reshape(rows.shape[0], -1, 4)
    return np.ascontiguousarray(groups[:, :, [0, 2, 1, 3]].reshape(padded.shape))


def c_conv_kernel(geometry: ConvGeometry, kind: str, x: QuantParams, y: QuantParams,
                  path: str = "c") -> Any:
    """Return a PrimFunc calling ``hwcomp_q8_conv`` or ``hwcomp_q8_depthwise`` on its buffers.

    The kernel's scratch (the convolution's input columns, the depthwise kernel's padded
    input plane, sized for the C ``path`` of :func:`c_kernel_path`, see hwcomp_q8.c) is a
    buffer of the function: TVM takes it from the workspace, which the memory plan
    reserves in the arena for that step.
    """
    import tvm

    _, channels, height, width = geometry.data_shape
    out_channels = geometry.weight_shape[0]
    kh_, kw_ = geometry.weight_shape[2:]
    top, left, bottom, right = geometry.padding
    (sh, sw), (dh, dw) = geometry.strides, geometry.dilation
    out_h, out_w = conv_output_size(geometry.data_shape, (kh_, kw_), geometry.strides,
                                    geometry.padding, geometry.dilation)
    low, high = _LIMITS[y.dtype]
    flags = _C_FLAGS[x.dtype][0] | _C_FLAGS[y.dtype][1]
    depth_pad = -(-channels * kh_ * kw_ // 4) * 4
    weight = (f"(T.int64({channels}), T.int64({kh_ * kw_}))" if kind == "depthwise"
              else f"(T.int64({out_channels}), T.int64({depth_pad}))")

    # The depthwise kernel also takes the bottom and right padding (it pads its plane).
    pads = (top, left, bottom, right) if kind == "depthwise" else (top, left)
    geometry_args = ", ".join(str(v) for v in (
        kh_, kw_, sh, sw, dh, dw, *pads, out_h, out_w, x.zero_point, y.zero_point,
        low - y.zero_point, high - y.zero_point, flags))
    # One entry point per activation type pair: TVM declares each with the buffers' types.
    suffix = _C_SUFFIX[x.dtype] + _C_SUFFIX[y.dtype]
    if kind == "depthwise":
        plane = (height + top + bottom) * (width + left + right)
        if path in ("helium", "any"):  # the plane, 64 bytes of slack, max(ow, 64) + 4 sums
            plane = _round16(_round16(plane + 64) + 4 * (max(out_w, 64) + 4))
        elif not any(geometry.padding):
            plane = 1  # the DSP and C kernels read an unpadded plane in place
        else:
            plane += 4  # the DSP rows' odd output reads a word, one byte past its window
        scratch = f'    plane = T.alloc_buffer(({plane},), "{x.dtype}")\n'
        call = (f'T.call_extern("int32", "hwcomp_q8_depthwise_{suffix}", X.data, W.data, '
                f"B.data, S.data, Y.data, plane.data, {channels}, {height}, {width}, "
                f"{geometry_args})")
    else:
        # Two 16-bit columns (C); on the DSP path interleaved into two more when there are
        # channel pairs; Helium: two 8-bit columns, their 16-bit gather offsets, the
        # per-channel bias and two pixels' sums.
        sizes = {"c": 2 * depth_pad, "dsp": (4 if out_channels >= 2 else 2) * depth_pad,
                 "helium": _round16(4 * depth_pad + 12 * out_channels + 56) // 2}
        col = max(sizes.values()) if path == "any" else sizes[path]
        scratch = f'    col = T.alloc_buffer(({col},), "int16")\n'
        call = (f'T.call_extern("int32", "hwcomp_q8_conv_{suffix}", X.data, W.data, B.data, '
                f"S.data, Y.data, col.data, {channels}, {height}, {width}, {out_channels}, "
                f"{geometry_args})")
    source = (
        "@T.prim_func\n"
        f'def main(X: T.Buffer({tir_shape(geometry.data_shape)}, "{x.dtype}"), '
        f'W: T.Buffer({weight}, "int8"), B: T.Buffer({tir_shape((out_channels,))}, "int32"), '
        f'S: T.Buffer({tir_shape((out_channels,))}, "float32"), '
        f'Y: T.Buffer({tir_shape((1, out_channels, out_h, out_w))}, "{y.dtype}")):\n'
        '    T.func_attr({"tirx.noalias": True})\n'
        f"{scratch}    {call}\n")
    func = tvm.script.from_source(source).with_attr("tirx.is_scheduled", True)
    if (kind == "depthwise" and any(geometry.padding) and (out_h, out_w) == (height, width)
            and x.dtype == y.dtype):
        # Every path copies a padded channel's plane into the scratch before it writes that
        # channel's outputs, at the same place: the output may take the input's place.
        func = func.with_attr("hwcomp.in_place", True)
    return func


def _round16(size: int) -> int:
    """``size`` rounded up to 16 bytes, the runtime allocator's unit (hwcomp_runtime.c)."""
    return -(-size // 16) * 16


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


def _make_rewriter(mod: Any, path: str) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.rewritten: list[str] = []
            self.kept_float: list[str] = []
            self.kernels: dict[tuple[Any, ...], Any] = {}
            self.macs: dict[str, int] = {}  # a layer kernel's multiply-adds, by its name

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not is_op(call, "relax.quantize"):
                return call
            table = _activation_table(self, call)
            if table is not None:
                return self._lookup(call, *table)
            steps = _float_steps(self, call)
            if steps is not None:
                return self._elementwise(steps)
            pool = _max_pool(self, call)
            if pool is not None:
                return self._maxpool(call, *pool)
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

        def _kernel(self, key: tuple[Any, ...], make: Any, macs: int = 0) -> Any:
            if key not in self.kernels:
                name = f"hwcomp_int8_{key[0]}_{len(self.kernels)}"
                # Opaque (op pattern 8): FuseOps fuses nothing into it. The kernel already
                # ends in the layer's requantization, so its output is the quantized tensor
                # the next layer reads; within it the default schedule inlines the padding.
                func = make().with_attrs({"global_symbol": name, "op_pattern": 8})
                self.kernels[key] = self.builder_.add_func(func, name)
                if macs:
                    self.macs[name] = macs
            return self.kernels[key]

        def _lookup(self, call: Any, x_q: Any, table: np.ndarray, name: str) -> Any:
            shape, in_dtype = shape_of(x_q), dtype_of(x_q)
            out_dtype = str(call.attrs.out_dtype)
            count = int(np.prod(shape))
            kernel = self._kernel(("lut", count, in_dtype, out_dtype),
                                  lambda: lookup_kernel(count, in_dtype, out_dtype))
            self.rewritten.append(f"{name} {tuple(shape)}: 256-entry table")
            flat = self.builder_.emit(relax.op.reshape(x_q, (count,)))
            out = self.builder_.emit(relax.op.call_tir(
                kernel, [flat, relax.const(table)], relax.TensorType((count,), out_dtype)))
            return relax.op.reshape(out, shape)

        def _elementwise(self, steps: _FloatSteps) -> Any:
            shape, in_dtype = shape_of(steps.a_q), dtype_of(steps.a_q)
            key = ("elementwise", shape, in_dtype, steps.y_dtype, steps.b_q is not None,
                   steps.mean, steps.low, steps.high, steps.y_scale, steps.y_zp, steps.y_shape)
            kernel = self._kernel(key, lambda: elementwise_kernel(shape, steps, in_dtype))
            self.rewritten.append(f"{steps.name} {shape}: float steps in C")
            inputs = [steps.a_q] + ([steps.b_q] if steps.b_q is not None else [])
            return relax.op.call_tir(kernel, [*inputs, relax.const(steps.table)],
                                     relax.TensorType(steps.y_shape, steps.y_dtype))

        def _maxpool(self, call: Any, x_q: Any, pool: Any,
                     table: np.ndarray | _FloatSteps) -> Any:
            out_dtype = str(call.attrs.out_dtype)
            if isinstance(table, _FloatSteps):  # the add first, quantized as the pool's output
                x_q = self.builder_.emit(self._elementwise(table))
                start = _LIMITS[out_dtype][0]  # the LUT order: the byte, + 128 for s8
                table = np.arange(start, start + 256).astype(out_dtype)
            in_shape, out_shape = shape_of(x_q), shape_of(pool)
            in_dtype = dtype_of(x_q)
            attrs = pool.attrs
            key = ("maxpool", in_shape, out_shape, in_dtype, out_dtype,
                   tuple(int(v) for v in attrs.pool_size), tuple(int(v) for v in attrs.strides),
                   tuple(int(v) for v in attrs.dilation), tuple(int(v) for v in attrs.padding))
            kernel = self._kernel(key, lambda: maxpool_kernel(in_shape, out_shape, attrs,
                                                              in_dtype, out_dtype))
            self.rewritten.append(f"max_pool2d {out_shape}: on 8-bit values")
            return relax.op.call_tir(kernel, [x_q, relax.const(table)],
                                     relax.TensorType(out_shape, out_dtype))

        def _conv(self, layer: _Layer, operands: list[Any]) -> Any:
            attrs = layer.op.attrs
            geometry = ConvGeometry(
                shape_of(layer.x_q), layer.weight.shape, int(attrs.groups),
                (int(attrs.strides[0]), int(attrs.strides[1])),
                tuple(int(v) for v in attrs.padding),  # type: ignore[arg-type]
                (int(attrs.dilation[0]), int(attrs.dilation[1])))
            kind = c_kernel_kind(geometry)
            out_shape = shape_of(layer.op)
            macs = layer_macs(layer.weight.shape, out_shape)
            if kind is not None:
                operands = [relax.const(pack_c_weight(layer.weight, kind)), *operands[1:]]
                kernel = self._kernel(
                    ("c_" + kind, geometry, layer.x, layer.y),
                    lambda: c_conv_kernel(geometry, kind, layer.x, layer.y, path), macs)
            else:
                kernel = self._kernel(("conv", geometry, layer.x, layer.y),
                                      lambda: conv_kernel(geometry, layer.x, layer.y), macs)
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
                                  lambda: matmul_kernel(rows, depth, cols, layer.x, layer.y),
                                  rows * depth * cols)
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


def lookup_kernel(count: int, in_dtype: str, out_dtype: str) -> Any:
    """``Y[i] = T[X[i] + offset]``: an 8-bit activation through a 256-entry table.

    A call of ``hwcomp_q8_lut`` (hwcomp_q8.c: a VLDRB gather of 16 elements on Helium, a C
    loop elsewhere); offset 128 for s8 inputs.
    """
    import tvm

    suffix = _C_SUFFIX[in_dtype] + _C_SUFFIX[out_dtype]
    flags = _C_FLAGS[in_dtype][0] | _C_FLAGS[out_dtype][1]
    source = (
        "@T.prim_func\n"
        f'def main(X: T.Buffer((T.int64({count}),), "{in_dtype}"), '
        f'Tab: T.Buffer((T.int64(256),), "{out_dtype}"), '
        f'Y: T.Buffer((T.int64({count}),), "{out_dtype}")):\n'
        f'    T.call_extern("int32", "hwcomp_q8_lut_{suffix}", X.data, Tab.data, Y.data, '
        f"{count}, {flags})\n")
    func = tvm.script.from_source(source).with_attr("tirx.is_scheduled", True)
    # Each element is read only to write the same element: the output may take the input's
    # place in the arena.
    return func.with_attr("hwcomp.in_place", True)


def _activation_chain(mutator: Any, expr: Any) -> tuple[list[tuple[str, float]], Any] | None:
    """Strip exact activations off ``expr``: (their steps, outermost first; what they apply to).

    relu, clip, and maximum / minimum with a scalar constant (ReLU6 as ONNX's Clip imports);
    each step is ("max" | "min", bound). None where a clip's bounds are not constants.
    """
    steps: list[tuple[str, float]] = []
    while True:
        if is_op(expr, "relax.nn.relu"):
            steps.append(("max", 0.0))
        elif is_op(expr, "relax.clip"):
            try:
                low, high = (float(bound(mutator, a).value) for a in expr.args[1:])
            except (AttributeError, TypeError):
                return None
            steps += [("min", high), ("max", low)]
        elif min_max_op(expr) is not None:
            scalar = scalar_operand(mutator, expr)
            if scalar is None:
                return None
            steps.append((min_max_op(expr), scalar[1]))  # type: ignore[arg-type]
            expr = scalar[0]
            continue
        else:
            return steps, expr
        expr = bound(mutator, expr.args[0])


def _apply_steps(value: np.ndarray, steps: list[tuple[str, float]]) -> np.ndarray:
    """Apply activation ``steps`` (outermost first) to float32 ``value``, innermost first."""
    for op, bound_value in reversed(steps):
        value = (np.maximum if op == "max" else np.minimum)(value, np.float32(bound_value))
    return value


def _activation_table(mutator: Any, quantize: Any) -> tuple[Any, np.ndarray, str] | None:
    """Return ``quantize(act(dequantize(x_q)))`` as (x_q, its 256-entry table, op name).

    ``act`` is a chain of relu, clip, and maximum / minimum with a scalar constant (ReLU6).
    Every 8-bit input's output computed as onnxruntime computes the three ops in float32:
    ``(x - z_x) * s_x``, the activation, ``nearbyint(v / s_y) + z_y`` saturated. Only exact
    activations (max/min): the table is then the ops' result bit for bit.
    """
    chain = _activation_chain(mutator, bound(mutator, quantize.args[0]))
    if chain is None or not chain[0] or not is_op(chain[1], "relax.dequantize"):
        return None
    steps, dq = chain
    x_q, x_scale, x_zp = (bound(mutator, a) for a in dq.args)
    params = _scalar_params(mutator, x_scale, x_zp, *quantize.args[1:])
    in_dtype, out_dtype = dtype_of(x_q), str(quantize.attrs.out_dtype)
    if params is None or in_dtype not in _LIMITS or out_dtype not in _LIMITS:
        return None
    s_x, z_x, s_y, z_y = params
    table = quantize_like_onnx(_apply_steps(_dequantized(in_dtype, s_x, z_x), steps), s_y, z_y,
                       out_dtype)
    return x_q, table, "relu" if steps == [("max", 0.0)] else "clip"


def _scalar_params(mutator: Any, *exprs: Any) -> list[np.ndarray] | None:
    """Return per-tensor quantization constants' values (scales, zero points); None if not."""
    from tvm.ir.expr import Constant

    values = [bound(mutator, e) for e in exprs]
    if not all(isinstance(c, Constant) and relax_array(c).size == 1 for c in values):
        return None
    return [relax_array(c).reshape(()) for c in values]


def _dequantized(dtype: str, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Return an 8-bit type's 256 values dequantized as TVM's float code does, in LUT order.

    ``(float)(x - z) * s`` in float32, for x = 0..255 (u8) or -128..127 (s8): the order
    the kernels index by (the byte, + 128 for s8).
    """
    start = -128 if dtype == "int8" else 0
    inputs = np.arange(start, start + 256, dtype=np.int32)
    return (inputs - np.int32(zero_point)).astype(np.float32) * np.float32(scale)


@dataclass(frozen=True)
class _FloatSteps:
    """``quantize([mean](act(dequantize(a) [+ dequantize(b)])))`` between quantized layers."""

    a_q: Any
    b_q: Any | None
    table: np.ndarray  # float32: a's 256 dequantized values by byte, then b's (the add's)
    low: float  # the activation's clamp, +-FLT_MAX where there is none
    high: float
    mean: bool  # over each channel's plane (dimensions 2, 3 of NCHW)
    y_scale: float
    y_zp: int
    y_dtype: str
    y_shape: tuple[int, ...]  # the quantized output's (the mean's, flattened or not)

    @property
    def name(self) -> str:
        """How the rewrite report names it."""
        return ("add" if self.b_q is not None else "") + (
            " + mean" if self.mean and self.b_q is not None else "mean" if self.mean else "")


def _float_steps(mutator: Any, quantize: Any) -> _FloatSteps | None:
    """Match ``quantize([mean over H, W](act(act_a(dequantize(a)) [+ act_b(dequantize(b))])))``.

    ``a`` and ``b`` 8-bit of one type and one shape (no broadcasting), per-tensor constants;
    each ``act`` a chain of exact activations as for the tables (``act_a``, ``act_b`` go into
    the operands' tables). Without the add, only the mean (a lone activation is a table).
    """
    y = _scalar_params(mutator, *quantize.args[1:])
    if y is None:
        return None
    return _float_steps_of(mutator, bound(mutator, quantize.args[0]), y,
                           str(quantize.attrs.out_dtype), shape_of(quantize))


def _float_steps_of(mutator: Any, value: Any, y: list[np.ndarray], out_dtype: str,
                    out_shape: tuple[int, ...]) -> _FloatSteps | None:
    """:func:`_float_steps` of ``value`` quantized with ``y`` (scale, zero point)."""
    if is_op(value, "relax.reshape") and is_op(bound(mutator, value.args[0]), "relax.mean"):
        value = bound(mutator, value.args[0])  # a flatten of the pooled 1 x 1 maps
    mean = is_op(value, "relax.mean")
    if mean:
        data = value.args[0]
        shape = shape_of(data)
        axes = sorted(int(a) % len(shape) for a in value.attrs.axis) if value.attrs.axis else []
        if len(shape) != 4 or axes != [2, 3]:
            return None
        value = bound(mutator, data)
    chain = _activation_chain(mutator, value)
    if chain is None:
        return None
    steps, inner = chain
    # Each operand: dequantize, then its own exact activations (a ReLU the quantizer kept
    # before the add), which go into its table.
    operands: list[tuple[list[tuple[str, float]], Any]] = []
    if is_op(inner, "relax.add"):
        for arg in inner.args:
            operand = _activation_chain(mutator, bound(mutator, arg))
            if operand is None or not is_op(operand[1], "relax.dequantize"):
                return None
            operands.append(operand)
    elif mean and is_op(inner, "relax.dequantize"):
        operands.append(([], inner))
    else:
        return None
    dqs = [dq for _, dq in operands]
    sources = [bound(mutator, dq.args[0]) for dq in dqs]
    dtypes = {dtype_of(x) for x in sources}
    shapes = {shape_of(x) for x in sources}
    if len(dtypes) != 1 or len(shapes) != 1 or shapes != {shape_of(inner)}:
        return None
    dtype = dtypes.pop()
    if dtype not in _LIMITS or out_dtype not in _LIMITS:
        return None
    tables = []
    for own_steps, dq in operands:
        params = _scalar_params(mutator, *dq.args[1:])
        if params is None:
            return None
        values = _apply_steps(_dequantized(dtype, *params), own_steps)
        # Indexed by the byte: an s8 value's two's complement (0..127, then -128..-1).
        tables.append(np.roll(values, -128 if dtype == "int8" else 0))
    limits = _apply_steps(np.array([-np.inf, np.inf], np.float32), steps)
    low, high = (float(np.clip(v, -FLT_MAX, FLT_MAX)) for v in limits)
    table = np.concatenate(tables)  # 256 values, or 512 with the add's second operand
    return _FloatSteps(dqs[0].args[0], dqs[1].args[0] if len(dqs) > 1 else None,
                       table.astype(np.float32), low, high, mean, float(y[0]), int(y[1]),
                       out_dtype, out_shape)


def elementwise_kernel(shape: tuple[int, ...], steps: _FloatSteps, in_dtype: str) -> Any:
    """Return a PrimFunc calling ``hwcomp_q8_elementwise`` (hwcomp_q8.c) on a, b, the table."""
    import tvm

    flags = (_C_FLAGS[in_dtype][0] | _C_FLAGS[steps.y_dtype][1]
             | (_ADD_FLAG if steps.b_q is not None else 0) | (_MEAN_FLAG if steps.mean else 0)
             | (_CLAMP_FLAG if (steps.low, steps.high) != (-FLT_MAX, FLT_MAX) else 0))
    suffix = _C_SUFFIX[in_dtype] + _C_SUFFIX[steps.y_dtype]
    channels = int(np.prod(shape[:2])) if steps.mean else int(np.prod(shape))
    plane = int(np.prod(shape[2:])) if steps.mean else 1
    out_shape = steps.y_shape

    b_arg = "B.data" if steps.b_q is not None else "A.data"
    b_param = f'B: T.Buffer({tir_shape(shape)}, "{in_dtype}"), ' if steps.b_q is not None else ""
    source = (
        "@T.prim_func\n"
        f'def main(A: T.Buffer({tir_shape(shape)}, "{in_dtype}"), {b_param}'
        f'Tab: T.Buffer((T.int64({steps.table.size}),), "float32"), '
        f'Y: T.Buffer({tir_shape(out_shape)}, "{steps.y_dtype}")):\n'
        '    T.func_attr({"tirx.noalias": True})\n'
        f'    T.call_extern("int32", "hwcomp_q8_elementwise_{suffix}", A.data, {b_arg}, '
        f"Tab.data, Y.data, {channels}, {plane}, T.float32({float(plane)!r}), "
        f"T.float32({steps.y_scale!r}), T.float32({steps.low!r}), T.float32({steps.high!r}), "
        f"{steps.y_zp}, {flags})\n")
    func = tvm.script.from_source(source).with_attr("tirx.is_scheduled", True)
    # Each element is read only to write the same element: the output may take a's place.
    return func if steps.mean else func.with_attr("hwcomp.in_place", True)


def _max_pool(mutator: Any, quantize: Any) -> tuple[Any, Any, np.ndarray | _FloatSteps] | None:
    """Match ``quantize(max_pool2d(act(dequantize(x_q) | dequantize(a) + dequantize(b))))``.

    Max commutes with every monotone step (dequantize, ReLU / Clip, quantize), so the pool
    runs on 8-bit values: of ``x_q`` through a 256-entry table of the steps, as the QDQ
    graph computes them in float (returned: x_q, the pool, the table); or, after an add, of
    the add's quantized result (returned: the add's operand a, the pool, its steps, whose
    output takes the pool's quantization). NCHW, batch 1, no ceil mode.
    """
    pool = bound(mutator, quantize.args[0])
    if not is_op(pool, "relax.nn.max_pool2d"):
        return None
    attrs = pool.attrs
    if (attrs.layout != "NCHW" or attrs.out_layout != "NCHW" or bool(attrs.ceil_mode)
            or len(shape_of(pool)) != 4 or shape_of(pool)[0] != 1):
        return None
    y = _scalar_params(mutator, *quantize.args[1:])
    chain = _activation_chain(mutator, bound(mutator, pool.args[0]))
    out_dtype = str(quantize.attrs.out_dtype)
    if y is None or chain is None or out_dtype not in _LIMITS:
        return None
    steps, dq = chain
    if not is_op(dq, "relax.dequantize"):
        inner = _float_steps_of(mutator, bound(mutator, pool.args[0]), y, out_dtype,
                                shape_of(pool.args[0]))
        return None if inner is None or inner.mean else (inner.a_q, pool, inner)
    x_q = bound(mutator, dq.args[0])
    params = _scalar_params(mutator, *dq.args[1:])
    in_dtype = dtype_of(x_q)
    if params is None or in_dtype not in _LIMITS:
        return None
    table = quantize_like_onnx(_apply_steps(_dequantized(in_dtype, *params), steps), y[0], y[1],
                       out_dtype)
    return dq.args[0], pool, table


def maxpool_kernel(in_shape: tuple[int, ...], out_shape: tuple[int, ...], attrs: Any,
                   in_dtype: str, out_dtype: str) -> Any:
    """Return a PrimFunc calling ``hwcomp_q8_maxpool`` (hwcomp_q8.c)."""
    import tvm

    _, channels, height, width = in_shape
    kh, kw = (int(v) for v in attrs.pool_size)
    (sh, sw), (dh, dw) = ((int(v) for v in attrs.strides), (int(v) for v in attrs.dilation))
    top, left = int(attrs.padding[0]), int(attrs.padding[1])
    flags = _C_FLAGS[in_dtype][0] | _C_FLAGS[out_dtype][1]
    suffix = _C_SUFFIX[in_dtype] + _C_SUFFIX[out_dtype]

    source = (
        "@T.prim_func\n"
        f'def main(X: T.Buffer({tir_shape(in_shape)}, "{in_dtype}"), '
        f'Tab: T.Buffer((T.int64(256),), "{out_dtype}"), '
        f'Y: T.Buffer({tir_shape(out_shape)}, "{out_dtype}")):\n'
        f'    T.call_extern("int32", "hwcomp_q8_maxpool_{suffix}", X.data, Tab.data, Y.data, '
        f"{channels}, {height}, {width}, {kh}, {kw}, {sh}, {sw}, {dh}, {dw}, {top}, {left}, "
        f"{out_shape[2]}, {out_shape[3]}, {flags})\n")
    return tvm.script.from_source(source).with_attr("tirx.is_scheduled", True)


def _is_layer_op(expr: Any) -> bool:
    return is_op(expr, "relax.nn.conv2d") or is_op(expr, "relax.matmul")


def _op_name(op: Any) -> str:
    return str(op.op.name).split(".")[-1]
