"""Turn a ConvTranspose's ``output_shape`` attribute into explicit pads.

TVM's ONNX converter ignores ``output_shape`` (the ONNX node test
``test_convtranspose_output_shape`` returns the wrong size). The standard defines the
pads that ``output_shape`` implies; writing them out gives TVM an equivalent node.

Cases handled:
    1. Non-negative total padding per axis: split between begin and end as the standard
       says (the odd element at the end for SAME_UPPER, at the begin otherwise).
    2. Negative total padding smaller than the stride: becomes ``output_padding``.

Left alone: a node without ``output_shape``, or whose input or weight shape is unknown.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from hwcomp.irutil import static_shape

logger = logging.getLogger(__name__)


class ConvTransposePadsPass(ir.passes.InPlacePass):
    """Replace ``output_shape`` on ConvTranspose nodes with the pads it implies."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite every ConvTranspose with ``output_shape`` whose shapes are known."""
        changed = 0
        for node in model.graph:
            if node.op_type == "ConvTranspose" and "output_shape" in node.attributes:
                changed += _explicit_pads(node)
        return ir.passes.PassResult(model, modified=changed > 0)


def _explicit_pads(node: ir.Node) -> bool:
    data_shape, weight_shape = static_shape(node.inputs[0]), static_shape(node.inputs[1])
    if data_shape is None or weight_shape is None:
        return False
    attrs = node.attributes
    spatial = len(data_shape) - 2
    in_sizes = data_shape[2:]
    kernel = attrs.get_ints("kernel_shape", weight_shape[2:])
    strides = attrs.get_ints("strides", [1] * spatial)
    dilations = attrs.get_ints("dilations", [1] * spatial)
    out_padding = list(attrs.get_ints("output_padding", [0] * spatial))
    wanted = attrs.get_ints("output_shape")[-spatial:]
    upper = attrs.get_string("auto_pad", "NOTSET") == "SAME_UPPER"
    begins, ends = [], []
    for axis in range(spatial):
        full = strides[axis] * (in_sizes[axis] - 1) + out_padding[axis] + (
            (kernel[axis] - 1) * dilations[axis] + 1)
        total = full - wanted[axis]
        if total < 0:
            # Case 2
            if -total >= strides[axis]:
                return False
            out_padding[axis] += -total
            total = 0
        # Case 1
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    del attrs["output_shape"]
    attrs.pop("auto_pad", None)
    attrs["pads"] = ir.AttrInt64s("pads", begins + ends)
    attrs["output_padding"] = ir.AttrInt64s("output_padding", out_padding)
    logger.debug("ConvTranspose %s: output_shape -> pads %s", node.name, begins + ends)
    return True
