"""What every family's conv/matmul kernels share: the instruction spec, the rewrite summary, shapes.

:class:`KernelSpec` names the instruction a kernel is built around (a CPU's dot product or
vector FMA, the microcontrollers' C loops); :class:`KernelRewrite` is what a family's Relax
rewrite reports; the helpers give a convolution's output size and TIR's int64 shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
        accumulators: Vector registers a register tile may hold as accumulators: 16 where
            the ISA has 32 (AVX-512, NEON), 12 with AVX2's 16 (a 6 x 2-vector tile leaves
            registers for the weight vectors and the broadcast, as in 6x16 AVX2 sgemm).
        by_element: fp32 only: the FMA multiplies by one lane of a vector (NEON's FMLA by
            element), so an A vector of 4 reduction steps feeds 4 FMAs.

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
    accumulators: int = 16
    by_element: bool = False


def layer_macs(weight_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Multiply-adds of a conv / depthwise / dense layer: each weight once per output position.

    ``weight_shape`` starts with the output channels (OIHW, [C, KH*KW], [N, K]); an output
    of ``out_shape`` holds ``prod(out_shape) / weight_shape[0]`` positions per channel.
    """
    weights = 1
    for d in weight_shape:
        weights *= int(d)
    outputs = 1
    for d in out_shape:
        outputs *= int(d)
    return weights * outputs // int(weight_shape[0])


def conv_output_size(data_shape: tuple[int, ...], kernel: tuple[int, int],
                     strides: tuple[int, int], padding: tuple[int, int, int, int],
                     dilation: tuple[int, int]) -> tuple[int, int]:
    """Return a convolution's output ``(height, width)``."""
    top, left, bottom, right = padding
    return ((data_shape[2] + top + bottom - dilation[0] * (kernel[0] - 1) - 1) // strides[0] + 1,
            (data_shape[3] + left + right - dilation[1] * (kernel[1] - 1) - 1) // strides[1] + 1)


# The largest float32: the C kernels' "no clamp" bound (a finite literal in generated C).
FLT_MAX = 3.4028234663852886e38


def tir_shape(dims: Any) -> str:
    """Return a shape as TVMScript writes a ``T.Buffer``'s: ``(T.int64(1), T.int64(8),)``."""
    return "(" + ", ".join(f"T.int64({int(d)})" for d in dims) + ",)"


def int64_shape(dims: tuple[int, ...]) -> tuple[Any, ...]:
    """Shapes as int64, the index type of the Relax-legalised functions a kernel fuses with."""
    from tvm import tirx

    return tuple(tirx.IntImm("int64", int(d)) for d in dims)


def round_up(value: int, multiple: int) -> int:
    """Return ``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


@dataclass
class KernelRewrite:
    """What :func:`rewrite_kernels` did: ops on hwcomp's kernels, quantized ops left in float."""

    instruction: str | None
    rewritten: list[str]
    float_ops: list[str]
    kept_float: list[str]
    # The multiply-adds of each kernel that computes a conv / matmul layer, by the kernel's
    # name (the fused function that calls it carries the name: fused_hwcomp_kernel_3_add).
    macs: dict[str, int] = field(default_factory=dict)
