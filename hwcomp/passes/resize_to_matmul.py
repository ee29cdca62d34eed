"""Rewrite Resize nodes TVM gets wrong into per-axis matrix products.

Resize (nearest, linear, cubic; with or without antialiasing) is separable: resizing
axis ``a`` from ``n`` to ``m`` elements multiplies that axis by a fixed ``m x n``
interpolation matrix. With static shapes and constant scales/sizes the matrices are
computed here from ONNX's reference implementation, so the result follows the standard
exactly; the graph gets one MatMul per resized axis (with Transposes for axes other
than the last two).

Rewritten (TVM's converter is wrong or fails on these, per the ONNX node tests):
    1. ``antialias = 1``;
    2. linear or cubic downsampling (a scale below 1);
    3. ``coordinate_transformation_mode = half_pixel_symmetric``;
    4. an ``axes`` attribute or a ``keep_aspect_ratio_policy`` other than ``stretch``.

    5. ``tf_crop_and_resize`` with ``axes``: not a linear map (extrapolated points), so
       not a MatMul, but its ``axes`` are folded into full-rank roi/scales/sizes, which
       TVM's converter takes.

Left alone, and why:
    - other ``tf_crop_and_resize``: extrapolated points are not a linear map of the input;
    - dynamic shapes or non-constant scales/sizes: the matrices cannot be computed;
    - every other Resize: TVM's own kernel is right and cheaper than a matrix product.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from onnx.reference.ops import op_resize

from hwcomp.irutil import add_constant, constant_array, node_input, set_constant_input, static_shape

logger = logging.getLogger(__name__)


class ResizeToMatMulPass(ir.passes.InPlacePass):
    """Replace Resize nodes TVM mishandles by MatMuls with interpolation matrices."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite every qualifying Resize node of the main graph."""
        rewritten = 0
        for node in list(model.graph):
            if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
                continue
            if _fold_crop_axes(model.graph, node):
                rewritten += 1
                continue
            reason = why_not_rewritten(node)
            if reason:
                logger.debug("Resize %s left to TVM: %s", node.name, reason)
                continue
            _rewrite(model.graph, node)
            rewritten += 1
        return ir.passes.PassResult(model, modified=rewritten > 0)


def why_not_rewritten(node: ir.Node) -> str:
    """Return why ``node`` is not rewritten, or an empty string when it is."""
    attrs = node.attributes
    mode = attrs.get_string("mode", "nearest")
    transform = attrs.get_string("coordinate_transformation_mode", "half_pixel")
    if transform == "tf_crop_and_resize":
        return "tf_crop_and_resize extrapolates: not a linear map"
    shape = static_shape(node_input(node, 0))
    if shape is None:
        return "input shape is not static"
    scales, sizes = _constant(node, 2), _constant(node, 3)
    if scales is None and sizes is None:
        return "scales/sizes are not constants"
    needs = (
        attrs.get_int("antialias", 0) == 1
        or (mode in ("linear", "cubic") and _downsamples(shape, scales, sizes))
        or transform == "half_pixel_symmetric"
        or "axes" in attrs
        or attrs.get_string("keep_aspect_ratio_policy", "stretch") != "stretch"
    )
    return "" if needs else "TVM handles this Resize correctly"


def _fold_crop_axes(graph: ir.Graph, node: ir.Node) -> bool:
    """Case 5: give a tf_crop_and_resize node full-rank operands instead of ``axes``."""
    attrs = node.attributes
    if "axes" not in attrs or attrs.get_string(
        "coordinate_transformation_mode", "half_pixel"
    ) != "tf_crop_and_resize":
        return False
    shape = static_shape(node_input(node, 0))
    if shape is None:
        return False
    rank = len(shape)
    axes = [a % rank for a in attrs.get_ints("axes")]
    roi, scales, sizes = _constant(node, 1), _constant(node, 2), _constant(node, 3)
    if roi is None or (scales is None and sizes is None):
        return False
    full_roi = np.array([0.0] * rank + [1.0] * rank, dtype=roi.dtype)
    for i, axis in enumerate(axes):
        full_roi[axis], full_roi[rank + axis] = roi[i], roi[len(axes) + i]
    replacements = {1: full_roi}
    if scales is not None:
        full = np.ones(rank, dtype=scales.dtype)
        full[axes] = scales
        replacements[2] = full
    else:
        full = np.array(shape, dtype=np.int64)
        full[axes] = sizes
        replacements[3] = full
    for index, array in replacements.items():
        set_constant_input(graph, node, index, array, f"{node.name}_full_{index}")
    del attrs["axes"]
    return True


def _constant(node: ir.Node, index: int) -> np.ndarray | None:
    """Return a constant operand, reading empty tensors (ONNX's "not given") as absent."""
    array = constant_array(node_input(node, index))
    return array if array is not None and array.size else None


def _downsamples(shape: list[int], scales: np.ndarray | None, sizes: np.ndarray | None) -> bool:
    if scales is not None:
        return bool((scales < 1).any())
    if sizes is None:
        return False
    return bool((sizes < np.array(shape)[-len(sizes):]).any())


