"""Give float ``ReduceMax`` / ``ReduceMin`` the standard's answer over infinite values.

TVM starts a float max reduction at the lowest finite float, not at -inf: ``ReduceMax``
over values that are all -inf returns -3.4028235e38 where ONNX (and onnxruntime) return
-inf, and ``ReduceMin`` over +inf values +3.4028235e38. Attention's standard body relies on
it: a fully masked row is found by ``Equal(ReduceMax(scores), -inf)`` and set to 0; under
TVM the test failed and the row came out NaN.

Case handled: each float ``ReduceMax`` (``ReduceMin``) gets a second reduction with the
same axes, of ``x > -inf`` (``x < +inf``) as float, and its result is replaced by -inf
(+inf) where that is 0 (no finite element): exact, one extra reduction of a comparison.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)


class ReduceInfinityPass(ir.passes.InPlacePass):
    """Make every float ReduceMax / ReduceMin return -inf / +inf over only that value."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Rewrite the main graph's float ReduceMax / ReduceMin nodes."""
        graph = model.graph
        found = [node for node in graph
                 if node.op_type in ("ReduceMax", "ReduceMin") and node.domain in ("", "ai.onnx")
                 and node.inputs and node.inputs[0] is not None
                 and node.inputs[0].dtype in _FLOATS]
        for node in found:
            _rewrite(graph, node)
        if found:
            logger.debug("ReduceMax/Min over infinities: %d node(s)", len(found))
        return ir.passes.PassResult(model, modified=bool(found))


def _rewrite(graph: ir.Graph, node: ir.Node) -> None:
    x = node.inputs[0]
    assert x is not None and x.dtype is not None
    dtype = x.dtype.numpy()
    infinity = np.array(-np.inf if node.op_type == "ReduceMax" else np.inf, dtype)
    name = node.name or node.outputs[0].name or node.op_type
    bound = ir.node("Constant", [], {"value": ir.tensor(infinity)}, name=f"{name}_inf")
    zero = ir.node("Constant", [], {"value": ir.tensor(np.array(0, dtype))}, name=f"{name}_zero")
    compare = ir.node("Greater" if node.op_type == "ReduceMax" else "Less",
                      [x, bound.outputs[0]], name=f"{name}_finite")
    as_float = ir.node("Cast", [compare.outputs[0]], {"to": x.dtype}, name=f"{name}_cast")
    any_finite = ir.node("ReduceMax", [as_float.outputs[0], *node.inputs[1:]],
                         dict(node.attributes), name=f"{name}_any")
    none = ir.node("Equal", [any_finite.outputs[0], zero.outputs[0]], name=f"{name}_none")
    output = node.outputs[0]
    fixed = ir.node("Where", [none.outputs[0], bound.outputs[0], output], name=f"{name}_fixed")
    result = fixed.outputs[0]
    result.shape, result.type = output.shape, output.type
    graph_output, name_of_output = output.is_graph_output(), output.name
    graph.insert_after(node, [bound, zero, compare, as_float, any_finite, none, fixed])
    for user, index in list(output.uses()):
        if user is not fixed:
            user.replace_input_with(index, result)
    if graph_output:  # the model's output keeps its name
        outputs = graph.outputs
        outputs[outputs.index(output)] = result
        output.name = f"{name_of_output}_before_infinity"
        result.name = name_of_output
