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


def _weight(node: ir.Node) -> tuple[int, ...] | None:
    """Return the ``[rows, cols]`` of a MatMul's constant 2-D weight (input 1), else None."""
    array = constant_array(node_input(node, 1))
    return tuple(array.shape) if array is not None and array.ndim == 2 else None


def _weight_dim(node: ir.Node, axis: int, size: int) -> bool:
    """Tell whether ``node`` has a constant 2-D weight whose ``axis`` is ``size`` long."""
    shape = _weight(node)
    return shape is not None and shape[axis] == size


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
                if not _weight_dim(consumer, 0, hidden):
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


@dataclass(frozen=True)
class Attention:
    """One multi-head attention: the Q/K/V projections, the heads' reshapes, the output one.

    Head ``h`` is columns ``h*d .. h*d+d-1`` of the Q, K and V weights (and biases) and the
    same rows of the output projection's weight; the split Reshapes' head count and the
    merging Reshape's width follow.
    """

    projections: tuple[tuple[ir.Node, ir.Node | None], ...]  # (MatMul, bias Add) for Q, K, V
    splits: tuple[ir.Node, ...]                               # Reshape [B, T, H, d] x3
    merge: ir.Node                                            # Reshape [B, T, H*d]
    output: ir.Node                                           # MatMul(merged, Wo)
    heads: int
    head_dim: int

    @property
    def name(self) -> str:
        """Return the group name a report and a ratio file use."""
        return f"{self.output.name} (attention heads)"


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op else None


def _only_use(value: ir.Value | None) -> ir.Node | None:
    uses = list(value.uses()) if value is not None else []
    return uses[0].node if len(uses) == 1 else None


def _perm(node: ir.Node | None) -> list[int]:
    return list(node.attributes.get_ints("perm", [])) if node is not None else []


def _projection(split_input: ir.Value | None, width: int) -> tuple[ir.Node, ir.Node | None] | None:
    """``MatMul(x, W[D, width])`` (+ ``Add`` of a ``[width]`` bias) feeding a head split."""
    add = _producer(split_input, "Add")
    source = split_input
    if add is not None:
        bias = next((constant_array(v) for v in add.inputs if v is not None
                     and constant_array(v) is not None), None)
        if bias is None or bias.shape != (width,):
            return None
        source = next((v for v in add.inputs if v is not None and v.const_value is None), None)
    matmul = _producer(source, "MatMul")
    if matmul is None or not _weight_dim(matmul, 1, width):
        return None
    if len(list(source.uses())) != 1:  # type: ignore[union-attr]
        return None
    return matmul, add


def _split(value: ir.Value | None, heads: int, head_dim: int) -> tuple[ir.Node, ir.Value] | None:
    """Transpose(0, 2, 1, 3) of Reshape(y, [B, T, heads, head_dim]): the Reshape and y."""
    transpose = _producer(value, "Transpose")
    if transpose is None or _perm(transpose) != [0, 2, 1, 3]:
        return None
    reshape = _producer(transpose.inputs[0], "Reshape")
    shape = static_shape(reshape.outputs[0]) if reshape is not None else None
    if reshape is None or shape is None or len(shape) != 4 or shape[2:] != [heads, head_dim]:
        return None
    if _only_use(reshape.outputs[0]) is not transpose or _only_use(transpose.outputs[0]) is None:
        return None
    return reshape, reshape.inputs[0]  # type: ignore[return-value]


def find_attention(model: ir.Model) -> list[Attention]:
    """Return the multi-head attentions of ``model`` whose heads can be pruned."""
    found = []
    for merge in model.graph:
        if merge.op_type != "Reshape":
            continue
        back = _producer(merge.inputs[0], "Transpose")
        context = _producer(back.inputs[0], "MatMul") if back is not None else None
        shape = static_shape(context.outputs[0]) if context is not None else None
        if back is None or context is None or _perm(back) != [0, 2, 1, 3] or shape is None \
                or len(shape) != 4:
            continue
        heads, head_dim = shape[1], shape[3]
        output = _only_use(merge.outputs[0])
        if output is None or output.op_type != "MatMul" \
                or not _weight_dim(output, 0, heads * head_dim):
            continue
        found_v = _split(context.inputs[1], heads, head_dim)
        softmax = _producer(context.inputs[0], "Softmax")
        if found_v is None or softmax is None:
            continue
        scores = _scores_matmul(softmax)
        if scores is None:
            continue
        found_q = _split(scores.inputs[0], heads, head_dim)
        key_t = _producer(scores.inputs[1], "Transpose")
        found_k = _split(key_t.inputs[0], heads, head_dim) if key_t is not None and \
            _perm(key_t) == [0, 1, 3, 2] else None
        if found_q is None or found_k is None:
            continue
        parts = [found_q, found_k, found_v]
        projections = [_projection(y, heads * head_dim) for _, y in parts]
        if any(p is None for p in projections):
            continue
        found.append(Attention(tuple(projections), tuple(r for r, _ in parts),  # type: ignore[arg-type]
                               merge, output, heads, head_dim))
    return found


def _scores_matmul(softmax: ir.Node) -> ir.Node | None:
    """Return the ``MatMul(Q, K^T)`` before ``softmax``.

    Walks back through at most a scale (Mul / Div) and a mask (Add / Sub) whose other
    operand is a constant or a graph input broadcast over the heads.
    """
    value = softmax.inputs[0]
    for _ in range(3):
        node = value.producer() if value is not None else None
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node
        if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.inputs) != 2:
            return None
        computed = [v for v in node.inputs if v is not None and v.producer() is not None]
        if len(computed) != 1:
            return None
        other = node.inputs[1] if node.inputs[0] is computed[0] else node.inputs[0]
        shape = static_shape(other)
        if other is None or shape is None or (len(shape) == 4 and shape[1] != 1):
            return None  # a per-head operand would need slicing
        value = computed[0]
    return None
