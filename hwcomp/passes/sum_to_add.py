"""Turn a variadic ``Sum`` into a chain of ``Add`` nodes.

TVM's ONNX converter lowers ``Sum(a, b, ...)`` to ``stack`` plus a reduction over the new
axis: the inputs are copied into one stacked tensor and summed back out, two extra passes
over memory (ResNet-50 exported with ``Sum`` for its residuals spent 10 % of its time there).
A chain of ``Add`` is one elementwise pass that fuses with its neighbours, and it adds in the
same order as the standard's (and onnxruntime's) left-to-right sum.

Cases handled:
    1. Two or more inputs: ``((a + b) + c) + ...``.
    2. One input: an ``Identity`` (removed later by identity elimination).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from hwcomp.passes.infra import take_over

logger = logging.getLogger(__name__)


class SumToAddPass(ir.passes.InPlacePass):
    """Replace every ``Sum`` node by ``Add`` nodes (or an ``Identity``)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite the main graph's ``Sum`` nodes."""
        graph = model.graph
        sums = [node for node in graph if node.op_type == "Sum" and node.domain in ("", "ai.onnx")]
        for node in sums:
            _replace(graph, node)
        if sums:
            logger.debug("Sum -> Add: %d node(s)", len(sums))
        return ir.passes.PassResult(model, modified=bool(sums))


def _replace(graph: ir.Graph, node: ir.Node) -> None:
    inputs = list(node.inputs)
    name = node.name or node.outputs[0].name or "sum"
    if len(inputs) == 1:
        # Case 2
        new_nodes = [ir.node("Identity", inputs, name=f"{name}_identity")]
    else:
        # Case 1
        new_nodes = []
        current = inputs[0]
        for index, operand in enumerate(inputs[1:]):
            add = ir.node("Add", [current, operand], name=f"{name}_add{index}")
            new_nodes.append(add)
            current = add.outputs[0]
    graph.insert_before(node, new_nodes)
    take_over(node.outputs[0], new_nodes[-1].outputs[0])
    graph.remove(node, safe=True)
