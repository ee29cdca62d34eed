"""hwcomp's CPU conv/matmul kernels, four jobs in four files plus shared names.

``spec`` (which instruction), ``intrinsics`` (its TIR tensor intrinsic), ``compute`` (what the
kernel computes, weight packing), ``tiling`` (how it is scheduled), ``rewrite`` (the Relax
rewrite that selects a kernel per op); ``blocks`` names the blocks the rules recognise.
"""
