"""The Relax rewrite that puts conv2d / matmul with constant weights on hwcomp's CPU kernels.

int8 runs on the target's dot-product instruction: x86 VNNI ``vpdpbusd`` (u8 x s8) or Arm
``sdot`` (s8 x s8), accumulating into int32. fp32 runs as register-tiled FMAs over vector
lanes. Both replace what TVM's untuned lowering would run (scalar loops, one thread).

TVM's Relax frontend imports a QDQ model as float: ``dequantize`` feeding a float conv or
matmul. :func:`rewrite_kernels` finds those, and where the activation is quantized
per tensor and the weight is a constant quantized per output channel with zero point 0, it
replaces the float operation by

    acc = X_q (x) W_q                    (int32, one of the kernels below)
    y   = float(acc - zp_x * sum_k W_q) * (scale_x * scale_w)

which is the float result onnxruntime's QDQ execution approximates, computed with integer
multiply-accumulates. The bias add, activation and the next ``quantize`` stay as Relax ops and
TVM fuses them into one elementwise pass after the kernel.

Float conv2d (groups 1) and matmul whose weight is a constant get the same structure in fp32.

Each kernel is one TIR function: (for convolution) a padded NHWC copy (padding with the
input's zero point) read as an implicit im2col matrix, then a matmul against weights packed as
``[N/L, K/G, L, G]``. For int8 the innermost ``L x 4`` block (G = 4) is one dot-product
instruction (``L`` = 16 int32 lanes for AVX-512 VNNI, 4 for NEON ``sdot``; the 4-element
reduction is contiguous in both operands, which is what the instructions read). For fp32
(G = 1) the L lanes are one vector FMA.
"""


from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hwcomp.lower.cpu.kernels.compute import (
    batch_matmul_kernel,
    concat_kernel,
    conv_kernel,
    conv_nchw_fits,
    conv_nchw_kernel,
    conv_nchw_weight,
    conv_weight_matrix,
    depthwise_fits,
    depthwise_kernel,
    depthwise_nhwc_kernel,
    matmul_kernel,
    merge_groups,
    pack_weight,
    pointwise_fits,
    pointwise_kernel,
    to_nchw_kernel,
)
from hwcomp.lower.cpu.kernels.conv_forms import (
    CONV1D,
    CONV_TRANSPOSE,
    ConvGeometry,
    conv1d_form,
    conv2d_geometry,
    conv_transpose_form,
    nhwc,
)
from hwcomp.lower.cpu.kernels.spec import fma_spec
from hwcomp.lower.cpu.kernels.tiling import (
    conv_rows,
    depthwise_pixels,
    matmul_columns,
    pow2_tile,
)
from hwcomp.lower.cpu.kernels.winograd import (
    POSITIONS,
    winograd_fits,
    winograd_gemm_kernel,
    winograd_input_kernel,
    winograd_output_kernel,
    winograd_tiles,
    winograd_weight,
)
from hwcomp.lower.kernel_spec import KernelRewrite, KernelSpec, layer_macs, round_up
from hwcomp.lower.relax_match import (
    bound,
    dtype_of,
    is_op,
    layer_operands,
    min_max_op,
    mutate_functions,
    relax_array,
    scalar_value,
    shape_of,
)

logger = logging.getLogger(__name__)


def rewrite_kernels(mod: Any, instruction: KernelSpec | None,
                    floats: KernelSpec) -> tuple[Any, KernelRewrite]:
    """Replace conv2d/matmul with constant weights by hwcomp's kernels.

    int8 (dequantized int8 operands) on ``instruction`` where the target has a dot-product
    instruction (None: it has none, and quantized layers stay float), fp32 on ``floats``.
    """
    rewriter = _make_rewriter(mod, instruction, floats)
    new_mod = mutate_functions(rewriter, mod)
    from tvm import relax

    new_mod = relax.transform.DeadCodeElimination()(new_mod)
    summary = KernelRewrite(instruction.name if instruction else None, rewriter.rewritten,
                            rewriter.float_ops, rewriter.kept_float, rewriter.emitter.macs)
    logger.info("hwcomp kernels: %d int8 op(s)%s, %d fp32 op(s); %d quantized op(s) in float",
                len(summary.rewritten), f" on {summary.instruction}" if instruction else "",
                len(summary.float_ops), len(summary.kept_float))
    return new_mod, summary


