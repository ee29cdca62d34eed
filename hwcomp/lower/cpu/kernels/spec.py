"""The instructions hwcomp's CPU kernels are built around, one :class:`KernelSpec` each.

int8 runs on the target's dot-product instruction: x86 VNNI ``vpdpbusd`` (u8 x s8) or Arm
``sdot`` (s8 x s8), accumulating into int32; fp32 runs as FMAs over one vector register of
lanes. Which family takes which is said by its lowering (:mod:`hwcomp.lower.cpu.lowering`).
"""

from __future__ import annotations

from hwcomp.lower.kernel_spec import KernelSpec
from hwcomp.targets import Target

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
