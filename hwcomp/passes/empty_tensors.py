"""Take empty tensors out of Split and Concat, which TVM cannot compile with them.

RotaryEmbedding's standard body splits its input into the part to rotate and the part left
as it is, and concatenates them again; when the whole head is rotated the second part is
empty (size 0 along the axis) and TVM's split fails to compile. An empty part carries no
values, so:

Cases handled:
    1. ``Split`` with constant sizes of which some are 0: those outputs become empty
       constants and the node splits into the others (a single one: ``Identity``).
    2. ``Concat`` inputs that are empty along the axis (static shapes) are dropped (all
       but one dropped: ``Identity``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from hwcomp.passes.infra import take_over

logger = logging.getLogger(__name__)


class EmptyTensorsPass(ir.passes.InPlacePass):
    """Rewrite Split nodes with empty parts and Concat nodes with empty inputs."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite the main graph's Split and Concat nodes (cases 1 and 2)."""
        graph = model.graph
        changed = 0
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Split":
                changed += _split(graph, node)
            elif node.op_type == "Concat":
                changed += _concat(graph, node)
        if changed:
            logger.debug("empty Split parts / Concat inputs removed: %d node(s)", changed)
        return ir.passes.PassResult(model, modified=bool(changed))


def _axis(node: ir.Node, rank: int) -> int:
    return node.attributes.get_int("axis", 0) % max(rank, 1)


def _split(graph: ir.Graph, node: ir.Node) -> int:
    x = node.inputs[0]
    sizes_value = node.inputs[1] if len(node.inputs) > 1 else None
    if x is None or x.shape is None or sizes_value is None or sizes_value.const_value is None:
        return 0
    sizes = sizes_value.const_value.numpy().reshape(-1).astype(np.int64)
    if len(sizes) != len(node.outputs) or not (sizes == 0).any() or not x.shape.is_static():
        return 0
    axis = _axis(node, len(x.shape))
    dtype = x.dtype.numpy() if x.dtype is not None else np.float32
    keep = [i for i, size in enumerate(sizes) if size]
    for index, output in enumerate(node.outputs):
        if sizes[index]:
            continue
        shape = [int(d) for d in x.shape.numpy()]
        shape[axis] = 0
        empty = ir.node("Constant", [], {"value": ir.tensor(np.zeros(shape, dtype))},
                        name=f"{node.name or 'split'}_empty{index}")
        graph.insert_before(node, empty)
        take_over(output, empty.outputs[0])
    if len(keep) == 1:
        only = ir.node("Identity", [x], name=f"{node.name or 'split'}_whole")
        graph.insert_before(node, only)
        take_over(node.outputs[keep[0]], only.outputs[0])
    elif keep:
        sizes_kept = ir.node("Constant", [], {"value": ir.tensor(sizes[keep])},
                             name=f"{node.name or 'split'}_sizes")
        parts = ir.node("Split", [x, sizes_kept.outputs[0]], {"axis": axis},
                        num_outputs=len(keep), name=f"{node.name or 'split'}_nonempty")
        graph.insert_before(node, [sizes_kept, parts])
        for new, index in zip(parts.outputs, keep, strict=True):
            take_over(node.outputs[index], new)
    graph.remove(node, safe=True)
    return 1


def _concat(graph: ir.Graph, node: ir.Node) -> int:
    inputs = [v for v in node.inputs if v is not None]
    shapes = [v.shape for v in inputs]
    if not inputs or any(shape is None for shape in shapes):
        return 0
    axis = _axis(node, len(shapes[0]))  # type: ignore[arg-type]
    kept = [v for v, shape in zip(inputs, shapes, strict=True)
            if not (isinstance(shape[axis], int) and shape[axis] == 0)]  # type: ignore[index]
    if len(kept) == len(inputs) or not kept:
        return 0
    if len(kept) == 1:
        new = ir.node("Identity", kept, name=f"{node.name or 'concat'}_only")
    else:
        new = ir.node("Concat", kept, {"axis": axis}, name=f"{node.name or 'concat'}_nonempty")
    graph.insert_before(node, new)
    take_over(node.outputs[0], new.outputs[0])
    graph.remove(node, safe=True)
    return 1