def to_channels_last(mod: Any) -> Any:
    """Return ``mod`` with its fp32 2-D convolutions in NHWC and the ops between them too.

    onnxruntime keeps activations channels-blocked between its convolutions (NCHWc); hwcomp's
    kernels kept NCHW, so every convolution copied its input to padded NHWC and stored its
    register tiles (channels in lanes) transposed, and depthwise convolutions ran on rows of
    pixels. TVM's ConvertLayout turns each conv2d's data to NHWC (weights stay OIHW: the
    kernels pack them) and carries the layout through the elementwise ops, pools, reductions
    and concatenations after it, transposing back only where an op cannot follow (the model's
    input and output, a reshape). Models with int8 tensors keep NCHW (the int8 kernels read
    NCHW).
    """
    from tvm import relax

    if _keeps_nchw(mod):
        return mod
    # A transposed convolution keeps NCHW: its sub-pixel form (conv_forms) is written for it.
    converted = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OIHW"],
                                               CONV_TRANSPOSE: ["NCHW", "IOHW"]})(
        _clip_as_min_max(mod))
    return relax.transform.FoldConstant()(converted)


def _clip_as_min_max(mod: Any) -> Any:
    """Return ``mod`` with each ``clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``.

    ConvertLayout has no layout rule for clip (ReLU6, hard sigmoid, hard swish) and wrapped
    every one in a transpose to NCHW and back; the binary ops follow any layout, and TVM fuses
    them into the kernel's store as it fused the clip. The same holds for the ``call_tir`` of
    a maximum / minimum PrimFunc the ONNX frontend emits for a Clip whose bounds are inputs
    (opset 11 on): each becomes the Relax op with its scalar bound (MobileNetV2's 35 ReLU6s
    ran as separate transpose-clamp-transpose passes, a fifth of its time).
    """
    from tvm import relax
    from tvm_ffi import structural_equal

    @relax.expr_functor.mutator
    class ClipMutator(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            which = min_max_op(call) if is_op(call, "relax.call_tir") else None
            if which is not None:
                return self._bound_op(call, which)
            if getattr(call.op, "name", "") != "relax.clip":
                return call
            dtype = dtype_of(call)
            if not dtype.startswith("float"):
                return call
            low, high = (float(arg.value) for arg in call.args[1:3])
            floor = relax.op.maximum(call.args[0], relax.const(low, dtype))
            return relax.op.minimum(self.builder_.emit(floor), relax.const(high, dtype))

        def _bound_op(self, call: Any, which: str) -> Any:
            dtype = dtype_of(call)
            first, second = call.args[1].fields
            for other, const in ((first, second), (second, first)):
                value = scalar_value(self, const)
                # The other operand must be the result's whole tensor (no broadcast to undo).
                if (value is not None and dtype.startswith("float")
                        and dtype_of(other) == dtype
                        and structural_equal(other.ty.shape, call.ty.shape)):
                    op = relax.op.maximum if which == "max" else relax.op.minimum
                    return op(other, relax.const(value, dtype))
            return call

    return mutate_functions(ClipMutator(mod), mod)


def _keeps_nchw(mod: Any) -> bool:
    """Whether ``mod`` stays NCHW.

    It does where it holds an 8-bit integer tensor (a quantized model: the int8 kernels read
    NCHW) or a conv2d whose input is not a static batch of 1.
    """
    from tvm import relax

    found = False
    convs: list[Any] = []

    def visit(expr: Any) -> None:
        nonlocal found
        info = getattr(expr, "ty", None)
        if isinstance(info, relax.TensorType) and str(info.dtype) in ("int8", "uint8"):
            found = True
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            convs.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    if found:
        return True
    try:
        return any(shape_of(call.args[0])[0] != 1 for call in convs)
    except (TypeError, ValueError, AttributeError):  # a symbolic dimension
        return True


def _make_rewriter(mod: Any, instruction: KernelSpec | None, floats: KernelSpec) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.rewritten: list[str] = []
            self.float_ops: list[str] = []
            self.kept_float: list[str] = []
            self.emitter = _KernelCalls(self)

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name in (CONV1D, CONV_TRANSPOSE) and dtype_of(call) == "float32":
                return self.conv_form(call, name)
            if name == "relax.concat":
                return self.concat(call)
            if name not in ("relax.nn.conv2d", "relax.matmul"):
                return call
            operands = _quantized_operands(self, call, instruction)
            if isinstance(operands, str):
                self.kept_float.append(operands)
                return call
            if operands is not None and instruction is not None:
                x_q, zp_x, scale_x, w_q, scale_w = operands
                acc, column_sums, shape = self.emitter.lower(call, x_q, w_q, zp_x, instruction)
                self.rewritten.append(f"{name.split('.')[-1]} {shape}")
                correction, scale = zp_x * column_sums, np.float32(scale_x) * scale_w
                if name == "relax.nn.conv2d":
                    correction = correction.reshape(1, -1, 1, 1)
                    scale = scale.reshape(1, -1, 1, 1)
                emit = self.builder_.emit
                acc = emit(relax.op.subtract(acc, relax.const(correction.astype(np.int32))))
                out = emit(relax.op.astype(acc, "float32"))
                return relax.op.multiply(out, relax.const(scale.astype(np.float32)))
            weight = _float_weight(self, call)
            if weight is None and name == "relax.matmul":
                return self.activation_matmul(call)
            if weight is None:
                return call
            if name == "relax.matmul":
                out, _, shape = self.emitter.lower(call, call.args[0], weight, 0, floats)
                self.float_ops.append(f"matmul {shape}")
                return out
            return self.float_conv(call, call.args[0], weight, conv2d_geometry(call), "conv2d")

        def concat(self, call: Any) -> Any:
            """Put a concatenation of 3 or more inputs along the innermost axis on copy loops.

            TVM's is an if-then-else chain per element (see :func:`concat_kernel`); along
            another axis the chain is per row, and two inputs cost one select: those stay.
            """
            fields = call.args[0]
            if not isinstance(fields, relax.Tuple) or len(fields.fields) < 3:
                return call
            try:
                shapes = [shape_of(field) for field in fields.fields]
                out_shape = shape_of(call)
            except (TypeError, ValueError, AttributeError):  # symbolic or not a tensor
                return call
            rank = len(out_shape)
            if rank < 2 or int(call.attrs.axis) % rank != rank - 1:
                return call
            dtype = dtype_of(call)
            rows = int(np.prod(out_shape[:-1], dtype=np.int64))
            widths = tuple(shape[-1] for shape in shapes)
            if any(width == 0 for width in widths):
                return call
            lanes = max(1, floats.lanes * 4 // np.dtype(dtype).itemsize)
            parallel = rows * out_shape[-1] >= _MIN_PARALLEL_CONCAT
            kernel = self.emitter.kernel(
                ("concat", rows, widths, dtype, lanes, parallel),
                lambda: concat_kernel(rows, widths, dtype, lanes, parallel))
            emit = self.builder_.emit
            flat = [emit(relax.op.reshape(field, (rows, width)))
                    for field, width in zip(fields.fields, widths, strict=True)]
            out = emit(relax.op.call_tir(kernel, flat, relax.TensorType((rows, sum(widths)),
                                                                         dtype)))
            return relax.op.reshape(out, out_shape)

        def activation_matmul(self, call: Any) -> Any:
            """Put a matmul of two fp32 activations (attention) on the batched kernel, if it fits.

            TVM's generic schedule ran attention's context matmul (6 heads, 128 tokens) at
            1.7 GMAC/s on one AVX-512 core, the kernel at 100.
            """
            batch = _batched_matmul(call)
            if batch is None:
                return call
            out = self.emitter.batch_matmul(call.args[0], call.args[1], batch, floats)
            self.float_ops.append(f"matmul {shape_of(call)}: batched activation kernel")
            return out

        def float_conv(self, call: Any, data: Any, weight: np.ndarray, geometry: ConvGeometry,
                       op: str, finish: Any = None) -> Any:
            """Put an fp32 convolution on a kernel; record which (or why none) for the manifest."""
            lowered = self.emitter.conv(data, weight, geometry, 0, floats)
            label = lowered if isinstance(lowered, str) else lowered[1]
            self.float_ops.append(f"{op} {shape_of(call)}: {label}")
            if isinstance(lowered, str):
                return call
            return lowered[0] if finish is None else finish(lowered[0])

        def conv_form(self, call: Any, name: str) -> Any:
            """Rewrite a 1-D or transposed convolution as the 2-D one the kernels run."""
            from tvm.ir.expr import Constant

            weight = bound(self, call.args[1])
            op = name.split(".")[-1]
            if not isinstance(weight, Constant) or dtype_of(weight) != "float32":
                self.float_ops.append(f"{op} {shape_of(call)}: generic schedule (weight is not "
                                      "a float32 constant)")
                return call
            array = relax_array(weight)
            form = (conv1d_form(call, array) if name == CONV1D
                    else conv_transpose_form(call, array))
            if isinstance(form, str):
                self.float_ops.append(f"{op} {shape_of(call)}: {form}")
                return call
            data = call.args[0]
            if form.data_shape != shape_of(data):  # a 1-D input viewed as one row
                data = self.builder_.emit(relax.op.reshape(data, form.data_shape))
            return self.float_conv(call, data, form.weight, form.geometry, op,
                                   lambda out: form.finish(self.builder_, out))

    return Rewriter(mod)


class _KernelCalls:
    """Emits hwcomp's kernels (each built once per shape) and the calls to them into a block.

    Attributes:
        mutator: The Relax mutator rewriting the module (its block builder takes the calls).
        kernels: The kernel functions added so far, by their shape key.

    """

    def __init__(self, mutator: Any) -> None:
        self.mutator = mutator
        self.kernels: dict[tuple[Any, ...], Any] = {}
        self.macs: dict[str, int] = {}  # a layer kernel's multiply-adds, by its name

    @property
    def builder(self) -> Any:
        """The mutator's block builder."""
        return self.mutator.builder_

    def _kernel(self, key: tuple[Any, ...], make: Any, pattern: int = 8, macs: int = 0) -> Any:
        var = self._new_kernel(key, make, pattern)
        if macs:
            self.macs[var.name_hint] = macs
        return var

    def _new_kernel(self, key: tuple[Any, ...], make: Any, pattern: int) -> Any:
        if key not in self.kernels:
            name = f"hwcomp_kernel_{len(self.kernels)}"
            func = make()
            if pattern != 8:
                # Injective (2) or output-elementwise-fusable (4), private, unscheduled:
                # FuseOps merges it with the elementwise ops after it and the default rule
                # schedules the result.
                func = func.without_attr("global_symbol").with_attr("op_pattern", pattern)
            else:
                # Opaque (op pattern 8): FuseOps must not merge a scheduled kernel with its
                # neighbours.
                func = func.with_attrs({"global_symbol": name, "op_pattern": 8,
                                        "tirx.is_scheduled": True})
            self.kernels[key] = self.builder.add_func(func, name)
        return self.kernels[key]

    def lower(self, call: Any, data: Any, weight: np.ndarray, zero_point: int,
              spec: KernelSpec) -> tuple[Any, np.ndarray, tuple[int, ...]]:
        """Emit the int8 kernel call; return (output in the op's layout, weight sums, shape).

        fp32 convolutions go through :meth:`conv`.
        """
        if call.op.name == "relax.nn.conv2d":
            geometry = conv2d_geometry(call)
            lowered = self.conv(data, weight, geometry, zero_point, spec)
            assert not isinstance(lowered, str)  # int8 convs are plain (groups 1): always fit
            sums = weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1)
            return lowered[0], sums, geometry.out_shape
        return self._matmul(data, weight, spec)

    def conv(self, data: Any, weight: np.ndarray, geometry: ConvGeometry, zero_point: int,
             spec: KernelSpec) -> tuple[Any, str] | str:
        """Emit the kernel call of a convolution; return (its output, the kernel's name).

        A string instead says why no kernel takes it (the op then keeps TVM's schedule).
        """
        from tvm import relax

        g = geometry
        shape, out_shape, out_channels = g.data_shape, g.out_shape, weight.shape[0]
        macs = layer_macs(weight.shape, out_shape)
        kernel, strides, padding, dilation = g.kernel, g.strides, g.padding, g.dilation
        one_d = len(out_shape) == 3
        if g.channels_last:
            return self._channels_last(data, weight, g, spec, macs)
        if g.groups > 1:
            if spec.intrin:
                return "generic schedule (grouped int8 conv: no dot-product kernel)"
            if weight.shape[1] == 1 and out_channels == g.groups:
                if not depthwise_fits(shape, out_shape, kernel, strides, padding, spec):
                    return "depthwise window schedule"
                matrix = weight.reshape(out_channels, -1)
                return self._fused(
                    ("depthwise", shape, kernel, strides, padding, dilation, len(out_shape)),
                    lambda: depthwise_kernel(shape, kernel, strides, padding, dilation, spec,
                                             len(out_shape)),
                    "depthwise NCHW kernel, fused epilogue", data, pack_weight(matrix, spec),
                    out_shape, macs)
            return self._grouped(data, weight, g, spec, macs)
        if not one_d and pointwise_fits(shape, out_channels, kernel, strides, padding, spec):
            return self._pointwise(data, weight, shape, out_shape, spec)
        if conv_nchw_fits(shape, out_shape, out_channels, spec):
            return self._fused(
                ("conv_nchw", shape, kernel, out_channels, strides, padding, dilation,
                 len(out_shape)),
                lambda: conv_nchw_kernel(shape, kernel, out_channels, strides, padding,
                                         dilation, spec, out_rank=len(out_shape)),
                "NCHW kernel, fused epilogue", data, conv_nchw_weight(weight, spec), out_shape,
                macs)
        pixels = int(np.prod(out_shape[2:]))
        rows = conv_rows(out_shape[0] * pixels, out_channels, spec)
        cols_pad = round_up(out_channels, spec.lanes)
        key = ("conv", spec.name, shape, kernel, out_channels, strides, padding, dilation,
               zero_point)
        kernel_var = self._kernel(key, lambda: conv_kernel(
            shape, kernel, out_channels, strides, padding, dilation, zero_point, spec),
            macs=macs)
        packed = relax.const(pack_weight(conv_weight_matrix(weight, spec), spec))
        emit = self.builder.emit
        acc = emit(relax.op.call_tir(kernel_var, [data, packed],
                                     relax.TensorType((rows, cols_pad),
                                                      spec.accumulator_dtype)))
        layout = self._kernel(
            ("to_nchw", spec.accumulator_dtype, out_shape, rows, cols_pad),
            lambda: to_nchw_kernel(out_shape, rows, cols_pad, spec.accumulator_dtype),
            pattern=2)
        # Not emitted here: bound to the conv's own variable, the call stays adjacent to
        # its bias/activation and FuseOps can merge them (an alias binding stops it).
        acc = relax.op.call_tir(layout, [acc], relax.TensorType(
            out_shape, spec.accumulator_dtype))
        return acc, "pixel-row kernel, return to NCHW fused with the epilogue"

    def _channels_last(self, data: Any, weight: np.ndarray, g: ConvGeometry, spec: KernelSpec,
                       macs: int) -> tuple[Any, str] | str:
        """Emit the kernel call of an NHWC convolution (OIHW weights); or say why none.

        A 1x1 convolution on a 1x1 map (squeeze-excite) is a matmul; a depthwise one runs
        channels in the widest vector that divides them; a grouped one and any other of batch
        1 run the conv kernels reading and writing NHWC (each tile's channels are stored
        contiguously). A 1x1 stride-1 conv without padding reads its input in place (its
        pixels are the GEMM's rows), the others through a padded copy, a contiguous one. A
        stride-1 3x3 conv with enough channels runs as Winograd F(2x2, 3x3)
        (:mod:`~hwcomp.lower.cpu.kernels.winograd`: 2.25x fewer multiplies).
        Against matmuls over the pixel rows with the bias and activation as a pass of their
        own (and a slice where the channels are not whole vectors), the 1x1 kernel with its
        epilogue in the store measured MnasNet 0.94x the time, SqueezeNet 0.92x, RegNet
        0.96x, EfficientNet 1.00x, MobileNetV2 1.04x (one thread, A/B).
        """
        shape, out_shape, out_channels = g.data_shape, g.out_shape, weight.shape[0]
        kernel, strides, padding, dilation = g.kernel, g.strides, g.padding, g.dilation
        out_nhwc = nhwc(out_shape)
        if (g.groups == 1 and kernel == (1, 1) and strides == (1, 1) and not any(padding)
                and int(np.prod(out_shape[2:])) == 1):
            out, _, _ = self._matmul(data, weight.reshape(out_channels, -1), spec)
            return out, "NHWC matmul over pixels"
        if shape[0] != 1 or spec.intrin:
            return "generic schedule (NHWC conv with batch > 1)"
        if g.groups > 1 and weight.shape[1] == 1 and out_channels == g.groups:
            # Channels in vector lanes: the widest vector that divides them (72 channels run
            # 8 lanes on AVX-512; TVM's window schedule on them ran 8 GMAC/s, a sixth of this).
            lanes = pow2_tile(shape[1], spec.lanes)
            if lanes < min(4, spec.lanes):
                return "depthwise window schedule (NHWC, channels not in whole vectors)"
            narrow = spec if lanes == spec.lanes else fma_spec(lanes)
            return self._fused(
                ("depthwise_nhwc", shape, kernel, strides, padding, dilation, lanes),
                lambda: depthwise_nhwc_kernel(shape, kernel, strides, padding, dilation,
                                              narrow, depthwise_pixels(spec)),
                f"depthwise NHWC kernel ({lanes} lanes), fused epilogue", data,
                pack_weight(weight.reshape(out_channels, -1), narrow), out_nhwc, macs)
        if g.groups > 1:
            return self._grouped(data, weight, g, spec, macs)
        if winograd_fits(g, out_channels, spec):
            return self._winograd(data, weight, g, spec, macs)
        if not conv_nchw_fits(shape, out_shape, out_channels, spec):
            return "generic schedule (NHWC conv of one output pixel)"
        return self._fused(
            ("conv_nhwc", shape, kernel, out_channels, strides, padding, dilation),
            lambda: conv_nchw_kernel(shape, kernel, out_channels, strides, padding, dilation,
                                     spec, channels_last=True),
            "NHWC kernel, fused epilogue", data, conv_nchw_weight(weight, spec), out_nhwc, macs)

    def _winograd(self, data: Any, weight: np.ndarray, g: ConvGeometry, spec: KernelSpec,
                  macs: int) -> tuple[Any, str]:
        """Emit a stride-1 3x3 NHWC conv as Winograd F(2x2, 3x3): three kernels (see its module)."""
        from tvm import relax

        shape, out_channels = g.data_shape, weight.shape[0]
        channels = shape[1]
        _, _, tiles_h, tiles_w = winograd_tiles(shape, g.padding, g.dilation)
        emit = self.builder.emit
        source = self._kernel(("winograd_input", shape, g.padding, g.dilation, spec.lanes),
                              lambda: winograd_input_kernel(shape, g.padding, g.dilation,
                                                            spec.lanes))
        v = emit(relax.op.call_tir(source, [data], relax.TensorType(
            (1, tiles_h, tiles_w, POSITIONS * channels), "float32")))
        gemm = self._kernel(("winograd_gemm", tiles_h, tiles_w, channels, out_channels,
                             spec.lanes),
                            lambda: winograd_gemm_kernel(tiles_h, tiles_w, channels,
                                                         out_channels, spec),
                            pattern=4, macs=macs)
        packed = relax.const(pack_weight(winograd_weight(weight), spec))
        m = emit(relax.op.call_tir(gemm, [v, packed], relax.TensorType(
            (1, tiles_h, tiles_w, POSITIONS * out_channels), "float32")))
        result = self._kernel(("winograd_output", shape, g.padding, g.dilation, out_channels),
                              lambda: winograd_output_kernel(shape, g.padding, g.dilation,
                                                             out_channels),
                              pattern=4)
        # Not emitted: bound to the conv's own variable, it fuses with the ops after it.
        out = relax.op.call_tir(result, [m], relax.TensorType(nhwc(g.out_shape), "float32"))
        return out, "Winograd F(2x2, 3x3) NHWC kernels, fused epilogue"

    def _grouped(self, data: Any, weight: np.ndarray, g: ConvGeometry, spec: KernelSpec,
                 macs: int) -> tuple[Any, str] | str:
        """Emit a grouped convolution's call (NCHW or NHWC); or say why it has no kernel."""
        shape, out_shape, out_channels = g.data_shape, g.out_shape, weight.shape[0]
        merged, narrow = merge_groups(weight, g.groups, spec.lanes), spec
        # Groups that no merge makes whole vectors of (RegNetY's 13 or 55 groups of 8 on
        # AVX-512: a merge of 2 does not divide them) run narrower vectors, down to 8 lanes:
        # TVM's generic schedule took 2.7x the time of the whole network's other convs.
        lanes = spec.lanes // 2
        while merged is None and spec == fma_spec(spec.lanes) and lanes >= 8:
            merged, narrow = merge_groups(weight, g.groups, lanes), fma_spec(lanes)
            lanes //= 2
        if merged is None:
            return (f"generic schedule ({out_channels // g.groups} output channels per "
                    f"group: no whole vectors of {spec.lanes} within 4 merged groups)")
        weight, groups = merged
        if not conv_nchw_fits(shape, out_shape, out_channels, narrow, groups):
            return "generic schedule (grouped conv with batch > 1)"
        merge = g.groups // groups
        layout = "NHWC" if g.channels_last else "NCHW"
        return self._fused(
            ("conv_grouped", layout, shape, g.kernel, out_channels, g.strides, g.padding,
             g.dilation, groups, len(out_shape), narrow.lanes),
            lambda: conv_nchw_kernel(shape, g.kernel, out_channels, g.strides, g.padding,
                                     g.dilation, narrow, groups, len(out_shape),
                                     g.channels_last),
            f"grouped {layout} kernel ({groups} groups"
            + (f", {merge} merged" if merge > 1 else "")
            + (f", {narrow.lanes} lanes" if narrow is not spec else "") + "), fused epilogue",
            data, pack_weight(conv_weight_matrix(weight, narrow), narrow),
            nhwc(out_shape) if g.channels_last else out_shape, macs)

    def kernel(self, key: tuple[Any, ...], make: Any) -> Any:
        """Add a scheduled (opaque) kernel once per ``key``; return its global variable."""
        return self._kernel(key, make)

    def batch_matmul(self, a: Any, b: Any, sizes: tuple[int, int, int, int],
                     spec: KernelSpec) -> Any:
        """Emit :func:`batch_matmul_kernel` on ``a`` and ``b`` viewed as 3-D; the op's shape out."""
        from tvm import relax

        batch, rows, depth, cols = sizes
        out_shape = (*shape_of(a)[:-1], cols)
        emit = self.builder.emit
        kernel_var = self._kernel(("batch_matmul", spec.name, spec.lanes, *sizes),
                                  lambda: batch_matmul_kernel(batch, rows, depth, cols, spec),
                                  macs=batch * rows * depth * cols)
        a3 = emit(relax.op.reshape(a, (batch, rows, depth)))
        b3 = emit(relax.op.reshape(b, (batch, depth, cols, 1)))
        out = emit(relax.op.call_tir(kernel_var, [a3, b3],
                                     relax.TensorType((batch, rows, cols), "float32")))
        return relax.op.reshape(out, out_shape)

    def _pointwise(self, data: Any, weight: np.ndarray, shape: tuple[int, ...],
                   out_shape: tuple[int, ...], spec: KernelSpec) -> tuple[Any, str]:
        out_channels = weight.shape[0]
        return self._fused(("pointwise", shape, out_channels),
                           lambda: pointwise_kernel(shape, out_channels),
                           "pointwise NCHW kernel, fused epilogue",
                           data, np.ascontiguousarray(weight.reshape(out_channels, -1)),
                           out_shape, layer_macs(weight.shape, out_shape))

    def _fused(self, key: tuple[Any, ...], make: Any, label: str, data: Any,
               weight: np.ndarray, out_shape: tuple[int, ...], macs: int) -> tuple[Any, str]:
        """Call an fp32 kernel that writes NCHW and takes the ops after it (op pattern 4)."""
        from tvm import relax

        kernel_var = self._kernel(key, make, pattern=4, macs=macs)
        # Not emitted: bound to the conv's own variable, it fuses with the ops after it.
        out = relax.op.call_tir(kernel_var, [data, relax.const(weight)],
                                relax.TensorType(out_shape, "float32"))
        return out, label

    def _matmul(self, data: Any, weight: np.ndarray, spec: KernelSpec
                ) -> tuple[Any, np.ndarray, tuple[int, ...]]:
        from tvm import relax

        # weight is [N, K] here (output channels first), whatever the model's layout.
        shape = shape_of(data)
        depth, cols = shape[-1], weight.shape[0]
        rows = int(np.prod(shape[:-1]))
        depth_pad, cols_pad = round_up(depth, spec.group), matmul_columns(cols, spec)
        emit = self.builder.emit
        flat = emit(relax.op.reshape(data, (rows, depth)))
        if depth_pad != depth:
            flat = emit(relax.op.nn.pad(flat, [0, 0, 0, depth_pad - depth]))
        kernel_var = self._kernel(("matmul", spec.name, rows, depth, cols),
                                  lambda: matmul_kernel(rows, depth, cols, spec),
                                  macs=rows * depth * cols)
        packed = relax.const(pack_weight(weight, spec, cols_pad))
        acc = emit(relax.op.call_tir(kernel_var, [flat, packed],
                                     relax.TensorType((rows, cols_pad),
                                                      spec.accumulator_dtype)))
        if cols_pad != cols:
            acc = emit(relax.op.strided_slice(acc, [1], [0], [cols]))
        acc = emit(relax.op.reshape(acc, (*shape[:-1], cols)))
        sums = weight.astype(np.int64).sum(axis=1)
        return acc, sums, (*shape[:-1], cols)


# A copy of fewer elements than this runs on one thread (waking the pool costs more).
_MIN_PARALLEL_CONCAT = 1 << 15
# Fewer multiply-adds than this stay on the generic schedule (a decoder's one-token step).
_MIN_BATCH_MATMUL_MACS = 1 << 16


def _batched_matmul(call: Any) -> tuple[int, int, int, int] | None:
    """Return (batch, rows, depth, cols) of a matmul of two fp32 activations the kernel runs.

    Both operands static, of one rank (>= 2) and the same batch dimensions (no broadcast),
    at least :data:`_MIN_BATCH_MATMUL_MACS` multiply-adds; None otherwise.
    """
    a, b = call.args[0], call.args[1]
    if dtype_of(a) != "float32" or dtype_of(b) != "float32" or dtype_of(call) != "float32":
        return None
    try:
        a_shape, b_shape = shape_of(a), shape_of(b)
    except (TypeError, ValueError, AttributeError):  # a symbolic dimension
        return None
    if len(a_shape) < 2 or len(a_shape) != len(b_shape) or a_shape[:-2] != b_shape[:-2]:
        return None
    (rows, depth), (depth_b, cols) = a_shape[-2:], b_shape[-2:]
    batch = int(np.prod(a_shape[:-2], dtype=np.int64))
    if depth != depth_b or batch * rows * depth * cols < _MIN_BATCH_MATMUL_MACS:
        return None
    return batch, rows, depth, cols


def _plain_conv(attrs: Any) -> bool:
    """Whether a conv2d is the one the kernels implement: groups 1, NCHW data, OIHW weight."""
    return (int(attrs.groups) == 1 and attrs.data_layout == "NCHW"
            and attrs.kernel_layout == "OIHW")


def _float_weight(mutator: Any, call: Any) -> np.ndarray | None:
    """Return the fp32 weight of a conv2d or matmul, output channels first, if it fits.

    Fits: conv2d in NCHW/OIHW (any groups: :meth:`_KernelCalls.conv` decides), or matmul
    with a constant 2-D weight; None otherwise.
    """
    from tvm.ir.expr import Constant

    _, weight, transposed = layer_operands(mutator, call)
    data = call.args[0]
    if not isinstance(weight, Constant) or dtype_of(data) != "float32" or dtype_of(weight) != "float32":
        return None
    array = relax_array(weight)
    if call.op.name == "relax.nn.conv2d":
        attrs = call.attrs
        if (transposed or attrs.data_layout not in ("NCHW", "NHWC")
                or attrs.out_layout not in ("", None, attrs.data_layout)
                or attrs.kernel_layout != "OIHW"
                or array.ndim != 4 or attrs.out_dtype not in ("", "float32", None)):
            return None
        return array
    if array.ndim != 2 or len(shape_of(data)) < 1:
        return None
    return np.ascontiguousarray(array if transposed else array.T)


def _quantized_operands(
    mutator: Any, call: Any, instruction: KernelSpec | None
) -> tuple[Any, int, float, np.ndarray, np.ndarray] | str | None:
    """Match ``op(dequantize(x_q), dequantize(W_q))`` with W_q constant.

    Returns (x_q, zero point, scale, W_q as [N, ...] output-channel first, per-channel scale),
    a string saying why a quantized op stays in float, or None when it is not quantized.
    """
    from tvm.ir.expr import Constant

    data, weight, transposed = layer_operands(mutator, call)
    if not (is_op(data, "relax.dequantize") and is_op(weight, "relax.dequantize")):
        return None
    op = call.op.name.split(".")[-1]
    x_q, scale_x, zp_x = data.args
    w_q, scale_w, zp_w = (bound(mutator, a) for a in weight.args)
    constants = (scale_x, zp_x, w_q, scale_w, zp_w)
    if not all(isinstance(c, Constant) for c in constants):
        return f"{op}: quantization parameters are not constants"
    if instruction is None:
        return f"{op}: no int8 dot product on this target"
    if dtype_of(x_q) != instruction.activation_dtype or dtype_of(w_q) != "int8":
        return (f"{op}: operands are {dtype_of(x_q)} x {dtype_of(w_q)}; the {instruction.name} "
                f"kernel takes {instruction.activation_dtype} x int8")
    sx, zx = relax_array(scale_x), relax_array(zp_x)
    if sx.size != 1 or zx.size != 1:
        return f"{op}: activation quantized per channel; the kernel needs one scale"
    if np.any(relax_array(zp_w) != 0):
        return f"{op}: weight zero point is not 0"
    weights = relax_array(w_q)
    axis = int(weight.attrs.axis) % max(weights.ndim, 1)
    sw = relax_array(scale_w).astype(np.float32).reshape(-1)
    if op == "conv2d":
        if not _plain_conv(call.attrs) or weights.ndim != 4:
            return "conv2d: grouped or depthwise convolution has no dot-product kernel"
        if sw.size not in (1, weights.shape[0]) or (sw.size > 1 and axis != 0):
            return "conv2d: weight scale is not per output channel"
        return x_q, int(zx.reshape(())), float(sx.reshape(())), weights, _per_channel(
            sw, weights.shape[0])
    if weights.ndim != 2:
        return "matmul: weight is not a 2-D constant"
    # matmul(x, W[K, N]) or matmul(x, permute_dims(W[N, K])): bring W to [N, K].
    matrix = weights if transposed else weights.T
    channel_axis = 0 if transposed else 1
    if sw.size > 1 and axis != channel_axis:
        return "matmul: weight scale is not per output channel"
    return x_q, int(zx.reshape(())), float(sx.reshape(())), np.ascontiguousarray(matrix), (
        _per_channel(sw, matrix.shape[0]))


def _per_channel(scale: np.ndarray, channels: int) -> np.ndarray:
    return np.broadcast_to(scale, (channels,)).astype(np.float32)
