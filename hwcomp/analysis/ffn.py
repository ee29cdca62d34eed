"""Transformer feed-forward blocks: hidden units that can be pruned as a whole.

The channel analysis (:mod:`hwcomp.analysis.channels`) works on axis 1 and freezes the
MatMuls of rank-3 activations ``[batch, tokens, features]``. A transformer's FFN is
``MatMul(x, W1[D, H])`` (+ bias) -> activation -> ``MatMul(., W2[H, D])``: its ``H`` hidden
units live on the last axis, touched only by elementwise ops between the two MatMuls, so
hidden unit ``j`` is column ``j`` of W1 (and of the bias and of any per-unit constant on the
way) and row ``j`` of W2. Removing it changes nothing else in the graph.

:func:`find_ffns` matches that shape as a region: every tensor reachable from the first
MatMul's output through elementwise ops whose other operands are constants (scalars or
``[..., H]`` vectors), every use of each such tensor inside the region or the second MatMul
(as its data input), none of them a graph output. An exported GELU (Div, Erf, Add, Mul, Mul
with the input used twice) is such a region.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from hwcomp.irutil import constant_array, node_input, static_shape

ELEMENTWISE = frozenset({
    "Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu",
    "Selu", "Softplus", "Mish", "Clip", "Identity", "Dropout", "Add", "Sub", "Mul", "Div", "Pow",
    "Sqrt", "Neg", "Abs", "Exp",
})


@dataclass(frozen=True)
class Ffn:
    """One FFN's hidden units: the two MatMuls and the elementwise ops between them."""

    up: ir.Node       # MatMul(x, W1[D, H])
    down: ir.Node     # MatMul(hidden, W2[H, D])
    between: tuple[ir.Node, ...]
    hidden: int

    @property
    def name(self) -> str:
        """Return the group name a report and a ratio file use."""
        return f"{self.up.name} (FFN hidden)"


def _weight(node: ir.Node) -> tuple[int, int] | None:
    """Return the ``[rows, cols]`` of a MatMul's constant 2-D weight (input 1), else None."""
    array = constant_array(node_input(node, 1))
    return tuple(array.shape) if array is not None and array.ndim == 2 else None  # type: ignore[return-value]


def find_ffns(model: ir.Model) -> list[Ffn]:
    """Return every FFN of ``model`` whose hidden units can be pruned (see module doc)."""
    outputs = {id(v) for v in model.graph.outputs}
    found = []
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        shape, source = _weight(node), node.inputs[0]
        data = static_shape(source)
        if shape is None or source is None or data is None or len(data) < 3 \
                or source.const_value is not None:
            continue
        ffn = _region(node, shape[1], outputs)
        if ffn is not None:
            found.append(ffn)
    return found


def _region(up: ir.Node, hidden: int, outputs: set[int]) -> Ffn | None:
    start = up.outputs[0]
    region = {id(start)}
    pending = [start]
    between: list[ir.Node] = []
    down = None
    while pending:
        value = pending.pop()
        if id(value) in outputs:
            return None
        for use in value.uses():
            consumer = use.node
            if consumer.op_type == "MatMul" and use.idx == 0:
                if _weight(consumer) is None or _weight(consumer)[0] != hidden:  # type: ignore[index]
                    return None
                if down is not None and down is not consumer:
                    return None
                down = consumer
                continue
            if any(consumer is seen for seen in between):
                continue
            if consumer.op_type not in ELEMENTWISE:
                return None
            between.append(consumer)
            for out in consumer.outputs[:1]:
                if id(out) not in region:
                    region.add(id(out))
                    pending.append(out)
            if len(consumer.outputs) > 1 and any(o.uses() for o in consumer.outputs[1:]):
                return None
    if down is None:
        return None
    # Every input of an op between must come from the region or be a fitting constant
    # (checked once the region is whole: GELU's Mul reads two tensors of the region).
    for node in between:
        if not _operands_fit(node, region, hidden):
            return None
    return Ffn(up=up, down=down, between=tuple(between), hidden=hidden)


def _operands_fit(node: ir.Node, region: set[int], hidden: int) -> bool:
    for value in node.inputs:
        if value is None or id(value) in region:
            continue
        array = constant_array(value)
        if array is None:
            return False
        if array.size != 1 and not (array.shape[-1] == hidden and array.size == hidden):
            return False
    return True
