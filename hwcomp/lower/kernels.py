"""hwcomp's CPU kernels for convolution and matmul with constant weights, int8 and fp32.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwcomp.lower.relax_match import (
    bound,
    constant_array,
    dtype_of,
    is_op,
    layer_operands,
    mutate_functions,
    shape_of,
)
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelSpec:
    """The instruction a kernel is built around.

    Attributes:
        name: Instruction, for reports (``vpdpbusd``, ``fma``).
        intrin: Name of its registered TIR tensor intrinsic; empty for plain vector code.
        lanes: Accumulators per instruction (output channels per block).
        activation_dtype: The dtype of the activations it multiplies.
        weight_dtype: The dtype of the weights.
        accumulator_dtype: The dtype it accumulates in.
        group: Reduction elements per lane per instruction (4 for the int8 dot products).
        llvm: The LLVM intrinsic that emits it (int8 only).
        grouped: Whether grouped and depthwise convolutions have a kernel too.

    """

    name: str
    intrin: str
    lanes: int
    activation_dtype: str
    weight_dtype: str = "int8"
    accumulator_dtype: str = "int32"
    group: int = 4
    llvm: str = ""
    grouped: bool = False


VNNI = KernelSpec("vpdpbusd", "hwcomp_vnni_u8s8_16x4", 16, "uint8",
                  llvm="llvm.x86.avx512.vpdpbusd.512")
SDOT = KernelSpec("sdot", "hwcomp_sdot_s8s8_4x4", 4, "int8",
                  llvm="llvm.aarch64.neon.sdot.v4i32.v16i8")
# The CPU families hwcomp has kernels for, with their int8 dot-product instruction.
DOT_INSTRUCTIONS = {"x86": VNNI, "arm-a": SDOT}
# Targets that take C (microcontrollers) get u8 x s8 -> s32 kernels in C with the
# requantization fused (hwcomp/lower/mcu/int8.py), depthwise included. Activations are u8
# because onnxruntime's x86 kernels, the reference, take u8: it converts s8 activations and
# leaves a layer in float where a shared tensor blocks that, and a float layer's rounding
# cannot be matched bit for bit.
C_INT8 = KernelSpec("int8 C kernel", "", 1, "uint8", group=1, grouped=True)

# The rows of A (output pixels) each parallel task computes; 4 keeps A's 4-byte groups and
# the L-lane accumulators in registers without spilling on either ISA.
_ROW_TILE = 4
# The register tile for maps of 7 x 7 (or 7 x 14) pixels, whose rows no 4-row tile divides.
_ODD_ROW_TILE = 7
# Lane blocks (of L output channels) per task: 4 rows x 4 blocks = 16 accumulator registers,
# half of AVX-512's and NEON's 32.
_LANE_BLOCKS = 4


def float_spec(target: Target) -> KernelSpec | None:
    """Return the fp32 kernel spec for ``target``: FMAs over one vector register of lanes."""
    if target.family not in DOT_INSTRUCTIONS:
        return None
    return fma_spec(max(1, target.vector_bits // 32))


def fma_spec(lanes: int) -> KernelSpec:
    """Return the fp32 kernel spec for ``lanes`` fp32 vector lanes (one vector FMA)."""
    return KernelSpec("fma", "", lanes, "float32", "float32", "float32", 1)


def dot_instruction(target: Target) -> KernelSpec | None:
    """Return the instruction hwcomp's int8 kernels use on ``target``, or None (no kernel)."""
    return DOT_INSTRUCTIONS.get(target.family) if target.int8_dot else None


def int8_kernel(target: Target) -> KernelSpec | None:
    """Return hwcomp's int8 kernel for ``target``: a dot-product instruction, C, or None."""
    if target.runtime == "c":
        return C_INT8
    return dot_instruction(target)


def activation_dtype(target: Target) -> str:
    """Return the activation dtype quantization should produce for ``target``'s kernels."""
    instruction = int8_kernel(target)
    return instruction.activation_dtype if instruction else "uint8"


_REGISTERED: set[str] = set()


def register_intrinsic(instruction: KernelSpec, name: str = "", scope: str = "local") -> None:
    """Register the instruction's TIR tensor intrinsic (once per process and name).

    ``name`` defaults to the spec's own; ``scope`` is the accumulator buffer's (hwcomp's
    kernels accumulate in ``local``; MetaSchedule's rules tensorize ``global`` buffers).

    Written here rather than imported: TVM's ``tvm.s_tir.tensor_intrin`` package parses
    hundreds of intrinsics for every backend on import (40 s or more), and its
    ``dot_16x4_vnni`` passes i32 vectors where LLVM 20+ declares ``vpdpbusd`` on
    ``<64 x i8>`` operands, which fails LLVM verification.
    """
    name = name or instruction.intrin
    if name in _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, act = instruction.lanes, instruction.activation_dtype
    bytes_ = lanes * 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), act, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), act, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            word = T.reinterpret(A.vload([0], f"{act}x4"), dtype="int32")
            a_bytes = T.reinterpret(T.broadcast(word, lanes), dtype=f"int8x{bytes_}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instruction.llvm),
                C.vload([0], dtype=f"int32x{lanes}"), a_bytes,
                B.vload([0, 0], dtype=f"int8x{bytes_}"), dtype=f"int32x{lanes}",
            )

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)