def _axis_plan(node: ir.Node) -> tuple[list[float], list[int]]:
    """Per-axis scale and output size, as ONNX's reference implementation derives them."""
    attrs = node.attributes
    in_shape = static_shape(node_input(node, 0)) or []
    rank = len(in_shape)
    axes = [a % rank for a in attrs.get_ints("axes", list(range(rank)))]
    scales, sizes = _constant(node, 2), _constant(node, 3)
    out_scales = [1.0] * rank
    out_sizes = list(in_shape)
    if sizes is not None:
        for axis, size in zip(axes, sizes, strict=True):
            out_sizes[axis] = int(size)
            out_scales[axis] = int(size) / in_shape[axis]
        policy = attrs.get_string("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            scale = pick(out_scales[a] for a in axes)
            for axis in axes:
                out_scales[axis] = scale
                out_sizes[axis] = int(scale * in_shape[axis] + 0.5)
    elif scales is not None:
        for axis, scale in zip(axes, scales, strict=True):
            out_scales[axis] = float(scale)
            out_sizes[axis] = int(float(scale) * in_shape[axis])
    return out_scales, out_sizes


def _coefficients(node: ir.Node) -> Callable:
    attrs = node.attributes
    mode = attrs.get_string("mode", "nearest")
    antialias = attrs.get_int("antialias", 0) == 1
    if mode == "nearest":
        nearest = attrs.get_string("nearest_mode", "round_prefer_floor")
        return lambda ratio, scale: op_resize._nearest_coeffs(ratio, mode=nearest)
    if mode == "cubic":
        cubic = op_resize._cubic_coeffs_antialias if antialias else op_resize._cubic_coeffs
        a = attrs.get_float("cubic_coeff_a", -0.75)
        return lambda ratio, scale: cubic(ratio, scale, A=a)
    return op_resize._linear_coeffs_antialias if antialias else op_resize._linear_coeffs


def interpolation_matrix(node: ir.Node, size_in: int, scale: float, size_out: int) -> np.ndarray:
    """Return the ``size_out x size_in`` matrix that resizes one axis as ``node`` says."""
    attrs = node.attributes
    transposed = op_resize._interpolate_1d_along_axis(
        np.eye(size_in, dtype=np.float64), 1, scale, size_out, _coefficients(node),
        coordinate_transformation_mode=attrs.get_string(
            "coordinate_transformation_mode", "half_pixel"),
        exclude_outside=bool(attrs.get_int("exclude_outside", 0)),
    )
    return np.ascontiguousarray(transposed.T)


def _rewrite(graph: ir.Graph, node: ir.Node) -> None:
    scales, sizes = _axis_plan(node)
    data = node.inputs[0]
    in_shape = static_shape(data)
    assert data is not None and data.dtype is not None and in_shape is not None
    rank = len(in_shape)
    dtype = data.dtype.numpy()
    current: ir.Value = data
    new_nodes: list[ir.Node] = []
    for axis in reversed(range(rank)):
        if sizes[axis] == in_shape[axis] and np.isclose(scales[axis], 1.0):
            continue
        matrix = interpolation_matrix(node, in_shape[axis], scales[axis], sizes[axis])
        current = _apply_along_axis(graph, new_nodes, current, matrix.astype(dtype), axis, rank,
                                    f"{node.name}_axis{axis}")
    output = node.outputs[0]
    if not new_nodes:
        new_nodes.append(ir.node("Identity", [current], name=f"{node.name}_identity"))
        current = new_nodes[-1].outputs[0]
    graph.insert_before(node, new_nodes)
    current.shape, current.type = output.shape, output.type
    name = output.name
    output.name = None
    ir.convenience.replace_all_uses_with(output, current, replace_graph_outputs=True)
    current.name = name
    graph.remove(node, safe=True)


def _apply_along_axis(graph: ir.Graph, nodes: list[ir.Node], value: ir.Value,
                      matrix: np.ndarray, axis: int, rank: int, name: str) -> ir.Value:
    """Multiply ``value`` along ``axis`` by ``matrix`` (out x in)."""
    if axis >= rank - 2:
        # Last axis: X @ M^T. Second to last: M @ X (MatMul broadcasts M over batch axes).
        last = axis == rank - 1
        weight = np.ascontiguousarray(matrix.T if last else matrix)
        constant = add_constant(graph, f"{name}_matrix", weight)
        operands = [value, constant] if last else [constant, value]
        nodes.append(ir.node("MatMul", operands, name=f"{name}_matmul"))
        return nodes[-1].outputs[0]
    # Move the axis last, multiply, move it back.
    perm = [d for d in range(rank) if d != axis] + [axis]
    inverse = [perm.index(d) for d in range(rank)]
    nodes.append(ir.node("Transpose", [value], attributes={"perm": perm}, name=f"{name}_to_last"))
    moved = _apply_along_axis(graph, nodes, nodes[-1].outputs[0], matrix, rank - 1, rank, name)
    nodes.append(ir.node("Transpose", [moved], attributes={"perm": inverse}, name=f"{name}_back"))
    return nodes[-1].outputs[0]
