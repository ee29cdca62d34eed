"""Inline ``If`` nodes whose condition is a constant once input shapes are bound.

Exporters turn shape tests into control flow (``if x.shape[0] > 1``: Shape -> Gather ->
Greater -> If). With every input shape bound, constant folding makes such a condition a
constant, and the branch taken is known at compile time: its nodes move into the main graph
in place of the ``If`` (their initializers with them), the ``If``'s outputs become the
branch's, and the other branch is dropped. TVM's ONNX frontend has no ``If`` converter, so
an ``If`` whose condition stays data-dependent is left for the import to refuse by name.

Run after constant folding, and fold again after it: the inlined branch may hold constant
chains (and further ``If`` nodes, which the next sweep of this pass takes).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)


class FoldIfPass(ir.passes.InPlacePass):
    """Replace each ``If`` with a constant condition by the nodes of the branch it takes."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Inline every ``If`` of the main graph whose condition is a constant."""
        graph = model.graph
        folded = 0
        changed = True
        while changed:  # an inlined branch may itself hold a constant If
            changed = False
            for node in list(graph):
                if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
                    continue
                condition = node.inputs[0] if node.inputs else None
                if condition is None or condition.const_value is None:
                    continue
                taken = bool(np.asarray(condition.const_value.numpy()).reshape(-1)[0])
                branch = node.attributes["then_branch" if taken else "else_branch"].as_graph()
                _inline(graph, node, branch)
                logger.info("If '%s': condition is constant (%s); inlined its %s branch",
                            node.name, taken, "then" if taken else "else")
                folded += 1
                changed = True
        return ir.passes.PassResult(model, modified=folded > 0)


def _inline(graph: ir.Graph, node: ir.Node, branch: ir.Graph) -> None:
    """Move ``branch``'s nodes before ``node`` and let its outputs take the place of node's."""
    for name in list(branch.initializers):
        value = branch.initializers.pop(name)
        graph.register_initializer(value)
    moved = list(branch)
    for inner in moved:
        branch.remove(inner)
    graph.insert_before(node, moved)
    produced = {id(value) for inner in moved for value in inner.outputs}
    results = list(branch.outputs)
    branch.outputs.clear()
    for output, result in zip(node.outputs, results, strict=True):
        if id(result) not in produced:
            # A branch that returns an outer value (or an initializer) as it is: an Identity
            # keeps the If's output a value of its own (it may be a graph output).
            identity = ir.node("Identity", [result], num_outputs=1)
            graph.insert_before(node, identity)
            result = identity.outputs[0]
        output_name = output.name
        output.name = None
        ir.convenience.replace_all_uses_with(output, result, replace_graph_outputs=True)
        if output_name:
            result.name = output_name
    graph.remove(node, safe=True)
