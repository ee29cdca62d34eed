"""The instructions hwcomp's CPU kernels are built around, one :class:`KernelSpec` each.

int8 runs on the target's dot-product instruction: x86 VNNI ``vpdpbusd`` (u8 x s8) or Arm
``sdot`` (s8 x s8), accumulating into int32; fp32 runs as FMAs over one vector register of
lanes. Which family takes which is said by its lowering (:mod:`hwcomp.lower.cpu.lowering`).
"""

from __future__ import annotations

from hwcomp.lower.kernel_spec import KernelSpec
from hwcomp.targets import Target

# x86 AVX-512 VNNI: u8 activations x s8 weights, 16 int32 lanes.
VNNI = KernelSpec("vpdpbusd", "hwcomp_vnni_u8s8_16x4", 16, "uint8",
                  llvm="llvm.x86.avx512.vpdpbusd.512")
# Arm Armv8.2+ dot product: s8 x s8, 4 int32 lanes.
SDOT = KernelSpec("sdot", "hwcomp_sdot_s8s8_4x4", 4, "int8",
                  llvm="llvm.aarch64.neon.sdot.v4i32.v16i8", by_element=True)


def fma_spec(lanes: int) -> KernelSpec:
    """Return the fp32 kernel spec for ``lanes`` fp32 vector lanes (one vector FMA).

    8 lanes is AVX2, whose 16 vector registers hold a 12-accumulator tile; the others
    (NEON's 4, AVX-512's 16) have 32 registers. AVX-512 takes a 6 x 4 tile (24 accumulators,
    4 weight vectors and the broadcast: 29 registers): 1.5x the FMAs per weight load of 4 x 4,
    whose 8 loads per 16 FMAs came near the load ports' limit (single layers, one thread:
    256->256 3x3 on 32x32 0.82-0.88x the time, ResNet-50's 3x3 layers 0.93-0.97x). NEON
    multiplies by one lane of a register (FMLA by element), so its kernels take the reduction
    4 steps per A load and keep 16 accumulators (4 A and 4 weight vectors live beside them).
    """
    return KernelSpec("fma", "", lanes, "float32", "float32", "float32", 1,
                      accumulators={8: 12, 16: 24}.get(lanes, 16), by_element=lanes == 4)


def float_spec(target: Target) -> KernelSpec:
    """Return the fp32 kernel spec for ``target``: FMAs over one vector register of lanes."""
    return fma_spec(max(1, target.vector_bits // 32))
