"""Give ``Pow`` operands TVM can take: one float type.

ONNX's ``Pow`` allows a base and an exponent of different types (float ** int, int ** float)
and integer ** integer; TVM's converter needs both operands of one type and computes
``power`` for floats only. The standard's result keeps the base's type.

Cases handled:
    1. Float base, exponent of another type: the exponent is cast to the base's type.
    2. Integer base: both operands are cast to float64, raised and cast back to the base's
       type: an integer exponent's power rounded to the nearest integer first (exact while the
       result fits in 53 bits, every result an int32 holds; onnxruntime computes integer
       powers exactly), a float exponent's truncated as onnxruntime does (3 ** 0.5 is 1).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from hwcomp.passes.infra import take_over

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class PowTypesPass(ir.passes.InPlacePass):
    """Rewrite the main graph's ``Pow`` nodes whose operand types TVM cannot take."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Insert the casts of cases 1 and 2."""
        graph = model.graph
        changed = 0
        for node in list(graph):
            if node.op_type != "Pow" or node.domain not in ("", "ai.onnx"):
                continue
            base, exponent = node.inputs[0], node.inputs[1]
            if base is None or exponent is None or base.dtype is None or exponent.dtype is None:
                continue
            name = node.name or "pow"
            if base.dtype in _FLOATS:
                if exponent.dtype == base.dtype:
                    continue
                cast = ir.node("Cast", [exponent], {"to": base.dtype}, name=f"{name}_exponent")
                graph.insert_before(node, cast)
                node.replace_input_with(1, cast.outputs[0])
            else:
                _integer_pow(graph, node, name)
            changed += 1
        if changed:
            logger.debug("Pow operand types made one float type: %d node(s)", changed)
        return ir.passes.PassResult(model, modified=bool(changed))


def _integer_pow(graph: ir.Graph, node: ir.Node, name: str) -> None:
    base, exponent = node.inputs[0], node.inputs[1]
    assert base is not None and exponent is not None and base.dtype is not None
    double = ir.DataType.DOUBLE
    base64 = ir.node("Cast", [base], {"to": double}, name=f"{name}_base64")
    exponent64 = ir.node("Cast", [exponent], {"to": double}, name=f"{name}_exponent64")
    power = ir.node("Pow", [base64.outputs[0], exponent64.outputs[0]], name=f"{name}_double")
    steps = [base64, exponent64, power]
    if exponent.dtype not in _FLOATS:
        steps.append(ir.node("Round", [power.outputs[0]], name=f"{name}_round"))
    back = ir.node("Cast", [steps[-1].outputs[0]], {"to": base.dtype}, name=f"{name}_back")
    graph.insert_before(node, [*steps, back])
    take_over(node.outputs[0], back.outputs[0])
    graph.remove(node, safe=True)