def pack_weight(weight: np.ndarray, spec: KernelSpec) -> np.ndarray:
    """Pack an ``[N, K]`` matrix as ``[N/L, K/G, L, G]``, zero-padding N and K."""
    lanes, group = spec.lanes, spec.group
    n, k = weight.shape
    n_pad, k_pad = _round_up(n, lanes), _round_up(k, group)
    padded = np.zeros((n_pad, k_pad), spec.weight_dtype)
    padded[:n, :k] = weight
    return np.ascontiguousarray(
        padded.reshape(n_pad // lanes, lanes, k_pad // group, group).transpose(0, 2, 1, 3)
    )


def matmul_kernel(rows: int, depth: int, cols: int, instruction: KernelSpec) -> Any:
    """``C[rows, cols_pad] = A[rows, depth_pad] x W`` (W packed), register-tiled, parallel."""
    from tvm import te

    depth_pad = _round_up(depth, instruction.group)
    a = te.placeholder((rows, depth_pad), instruction.activation_dtype, name="A")
    c = _matmul_compute(a, rows, depth_pad, cols, instruction)
    return _schedule(te.create_prim_func([a, c.op.input_tensors[1], c]), "C", instruction)


def _matmul_compute(a: Any, rows: int, depth: int, cols: int, spec: KernelSpec) -> Any:
    from tvm import te

    lanes, group, acc = spec.lanes, spec.group, spec.accumulator_dtype
    cols_pad = _round_up(cols, lanes)
    w = te.placeholder((cols_pad // lanes, depth // group, lanes, group), spec.weight_dtype,
                       name="W")
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (rows, cols_pad),
        lambda m, n: te.sum(
            a[m, k].astype(acc) * w[n // lanes, k // group, n % lanes, k % group].astype(acc),
            axis=k,
        ),
        name="C",
    )


def conv_kernel(
    data_shape: tuple[int, ...], kernel: tuple[int, int], out_channels: int,
    strides: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int],
    zero_point: int, instruction: KernelSpec,
) -> Any:
    """NCHW convolution (groups 1) as a matmul over an im2col matrix padded with ``zero_point``.

    The im2col matrix is an expression, not a buffer: the schedule inlines it, and the matmul
    reads the padded NHWC copy of the input. Output: ``[N * OH * OW, OC_pad]`` (int32 or
    fp32); the K axis is ``(kh, kw, c_pad)``, matching :func:`conv_weight_matrix`.
    """
    from tvm import te, tirx

    batch, channels, _, _ = data_shape
    out_h, out_w = conv_output_size(data_shape, kernel, strides, padding, dilation)
    c_pad = _round_up(channels, instruction.group)
    depth = kernel[0] * kernel[1] * c_pad
    dtype = instruction.activation_dtype
    rows = conv_rows(batch * out_h * out_w, out_channels, instruction)
    x = te.placeholder(data_shape, dtype, name="X")
    nhwc = _padded_nhwc(x, data_shape, padding, c_pad, zero_point, tuple)

    def im2col(m: Any, kk: Any) -> Any:
        # Rows past the last output pixel (padding to whole register tiles) repeat it.
        m = tirx.min(m, batch * out_h * out_w - 1)
        n, pix = m // (out_h * out_w), m % (out_h * out_w)
        return _im2col_element(nhwc, n, pix // out_w, pix % out_w, kk, c_pad, kernel, strides,
                               dilation)

    col = te.compute((rows, depth), im2col, name="col")
    c = _matmul_compute(col, rows, depth, out_channels, instruction)
    return _schedule(te.create_prim_func([x, c.op.input_tensors[1], c]), "C", instruction,
                     im2col=(kernel[0] * kernel[1], c_pad))


def conv_output_size(data_shape: tuple[int, ...], kernel: tuple[int, int],
                     strides: tuple[int, int], padding: tuple[int, int, int, int],
                     dilation: tuple[int, int]) -> tuple[int, int]:
    """Return a convolution's output ``(height, width)``."""
    top, left, bottom, right = padding
    return ((data_shape[2] + top + bottom - dilation[0] * (kernel[0] - 1) - 1) // strides[0] + 1,
            (data_shape[3] + left + right - dilation[1] * (kernel[1] - 1) - 1) // strides[1] + 1)


def _padded_nhwc(x: Any, data_shape: tuple[int, ...], padding: tuple[int, int, int, int],
                 c_pad: int, zero_point: int, dims: Any) -> Any:
    """Return the NCHW input ``x`` as a padded NHWC tensor (``dims`` types its shape).

    Spatial padding takes the zero point (it stands for 0.0); padded channels take 0 (their
    weights are 0 too, and the zero-point correction sums real channels only).
    """
    from tvm import te, tirx

    batch, channels, height, width = data_shape
    top, left, bottom, right = padding
    dtype = x.dtype

    def to_nhwc(n: Any, h: Any, w_: Any, ch: Any) -> Any:
        inside = tirx.all(h >= top, h < top + height, w_ >= left, w_ < left + width)
        value = x[n, tirx.min(ch, channels - 1), tirx.max(tirx.min(h - top, height - 1), 0),
                  tirx.max(tirx.min(w_ - left, width - 1), 0)]
        padded = tirx.if_then_else(inside, value, tirx.const(zero_point, dtype))
        return tirx.if_then_else(ch < channels, padded, tirx.const(0, dtype))

    shape = (batch, height + top + bottom, width + left + right, c_pad)
    return te.compute(dims(shape), to_nhwc, name="nhwc")


def _im2col_element(nhwc: Any, n: Any, oh: Any, ow: Any, k: Any, c_pad: int,
                    kernel: tuple[int, int], strides: tuple[int, int],
                    dilation: tuple[int, int]) -> Any:
    """Element ``k`` (K ordered ``(kh, kw, c_pad)``) of output pixel (oh, ow)'s im2col row."""
    tap, ch = k // c_pad, k % c_pad
    return nhwc[n, oh * strides[0] + (tap // kernel[1]) * dilation[0],
                ow * strides[1] + (tap % kernel[1]) * dilation[1], ch]


# hwcomp's default rule recognises a function holding this block (the pointwise kernel and the
# elementwise ops TVM fused after it) and schedules it with :func:`schedule_fused_kernel`.
POINTWISE_BLOCK = "hwcomp_pointwise"


def pointwise_kernel(data_shape: tuple[int, ...], out_channels: int) -> Any:
    """fp32 1x1 stride-1 convolution in NCHW, batch 1: ``Y[OC, HW] = W[OC, C] X[C, HW]``.

    No layout change on either side: the input's channel planes are the matmul's K rows, read
    a vector of pixels at a time, each weight is broadcast to the pixel lanes, and the output
    is NCHW; the NHWC copy, the im2col copy and the return to NCHW of :func:`conv_kernel`
    disappear. Unscheduled and output-elementwise-fusable (op pattern 4, as TVM's own conv2d):
    TVM fuses the bias, activation and residual add after it into the same function, and
    :func:`schedule_fused_kernel` applies them to each register tile as it is stored. Needs
    ``H*W`` to be a whole number of vectors (:func:`pointwise_fits`).
    """
    from tvm import te

    _, channels, height, width = data_shape
    x = te.placeholder(int64_shape(data_shape), "float32", name="X")
    w = te.placeholder(int64_shape((out_channels, channels)), "float32", name="W")
    k = te.reduce_axis((0, te.const(channels, "int64")), "k")
    c = te.compute(int64_shape((1, out_channels, height, width)),
                   lambda n, o, h, w_: te.sum(w[o, k] * x[n, k, h, w_], axis=k),
                   name=POINTWISE_BLOCK)
    return te.create_prim_func([x, w, c])


def schedule_fused_kernel(sch: Any, instruction: KernelSpec) -> bool:
    """Schedule a function holding a kernel that writes NCHW and the elementwise ops after it.

    The kernel is :data:`POINTWISE_BLOCK` or :data:`CONV_BLOCK` (after its padded NHWC
    copy). The ops after it collapse into one block, which is inlined into the store of each
    register tile: bias, activation and residual add cost no pass of their own. Returns False
    (nothing done) for a function without either block, or (with a warning) one whose other
    blocks are not the elementwise tail FuseOps gives an output-fusable op.
    """
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    infos = normalize_prim_func(sch)
    names = [sch.get(info.block_rv).name_hint for info in infos or []]
    kernel = next((name for name in (POINTWISE_BLOCK, CONV_BLOCK) if name in names), None)
    if kernel is None:
        return False
    block = sch.get_sblock(kernel)
    first = 0 if kernel == POINTWISE_BLOCK else 1  # the conv's NHWC copy comes first
    iters = sch.get(block).iter_vars
    # TVM may drop the batch axis (extent 1) from the block's iterators: ([n,] o, h, w, k).
    if (names.index(kernel) != first or any(info.is_reduction() for info in infos[first + 1:])
            or len(iters) not in (4, 5)):
        logger.warning("%s kernel left to the generic schedule: blocks %s", kernel, names)
        return False
    epilogue = [info.block_rv for info in infos[first + 1:]]
    for tail in epilogue[:-1]:
        sch.compute_inline(tail)
    width = int(sch.get(block).writes[0].source.shape[-1])
    # Iterate over (o, p = h * W + w): a register tile is then one rectangle of a 2-D scratch
    # (reindex) rather than a ragged piece of the NCHW map, and the store of each tile can
    # take the NCHW output's place (and the epilogue's) exactly. The pointwise kernel's rows
    # are output channels (each weight broadcast over a vector of pixels); the conv's rows are
    # pixels (each input value broadcast over a vector of output channels).
    def layout(o: Any, h: Any, w: Any, k: Any) -> tuple[Any, ...]:
        pixel = h * width + w
        return (o, pixel, k) if kernel == POINTWISE_BLOCK else (pixel, o, k)

    if len(iters) == 5:
        sch.transform_block_layout(block, lambda n, o, h, w, k: layout(o, h, w, k))
    else:
        sch.transform_block_layout(block, layout)
    sch.reindex(block, ("write", 0))
    copy = sch.get_consumers(block)[0]
    im2col = None
    if kernel == CONV_BLOCK:
        channels = int(sch.get(sch.get_sblock("nhwc")).writes[0].source.shape[-1])
        im2col = (int(sch.get(block).iter_vars[-1].dom.extent) // channels, channels)
    _tile_matmul(sch, block, instruction, im2col, pixels_inner=im2col is not None)
    sch.reverse_compute_inline(copy)
    if epilogue:
        sch.reverse_compute_inline(epilogue[-1])
    return True


# hwcomp's default rule recognises a function holding this block (a fp32 convolution with its
# NCHW output and the elementwise ops TVM fused after it) and schedules it with
# :func:`schedule_fused_kernel`.
CONV_BLOCK = "hwcomp_conv"


def conv_nchw_kernel(
    data_shape: tuple[int, ...], kernel: tuple[int, int], out_channels: int,
    strides: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int],
    spec: KernelSpec,
) -> Any:
    """fp32 convolution (groups 1, batch 1) writing NCHW, its epilogue fusable.

    The computation of :func:`conv_kernel` (a padded NHWC copy read as an implicit im2col
    matrix, weights packed ``[OC/L, K, L, 1]``) with the output in the op's own layout:
    unscheduled and output-elementwise-fusable (op pattern 4), so TVM fuses the bias,
    activation and residual add after it and :func:`schedule_fused_kernel` applies them as
    each tile is stored: no return to NCHW as a pass of its own. Needs
    :func:`conv_nchw_fits`.
    """
    from tvm import te

    channels = data_shape[1]
    out_h, out_w = conv_output_size(data_shape, kernel, strides, padding, dilation)
    depth, lanes = kernel[0] * kernel[1] * channels, spec.lanes
    x = te.placeholder(int64_shape(data_shape), "float32", name="X")
    w = te.placeholder(int64_shape((out_channels // lanes, depth, lanes, 1)), "float32",
                       name="W")
    nhwc = _padded_nhwc(x, data_shape, padding, channels, 0, int64_shape)
    k = te.reduce_axis((0, te.const(depth, "int64")), "k")

    def conv(n: Any, o: Any, oh: Any, ow: Any) -> Any:
        value = _im2col_element(nhwc, n, oh, ow, k, channels, kernel, strides, dilation)
        return te.sum(value * w[o // lanes, k, o % lanes, 0], axis=k)

    c = te.compute(int64_shape((1, out_channels, out_h, out_w)), conv, name=CONV_BLOCK)
    return te.create_prim_func([x, w, c])


def pointwise_fits(data_shape: tuple[int, ...], kernel: tuple[int, int],
                   strides: tuple[int, int], padding: tuple[int, ...], spec: KernelSpec) -> bool:
    """Whether :func:`pointwise_kernel` computes this convolution (the caller checks groups)."""
    batch, _, height, width = data_shape
    # Whole vectors of pixels, in a number of vectors that makes whole 4-vector register tiles:
    # with fewer (a 28x28 map is 49 vectors) each tile is one vector wide, and
    # :func:`conv_nchw_kernel` (pixels as rows) ran such layers 0.66-0.92x the time
    # (512->256 and 128->512 at 28x28, 256->128 at 36x36, 576->96 at 12x12), where at 56x56 and
    # 32x32 this kernel took 0.5-0.8x its time.
    return (not spec.intrin and batch == 1 and kernel == (1, 1) and strides == (1, 1)
            and not any(padding) and height * width % (spec.lanes * _LANE_BLOCKS) == 0)


def conv_nchw_fits(data_shape: tuple[int, ...], out_shape: tuple[int, ...], out_channels: int,
                   spec: KernelSpec) -> bool:
    """Whether :func:`conv_nchw_kernel` computes this convolution (the caller checks groups).

    It needs fp32, batch 1, whole vectors of output channels and whole register tiles of 4
    pixels or, for pixel counts a multiple of 7 (7x7, 14x7 maps), 7; other odd maps keep
    :func:`conv_kernel`'s rows padded to whole tiles.
    """
    pixels = out_shape[2] * out_shape[3]
    return (not spec.intrin and data_shape[0] == 1 and out_channels % spec.lanes == 0
            and (pixels % _ROW_TILE == 0 or pixels % _ODD_ROW_TILE == 0))


# The return to NCHW is the one kernel TVM may fuse with its neighbours: the bias, residual
# add, activation (and, for int8, the rescaling) that follow a convolution join it in one
# pass. hwcomp's default rule recognises the fused function by this block name and applies
# :func:`tile_pixels_by_channels` to it.
LAYOUT_BLOCK = "hwcomp_to_nchw"


def to_nchw_kernel(out_shape: tuple[int, ...], rows: int, cols_pad: int, dtype: str) -> Any:
    """``Y[n, c, h, w] = A[(n, h, w), c]``: a conv kernel's pixel-major rows back to NCHW.

    Unscheduled: an injective function TVM fuses with the elementwise ops after it.
    """
    from tvm import te

    _, _, height, width = int64_shape(out_shape)
    a = te.placeholder(int64_shape((rows, cols_pad)), dtype, name="A")
    y = te.compute(int64_shape(out_shape),
                   lambda n, c, h, w: a[(n * height + h) * width + w, c], name=LAYOUT_BLOCK)
    return te.create_prim_func([a, y])


def int64_shape(dims: tuple[int, ...]) -> tuple[Any, ...]:
    """Shapes as int64, the index type of the Relax-legalised functions a kernel fuses with."""
    from tvm import tirx

    return tuple(tirx.IntImm("int64", int(d)) for d in dims)


def tile_pixels_by_channels(sch: Any, block: Any, lanes: int) -> None:
    """Schedule an NCHW block that reads pixel-major rows: tiles of pixels x channels.

    Tiles are up to ``lanes`` pixels of the flattened ``h * w`` plane (a 7x7 or 14x14 map
    tiles as well as a 56x56 one) by ``lanes`` channels: a tile reads one cache line of each
    of its rows, which stays in L1, and writes one contiguous vector per channel (TVM's
    default order walks the rows a cache line per element).
    """
    *batch, c, h, w = sch.get_loops(block)  # TVM drops a batch loop of extent 1
    channels = sch.get(c).extent.value
    pixels = sch.get(h).extent.value * sch.get(w).extent.value
    tile = max(d for d in range(1, lanes + 1) if pixels % d == 0)
    group = pow2_tile(channels, lanes)
    p_outer, p_inner = sch.split(sch.fuse(h, w), [None, tile])
    c_outer, c_inner = sch.split(c, [None, group])
    sch.reorder(*batch, p_outer, c_outer, c_inner, p_inner)
    sch.parallel(sch.fuse(*batch, p_outer) if batch else p_outer)
    if tile > 1:
        sch.vectorize(p_inner)


def conv_weight_matrix(weight: np.ndarray, spec: KernelSpec) -> np.ndarray:
    """``[OC, C, KH, KW]`` -> ``[OC, KH*KW*C_pad]`` in :func:`conv_kernel`'s K order."""
    oc, channels, kh, kw = weight.shape
    c_pad = _round_up(channels, spec.group)
    padded = np.zeros((oc, kh, kw, c_pad), spec.weight_dtype)
    padded[..., :channels] = weight.transpose(0, 2, 3, 1)
    return padded.reshape(oc, kh * kw * c_pad)


def _schedule(func: Any, block_name: str, instruction: KernelSpec,
              im2col: tuple[int, int] | None = None) -> Any:
    """Return ``func`` with its matmul block ``block_name`` scheduled by :func:`_tile_matmul`."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if im2col is not None:
        sch.compute_inline(sch.get_sblock("col"))
    _tile_matmul(sch, sch.get_sblock(block_name), instruction, im2col)
    return sch.mod["main"]


def _tile_matmul(sch: Any, block: Any, instruction: KernelSpec,
                 im2col: tuple[int, int] | None = None, pixels_inner: bool = False) -> Any:
    """Register-tile the matmul ``block`` (loops m, n, k) and tensorize its inner block.

    Each parallel task owns ``rows x (blocks * L)`` accumulators (a local buffer LLVM keeps in
    vector registers) across the whole K loop, so the inner loop is loads of A elements and W
    vectors feeding one dot-product instruction (int8) or vector FMA (fp32) each. Returns the
    block that stores each tile's accumulators.
    """
    if instruction.intrin:
        register_intrinsic(instruction)
    local = sch.cache_write(block, 0, "local")
    m, n, k = sch.get_loops(block)
    rows = sch.get(m).extent.value
    lane_blocks = sch.get(n).extent.value // instruction.lanes
    block_tile = _block_tile(lane_blocks)
    widest = _widest_row_tile(block_tile)
    row_tile = next(t for t in (widest, 8, _ROW_TILE, 2, 1) if t <= widest and rows % t == 0)
    if row_tile < _ROW_TILE and rows % _ODD_ROW_TILE == 0:
        # A 7x7 map (49 rows) the NCHW conv kernel cannot pad: 7 rows x 4 vectors of 16
        # = 28 accumulators still fit AVX-512's registers; one row per tile would stream
        # every weight once per pixel.
        row_tile = _ODD_ROW_TILE
    depth = sch.get(k).extent.value
    row_bytes = depth * np.dtype(instruction.activation_dtype).itemsize
    weight_bytes = (lane_blocks * instruction.lanes * depth
                    * np.dtype(instruction.weight_dtype).itemsize)
    # Which operand stays in cache while the other streams past it. Where A outweighs the
    # weights (early conv layers, long token sequences) a task keeps a group of rows and every
    # column block's weights stream past them; a convolution runs parallel over row groups
    # only (its rows are read from a window of the padded input). Otherwise (late
    # layers: 14x14 and 7x7 maps with 1-9 MiB of weights) consecutive tasks share one column
    # block's weight panel and rows stream past it: the weights are read from memory once,
    # not once per row group. Within a task, the panel is reused over `tiles` row tiles.
    rows_in_cache = rows * row_bytes >= weight_bytes
    rows_only = im2col is not None and rows_in_cache
    column_tasks = 1 if rows_only else lane_blocks // block_tile
    tiles = _row_tiles_per_task(rows // row_tile, row_tile * row_bytes, column_tasks)
    m_outer, m_tile, m_inner = sch.split(m, [None, tiles, row_tile])
    n_outer, n_block, n_lane = sch.split(n, [None, block_tile, instruction.lanes])
    outer = (m_outer, n_outer) if rows_in_cache else (n_outer, m_outer)
    if instruction.intrin:
        k_outer, k_inner = sch.split(k, [None, instruction.group])
        sch.reorder(*outer, m_tile, k_outer, m_inner, n_block, n_lane, k_inner)
    else:
        k_outer = k
        sch.reorder(*outer, m_tile, k_outer, m_inner, n_block, n_lane)
    # A kernel of a few microseconds runs on one thread: waking the pool costs more.
    parallel = rows * lane_blocks * instruction.lanes * depth >= _MIN_PARALLEL_MACS
    fused = m_outer if rows_only else sch.fuse(*outer)
    if parallel:
        sch.parallel(fused)
    store_at = m_tile
    if im2col is not None:
        # Implicit im2col: the matmul reads A straight from the padded NHWC copy, K split as
        # (tap, channel), so an A element is nhwc[oh + dy, ow + dx, c] with the pixel's base
        # address hoisted out of the K loop, instead of building im2col rows (9x the input,
        # written then read; the caller inlined the im2col expression, if any). K is also
        # blocked: for each tap and block of channels every row tile of the task runs
        # against the same slice of the weight panel, which stays in L1,
        # where a whole-K pass per row tile streamed the panel (up to 600 KiB) from L2 for
        # every 4 pixels. The accumulators go to the task's tile buffer between blocks: a load
        # and a store per block of channels. Both together: ResNet-style and ResNet-50
        # bundles 0.88x and 0.87x the time of the im2col version (A/B, alternating rounds).
        taps, c_pad = im2col
        steps = c_pad // instruction.group
        k_tap, k_channel = sch.split(k_outer, [taps, steps])
        step_bytes = (block_tile * instruction.lanes * instruction.group
                      * np.dtype(instruction.weight_dtype).itemsize)
        k_steps = pow2_tile(steps, max(1, _K_BLOCK_BYTES // step_bytes))
        # A panel that fits L1 needs no blocking, and blocks of a few channels (a 3-channel
        # stem) would store the accumulators every few FMAs.
        if k_steps >= _MIN_K_BLOCK and taps * steps * step_bytes > _L1_BYTES:
            k_block, k_step = sch.split(k_channel, [None, k_steps])
            sch.reorder(k_tap, k_block, m_tile, k_step)
            store_at = fused
        k_outer = k_tap
    sch.reverse_compute_at(local, store_at)
    if pixels_inner:
        # The caller makes this store write NCHW (pixels x channels transposed): with pixels
        # innermost a vector of them is one contiguous store per channel, its elements read
        # across the tile buffer's rows.
        rows_loop, cols_loop = sch.get_loops(local)[-2:]
        sch.reorder(cols_loop, rows_loop)
        extent = sch.get(rows_loop).extent.value
        vec = pow2_tile(extent, instruction.lanes)
        if vec > 1:
            sch.vectorize(sch.split(rows_loop, [None, vec])[1])
    else:
        sch.vectorize(sch.get_loops(local)[-1])
    if not instruction.intrin:  # before decompose: the update block must still be a reduction
        sch.vectorize(n_lane)
    init = sch.decompose_reduction(block, k_outer)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(m_inner)
    sch.unroll(n_block)
    if instruction.intrin:
        sch.tensorize(n_lane, instruction.intrin)
    if im2col is not None:
        # NCHW -> padded NHWC in tiles of 16 pixels x 16 channels: the tile's 16 input rows
        # stay in L1 while it writes 16 contiguous channel vectors.
        nhwc = sch.get_sblock("nhwc")
        *n, h, w, c = sch.get_loops(nhwc)
        width, c_total = sch.get(w).extent.value, sch.get(c).extent.value
        w_tile, c_tile = pow2_tile(width, 16), pow2_tile(c_total, 16)
        w_outer, w_inner = sch.split(w, [None, w_tile])
        c_outer, c_inner = sch.split(c, [None, c_tile])
        sch.reorder(*n, h, w_outer, c_outer, w_inner, c_inner)
        if parallel:
            sch.parallel(sch.fuse(*n, h) if n else h)
        if c_tile > 1:
            sch.vectorize(c_inner)
    return local


# Parallel tasks wanted at least (a few per core, so uneven tasks balance out), and the most
# bytes of A rows one task should touch (about half an L2).
_MIN_TASKS = 8
_TASK_ROW_BYTES = 256 << 10
# Bytes of a weight panel slice a convolution's row tiles share, and the L1 it must stay in
# (the smallest of the CPU profiles': 32 KiB on Zen 4 and Cortex-A72, 48 KiB on Sapphire Rapids).
_K_BLOCK_BYTES = 16 << 10
_L1_BYTES = 32 << 10
_MIN_K_BLOCK = 16
# Multiply-accumulates below which a kernel stays on one thread (~2 us of one core's FMAs;
# a transformer block of 16 tokens x 64 ran 0.043 ms on one thread, 0.08 ms on two).
_MIN_PARALLEL_MACS = 1 << 18


def _row_tiles_per_task(row_tiles: int, tile_bytes: int, column_tasks: int = 1) -> int:
    """Row tiles per parallel task: the largest divisor up to 16 that keeps enough tasks.

    Each row group runs against ``column_tasks`` column blocks in tasks of its own; a task's
    rows of A must stay in cache.
    """
    for tiles in range(16, 1, -1):
        if (row_tiles % tiles == 0 and row_tiles // tiles * column_tasks >= _MIN_TASKS
                and tiles * tile_bytes <= _TASK_ROW_BYTES):
            return tiles
    return 1


def _block_tile(lane_blocks: int) -> int:
    return next(t for t in (_LANE_BLOCKS, 2, 1) if lane_blocks % t == 0)


def _widest_row_tile(block_tile: int) -> int:
    """Narrow outputs (fewer lane blocks) take more rows, keeping ~16 accumulators busy."""
    return _ROW_TILE * _LANE_BLOCKS // block_tile


def conv_rows(pixels: int, out_channels: int, spec: KernelSpec) -> int:
    """Rows of a conv kernel's output: its pixels, padded to whole register tiles.

    Without the padding a 7x7 map (49 rows) would run one row per tile, streaming every
    weight from memory once per output pixel.
    """
    block_tile = _block_tile(_round_up(out_channels, spec.lanes) // spec.lanes)
    return _round_up(pixels, _widest_row_tile(block_tile))


def pow2_tile(extent: int, most: int) -> int:
    """Return the largest power of two up to ``most`` that divides ``extent``."""
    tile = 1
    while tile * 2 <= most and extent % (tile * 2) == 0:
        tile *= 2
    return tile


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class KernelRewrite:
    """What :func:`rewrite_kernels` did: ops on hwcomp's kernels, quantized ops left in float."""

    instruction: str | None
    rewritten: list[str]
    float_ops: list[str]
    kept_float: list[str]


def rewrite_kernels(mod: Any, target: Target) -> tuple[Any, KernelRewrite | None]:
    """Replace conv2d/matmul with constant weights by hwcomp's kernels on CPU targets.

    int8 (dequantized int8 operands) where the target has a dot-product instruction, fp32
    otherwise. Returns the module unchanged (and None) for other families.
    """
    floats = float_spec(target)
    if floats is None:
        return mod, None
    instruction = dot_instruction(target)
    rewriter = _make_rewriter(mod, instruction, floats)
    new_mod = mutate_functions(rewriter, mod)
    from tvm import relax

    new_mod = relax.transform.DeadCodeElimination()(new_mod)
    summary = KernelRewrite(instruction.name if instruction else None, rewriter.rewritten,
                            rewriter.float_ops, rewriter.kept_float)
    logger.info("hwcomp kernels: %d int8 op(s)%s, %d fp32 op(s); %d quantized op(s) in float",
                len(summary.rewritten), f" on {summary.instruction}" if instruction else "",
                len(summary.float_ops), len(summary.kept_float))
    return new_mod, summary


def _make_rewriter(mod: Any, instruction: KernelSpec | None, floats: KernelSpec) -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):  # type: ignore[misc, name-defined]
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.rewritten: list[str] = []
            self.float_ops: list[str] = []
            self.kept_float: list[str] = []
            self.kernels: dict[tuple[Any, ...], Any] = {}
            # The kernels writing NCHW with their epilogue fused, and how the report names them.
            self.fused: dict[Any, str] = {}

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name not in ("relax.nn.conv2d", "relax.matmul"):
                return call
            operands = _quantized_operands(self, call, instruction)
            if isinstance(operands, str):
                self.kept_float.append(operands)
                return call
            if operands is not None and instruction is not None:
                x_q, zp_x, scale_x, w_q, scale_w = operands
                acc, column_sums, shape = self._lower(call, x_q, w_q, zp_x, instruction)
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
            if weight is None:
                return call
            out, _, shape = self._lower(call, call.args[0], weight, 0, floats)
            kernel = out.args[0] if isinstance(out, relax.Call) else None
            self.float_ops.append(f"{name.split('.')[-1]} {shape}{self.fused.get(kernel, '')}")
            return out

        def _kernel(self, key: tuple[Any, ...], make: Any, pattern: int = 8) -> Any:
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
                self.kernels[key] = self.builder_.add_func(func, name)
            return self.kernels[key]

        def _lower(self, call: Any, data: Any, weight: np.ndarray, zero_point: int,
                   spec: KernelSpec) -> tuple[Any, np.ndarray, tuple[int, ...]]:
            """Emit the kernel call; return (output in the op's layout, weight sums, shape)."""
            if call.op.name == "relax.nn.conv2d":
                return self._conv(call, data, weight, zero_point, spec)
            return self._matmul(data, weight, spec)

        def _conv(self, call: Any, data: Any, weight: np.ndarray, zero_point: int,
                  spec: KernelSpec) -> tuple[Any, np.ndarray, tuple[int, ...]]:
            attrs = call.attrs
            shape = shape_of(data)
            out_channels = weight.shape[0]
            kernel = (weight.shape[2], weight.shape[3])
            strides = (int(attrs.strides[0]), int(attrs.strides[1]))
            top, left, bottom, right = (int(v) for v in attrs.padding)
            padding = (top, left, bottom, right)
            dilation = (int(attrs.dilation[0]), int(attrs.dilation[1]))
            out_shape = shape_of(call)
            if pointwise_fits(shape, kernel, strides, padding, spec):
                return self._pointwise(data, weight, shape, out_shape, spec)
            if conv_nchw_fits(shape, out_shape, out_channels, spec):
                return self._fused(
                    ("conv_nchw", shape, kernel, out_channels, strides, padding, dilation),
                    lambda: conv_nchw_kernel(shape, kernel, out_channels, strides, padding,
                                             dilation, spec), " (NCHW, fused epilogue)",
                    data, pack_weight(conv_weight_matrix(weight, spec), spec), out_shape)
            rows = conv_rows(out_shape[0] * out_shape[2] * out_shape[3], out_channels, spec)
            cols_pad = _round_up(out_channels, spec.lanes)
            key = ("conv", spec.name, shape, kernel, out_channels, strides, padding, dilation,
                   zero_point)
            kernel_var = self._kernel(key, lambda: conv_kernel(
                shape, kernel, out_channels, strides, padding, dilation, zero_point, spec))
            packed = relax.const(pack_weight(conv_weight_matrix(weight, spec), spec))
            emit = self.builder_.emit
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
            sums = weight.reshape(out_channels, -1).astype(np.int64).sum(axis=1)
            return acc, sums, out_shape

        def _pointwise(self, data: Any, weight: np.ndarray, shape: tuple[int, ...],
                       out_shape: tuple[int, ...], spec: KernelSpec
                       ) -> tuple[Any, np.ndarray, tuple[int, ...]]:
            out_channels = weight.shape[0]
            return self._fused(("pointwise", shape, out_channels),
                               lambda: pointwise_kernel(shape, out_channels), " pointwise (NCHW)",
                               data, np.ascontiguousarray(weight.reshape(out_channels, -1)),
                               out_shape)

        def _fused(self, key: tuple[Any, ...], make: Any, label: str, data: Any,
                   weight: np.ndarray, out_shape: tuple[int, ...]
                   ) -> tuple[Any, np.ndarray, tuple[int, ...]]:
            """Call an fp32 kernel that writes NCHW and takes the ops after it (op pattern 4)."""
            kernel_var = self._kernel(key, make, pattern=4)
            self.fused[kernel_var] = label
            # Not emitted: bound to the conv's own variable, it fuses with the ops after it.
            out = relax.op.call_tir(kernel_var, [data, relax.const(weight)],
                                    relax.TensorType(out_shape, "float32"))
            return out, np.zeros(0), out_shape

        def _matmul(self, data: Any, weight: np.ndarray, spec: KernelSpec
                    ) -> tuple[Any, np.ndarray, tuple[int, ...]]:
            # weight is [N, K] here (output channels first), whatever the model's layout.
            shape = shape_of(data)
            depth, cols = shape[-1], weight.shape[0]
            rows = int(np.prod(shape[:-1]))
            depth_pad, cols_pad = _round_up(depth, spec.group), _round_up(cols, spec.lanes)
            emit = self.builder_.emit
            flat = emit(relax.op.reshape(data, (rows, depth)))
            if depth_pad != depth:
                flat = emit(relax.op.nn.pad(flat, [0, 0, 0, depth_pad - depth]))
            kernel_var = self._kernel(("matmul", spec.name, rows, depth, cols),
                                      lambda: matmul_kernel(rows, depth, cols, spec))
            packed = relax.const(pack_weight(weight, spec))
            acc = emit(relax.op.call_tir(kernel_var, [flat, packed],
                                         relax.TensorType((rows, cols_pad),
                                                          spec.accumulator_dtype)))
            if cols_pad != cols:
                acc = emit(relax.op.strided_slice(acc, [1], [0], [cols]))
            acc = emit(relax.op.reshape(acc, (*shape[:-1], cols)))
            sums = weight.astype(np.int64).sum(axis=1)
            return acc, sums, (*shape[:-1], cols)

    return Rewriter(mod)


def _plain_conv(attrs: Any) -> bool:
    """Whether a conv2d is the one the kernels implement: groups 1, NCHW data, OIHW weight."""
    return (int(attrs.groups) == 1 and attrs.data_layout == "NCHW"
            and attrs.kernel_layout == "OIHW")


def _float_weight(mutator: Any, call: Any) -> np.ndarray | None:
    """Return the fp32 weight of a conv2d or matmul, output channels first, if it fits.

    Fits: conv2d with groups 1 in NCHW/OIHW, or matmul with a constant 2-D weight; None
    otherwise.
    """
    from tvm.ir.expr import Constant

    _, weight, transposed = layer_operands(mutator, call)
    data = call.args[0]
    if not isinstance(weight, Constant) or dtype_of(data) != "float32" or dtype_of(weight) != "float32":
        return None
    array = constant_array(weight)
    if call.op.name == "relax.nn.conv2d":
        if (transposed or not _plain_conv(call.attrs) or array.ndim != 4
                or call.attrs.out_dtype not in ("", "float32", None)):
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
    sx, zx = constant_array(scale_x), constant_array(zp_x)
    if sx.size != 1 or zx.size != 1:
        return f"{op}: activation quantized per channel; the kernel needs one scale"
    if np.any(constant_array(zp_w) != 0):
        return f"{op}: weight zero point is not 0"
    weights = constant_array(w_q)
    axis = int(weight.attrs.axis) % max(weights.ndim, 1)
    sw = constant_array(scale_w).astype(np.float32).reshape(-1)
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
