"""CPUs reached through LLVM (x86-64, Arm Cortex-A): hwcomp's kernels and default schedules.

``lowering`` holds the families' entries in :data:`hwcomp.lower.LOWERINGS`; ``pipeline`` is
TVM's CPU pipeline with tuned and default schedules; ``rules/`` the default-schedule rules,
one per file; ``kernels/`` the conv/matmul kernels (instruction spec, intrinsics, compute,
tiling, and the Relax rewrite that selects them); ``fast_math`` the vectorisable
transcendentals.
"""
