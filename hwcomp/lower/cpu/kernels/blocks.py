"""Names of the blocks hwcomp's kernels define and its default schedule rules recognise.

The compute (:mod:`hwcomp.lower.cpu.kernels.compute`) names its blocks with these; the rules
(:mod:`hwcomp.lower.cpu.rules`) find a kernel's fused function by them.
"""

from __future__ import annotations

# hwcomp's default rule recognises a function holding this block (the pointwise kernel and the
# elementwise ops TVM fused after it) and schedules it with :func:`schedule_fused_kernel`.
POINTWISE_BLOCK = "hwcomp_pointwise"


# hwcomp's default rule recognises a function holding this block (a fp32 convolution with its
# NCHW output and the elementwise ops TVM fused after it) and schedules it with
# :func:`schedule_fused_kernel`.
CONV_BLOCK = "hwcomp_conv"


# The store of the groups-1 conv kernel: its GEMM's padded rows and columns
# (:data:`CONV_BLOCK`) written to the real pixels and channels of the NCHW output.
STORE_BLOCK = "hwcomp_conv_store"


# hwcomp's default rule recognises a function holding this block (a fp32 depthwise convolution
# with its NCHW output and the elementwise ops TVM fused after it) and schedules it with
# :func:`schedule_fused_kernel`.
DEPTHWISE_BLOCK = "hwcomp_depthwise"


# The transforms of a Winograd convolution (:mod:`hwcomp.lower.cpu.kernels.winograd`): the
# input's (a scheduled kernel of its own) and the output's, which TVM fuses with the epilogue
# and :func:`schedule_fused_kernel` stores through it.
WINOGRAD_INPUT_BLOCK = "hwcomp_winograd_input"


WINOGRAD_OUTPUT_BLOCK = "hwcomp_winograd_output"


# The annotation of a Winograd output block: the conv's dilation (height, width), by which
# its schedule splits the rows and columns into tiles.
DILATION_ATTR = "hwcomp_dilation"


# The kernels :func:`schedule_fused_kernel` tiles with their fused epilogue.
FUSED_KERNEL_BLOCKS = (POINTWISE_BLOCK, CONV_BLOCK, DEPTHWISE_BLOCK, WINOGRAD_OUTPUT_BLOCK)


# The return to NCHW is the one kernel TVM may fuse with its neighbours: the bias, residual
# add, activation (and, for int8, the rescaling) that follow a convolution join it in one
# pass. hwcomp's default rule recognises the fused function by this block name and applies
# :func:`tile_pixels_by_channels` to it.
LAYOUT_BLOCK = "hwcomp_to_nchw"


# The annotation of a grouped conv's block: output channels per group (the schedule runs the
# groups as a batch of GEMMs).
GROUP_ATTR = "hwcomp_group_out"


# The annotation of a kernel block (groups-1 conv: its store block) that writes NHWC: the
# schedule stores each tile's channels contiguously (its output roles are (h, w, o)).
CHANNELS_LAST_ATTR = "hwcomp_channels_last"


# The annotation of a kernel block built for fewer fp32 lanes than the target's vector (a
# depthwise conv of 72 channels runs 8 lanes on AVX-512): the schedule tiles it with as many.
LANES_ATTR = "hwcomp_lanes"


# The annotation of an NHWC depthwise conv's block: the most output pixels a register tile
# holds (one accumulator vector each), from the target's vector registers.
PIXELS_ATTR = "hwcomp_tile_pixels"
