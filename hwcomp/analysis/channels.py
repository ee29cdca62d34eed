"""Coupled channels: which channels of which tensors must be pruned together.

Removing output channel ``c`` of a Conv removes channel ``c`` of every tensor it flows
into unchanged — through activations, BatchNormalization, pooling, residual Adds, the
matching slice of a Concat, a depthwise conv, or the ``H*W`` features a Flatten feeds a
Gemm. This analysis links individual channels ``(tensor, index)`` in a ``networkx`` graph
with one rule per op type (:data:`RULES`); each connected component is one *logical
channel* that is kept or removed as a whole.

A component can be removed only when it contains an output channel of a layer with
constant weights (a *source*: Conv, ConvTranspose, Gemm, MatMul) and touches no frozen
tensor. Tensors are frozen where the mapping is not provable or not changeable: graph
inputs and outputs, ops without a rule, grouped (non-depthwise) convs, Transposes that
move the channel axis, Reshapes other than a flatten, softmax over channels, and so on.
Every frozen tensor carries the node and the reason, and the report shows them.

Components are gathered into *groups* by the set of source layers they belong to: a
plain conv's output channels form one group; a residual stage, whose Add couples several
convs, forms one group spanning all of them. Ratios apply per group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_ir as ir

from hwcomp.irutil import constant_array, node_input, static_shape

logger = logging.getLogger(__name__)

CHANNEL_AXIS = 1
SOURCE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

_UNARY = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu",
    "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Identity", "Dropout", "Cast", "Erf",
    "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize",
    "Upsample", "BatchNormalization", "InstanceNormalization",
    # LRN normalises each channel over its neighbours; after pruning it normalises over
    # the kept neighbours, an approximation like any pruning, but a valid graph.
    "LRN",
})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"})


@dataclass
class ChannelGraph:
    """Links between channels, frozen tensors and the sources, as the rules found them."""

    links: nx.Graph = field(default_factory=nx.Graph)
    frozen: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    frozen_layers: dict[str, str] = field(default_factory=dict)

    def add_tensor(self, value: ir.Value | None) -> int:
        """Register a tensor's channel elements; return its channel count (0 if none)."""
        if value is None or not value.name:
            return 0
        shape = static_shape(value)
        if shape is None or len(shape) <= CHANNEL_AXIS or value.const_value is not None:
            return 0
        count = shape[CHANNEL_AXIS]
        if value.name not in self.channels:
            self.channels[value.name] = count
            self.links.add_nodes_from((value.name, c) for c in range(count))
        return count

    def couple(self, a: ir.Value | None, b: ir.Value | None) -> None:
        """Link channel ``c`` of ``a`` with channel ``c`` of ``b`` for every ``c``."""
        count_a, count_b = self.add_tensor(a), self.add_tensor(b)
        if not count_a or not count_b:
            return
        if count_a != count_b:
            self.freeze(a, f"channel counts differ ({count_a} vs {count_b})")
            self.freeze(b, f"channel counts differ ({count_a} vs {count_b})")
            return
        assert a is not None and b is not None
        self.links.add_edges_from(((a.name, c), (b.name, c)) for c in range(count_a))

    def freeze(self, value: ir.Value | None, reason: str) -> None:
        """Keep every channel of ``value`` (the first reason given wins)."""
        if self.add_tensor(value) and value is not None and value.name:
            self.frozen.setdefault(value.name, reason)


Rule = Callable[[ChannelGraph, ir.Node], None]


def _name(value: ir.Value | None) -> str:
    return value.name or "" if value is not None else ""


def _unary(graph: ChannelGraph, node: ir.Node) -> None:
    graph.couple(node.inputs[0], node.outputs[0])
    for extra in node.outputs[1:]:
        graph.freeze(extra, f"{node.name}: extra output of {node.op_type}")


def _binary(graph: ChannelGraph, node: ir.Node) -> None:
    out = node.outputs[0]
    out_count = graph.add_tensor(out)
    for value in node.inputs:
        shape = static_shape(value)
        if value is None or value.const_value is not None or shape is None:
            continue  # constants are sliced per channel by the pruning pass
        aligned = len(shape) - (len(static_shape(out) or []) - CHANNEL_AXIS)
        if aligned < 0 or shape[aligned] == 1:
            continue  # broadcast along channels: no coupling
        if aligned == CHANNEL_AXIS and shape[aligned] == out_count:
            graph.couple(value, out)
        else:
            graph.freeze(value, f"{node.name}: {node.op_type} operand of unexpected rank")
            graph.freeze(out, f"{node.name}: {node.op_type} operand of unexpected rank")


def _conv(graph: ChannelGraph, node: ir.Node) -> None:
    data, weight, out = node.inputs[0], node_input(node, 1), node.outputs[0]
    in_count, out_count = graph.add_tensor(data), graph.add_tensor(out)
    groups = node.attributes.get_int("group", 1)
    if weight is None or weight.const_value is None:
        _source_layer(graph, node, f"{node.name}: Conv weight is not constant")
        return
    if groups == 1:
        _source_layer(graph, node, "")
        return
    if groups == in_count and out_count % in_count == 0:
        # Depthwise (channel multiplier m): output c*m + j comes from input c alone.
        multiplier = out_count // in_count
        graph.links.add_edges_from(
            ((_name(data), c), (_name(out), c * multiplier + j))
            for c in range(in_count) for j in range(multiplier)
        )
        return
    if in_count % groups == 0 and out_count % groups == 0:
        # Grouped (RegNet, ResNeXt): prune the same slot in every group, so the groups stay
        # equal. Input channel g*k+j of every group g is one channel (whatever feeds it loses
        # that slot in every group); so is output g*k'+j, of which this conv is the source.
        _source_layer(graph, node, "")
        for value, per_group in ((data, in_count // groups), (out, out_count // groups)):
            graph.links.add_edges_from(
                ((_name(value), j), (_name(value), g * per_group + j))
                for g in range(1, groups) for j in range(per_group))
        return
    _source_layer(graph, node,
                  f"{node.name}: grouped convolution (group={groups}) needs equal channels per group")


def _conv_transpose(graph: ChannelGraph, node: ir.Node) -> None:
    weight = node_input(node, 1)
    grouped = node.attributes.get_int("group", 1) != 1
    constant = weight is not None and weight.const_value is not None
    _source_layer(graph, node, "" if constant and not grouped
                  else f"{node.name}: grouped or runtime-weight ConvTranspose")


def _gemm(graph: ChannelGraph, node: ir.Node) -> None:
    data, weight, bias = node.inputs[0], node_input(node, 1), node_input(node, 2)
    ok = (weight is not None and weight.const_value is not None
          and not node.attributes.get_int("transA", 0)
          and (bias is None or bias.const_value is not None))
    if node.op_type == "MatMul":
        ok = ok and len(static_shape(data) or []) == 2 and len(static_shape(weight) or []) == 2
    _source_layer(graph, node, "" if ok else
                  f"{node.name}: {node.op_type} without a constant 2-D weight on 2-D input")


def _source_layer(graph: ChannelGraph, node: ir.Node, problem: str) -> None:
    """Register a layer's input and output; it is a source unless ``problem`` says why not."""
    data, out = node.inputs[0], node.outputs[0]
    graph.add_tensor(data)
    graph.add_tensor(out)
    if problem:
        graph.freeze(data, problem)
        graph.freeze(out, problem)
        graph.frozen_layers[node.name or ""] = problem
    else:
        graph.sources[out.name or ""] = node.name or ""


def _concat(graph: ChannelGraph, node: ir.Node) -> None:
    _channel_segments(graph, node, node.outputs[0], list(node.inputs))


def _split(graph: ChannelGraph, node: ir.Node) -> None:
    _channel_segments(graph, node, node.inputs[0], list(node.outputs))


def _channel_segments(graph: ChannelGraph, node: ir.Node, whole: ir.Value | None,
                      parts: list[ir.Value | None]) -> None:
    """Concat/Split: along channels, part ``i`` is ``whole``'s channels at its offset."""
    rank = len(static_shape(whole) or [])
    if node.attributes.get_int("axis", 0) % max(rank, 1) != CHANNEL_AXIS:
        for part in parts:
            graph.couple(part, whole)
        return
    graph.add_tensor(whole)
    offset = 0
    for part in parts:
        count = graph.add_tensor(part)
        if part is None or not count:
            graph.freeze(whole, f"{node.name}: {node.op_type} with a constant part along channels")
            count = (static_shape(part) or [0, 0])[CHANNEL_AXIS] if part is not None else 0
        else:
            graph.links.add_edges_from(
                ((_name(whole), offset + c), (_name(part), c)) for c in range(count))
        offset += count


def _slice(graph: ChannelGraph, node: ir.Node) -> None:
    data, out = node.inputs[0], node.outputs[0]
    rank = len(static_shape(data) or [])
    starts, ends = constant_array(node_input(node, 1)), constant_array(node_input(node, 2))
    axes = constant_array(node_input(node, 3))
    steps = constant_array(node_input(node, 4))
    if starts is None or ends is None:
        graph.freeze(data, f"{node.name}: Slice bounds are not constant")
        graph.freeze(out, f"{node.name}: Slice bounds are not constant")
        return
    axes = axes if axes is not None else np.arange(len(starts))
    normalized = [int(a) % rank for a in axes]
    if CHANNEL_AXIS not in normalized:
        graph.couple(data, out)
        return
    i = normalized.index(CHANNEL_AXIS)
    if steps is not None and int(steps[i]) != 1:
        graph.freeze(data, f"{node.name}: Slice on channels with a step")
        graph.freeze(out, f"{node.name}: Slice on channels with a step")
        return
    count_in, count_out = graph.add_tensor(data), graph.add_tensor(out)
    start = int(starts[i])
    start = max(0, min(count_in, start + count_in if start < 0 else start))
    graph.links.add_edges_from(((_name(data), start + c), (_name(out), c)) for c in range(count_out))


def _flatten_like(graph: ChannelGraph, node: ir.Node) -> None:
    data, out = node.inputs[0], node.outputs[0]
    in_shape, out_shape = static_shape(data), static_shape(out)
    provable = (in_shape is not None and out_shape is not None and len(out_shape) == 2
                and len(in_shape) >= 2 and out_shape[0] == in_shape[0])
    if node.op_type == "Flatten":
        provable = provable and node.attributes.get_int("axis", 1) == 1
    else:
        target = constant_array(node_input(node, 1))
        flat = int(np.prod(in_shape[1:])) if in_shape is not None else -2
        # [N, -1] or the explicit [N, C*H*W]; the pruning pass rewrites the latter to -1.
        provable = provable and target is not None and len(target) == 2 and int(target[1]) in (-1, flat)
    if not provable:
        if out_shape is not None and in_shape is not None and in_shape[:2] == out_shape[:2]:
            graph.couple(data, out)  # channel axis untouched (e.g. [N, C, H, W] -> [N, C, HW])
            return
        reason = f"{node.name}: {node.op_type} that is not a flatten to [N, C*H*W]"
        graph.freeze(data, reason)
        graph.freeze(out, reason)
        return
    assert in_shape is not None
    graph.add_tensor(data)
    graph.add_tensor(out)
    per_channel = int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1
    graph.links.add_edges_from(
        ((_name(data), c), (_name(out), c * per_channel + s))
        for c in range(in_shape[1]) for s in range(per_channel)
    )


def _transpose(graph: ChannelGraph, node: ir.Node) -> None:
    perm = node.attributes.get_ints("perm", [])
    if perm and len(perm) > CHANNEL_AXIS and perm[CHANNEL_AXIS] == CHANNEL_AXIS:
        graph.couple(node.inputs[0], node.outputs[0])
        return
    reason = f"{node.name}: Transpose moves the channel axis (perm {perm})"
    graph.freeze(node.inputs[0], reason)
    graph.freeze(node.outputs[0], reason)


def _axis_sensitive(graph: ChannelGraph, node: ir.Node) -> None:
    """Softmax, reductions, Pad: coupled unless they act along the channel axis."""
    data, out = node.inputs[0], node.outputs[0]
    rank = len(static_shape(data) or [])
    if node.op_type in ("Softmax", "LogSoftmax"):
        touches = node.attributes.get_int("axis", -1) % max(rank, 1) == CHANNEL_AXIS
    elif node.op_type == "Pad":
        pads = constant_array(node_input(node, 1))
        touches = (pads is None or pads.size < 2 * rank
                   or bool(pads[CHANNEL_AXIS] or pads[rank + CHANNEL_AXIS]))
    else:
        axes_input = constant_array(node_input(node, 1))
        axes = list(node.attributes.get_ints("axes", [])) or (
            [int(a) for a in axes_input] if axes_input is not None else [])
        keepdims = node.attributes.get_int("keepdims", 1)
        touches = not axes or CHANNEL_AXIS in [int(a) % rank for a in axes] or not keepdims
    if touches:
        reason = f"{node.name}: {node.op_type} acts along the channel axis"
        graph.freeze(data, reason)
        graph.freeze(out, reason)
    else:
        graph.couple(data, out)


RULES: dict[str, Rule] = {
    **{op: _unary for op in _UNARY},
    **{op: _binary for op in _BINARY},
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _gemm,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Flatten": _flatten_like,
    "Reshape": _flatten_like,
    "Transpose": _transpose,
    "Softmax": _axis_sensitive,
    "LogSoftmax": _axis_sensitive,
    "ReduceMean": _axis_sensitive,
    "ReduceMax": _axis_sensitive,
    "ReduceSum": _axis_sensitive,
    "Pad": _axis_sensitive,
}


@dataclass(frozen=True)
class ChannelGroup:
    """Logical channels that share their source layers, pruned by one ratio.

    Attributes:
        name: The source layers, joined (stable, readable).
        sources: Node names of the layers whose output channels these are.
        components: Each logical channel: the ``(tensor, channel)`` elements it spans.
    """

    name: str
    sources: tuple[str, ...]
    components: tuple[tuple[tuple[str, int], ...], ...]

    @property
    def size(self) -> int:
        """Number of logical channels."""
        return len(self.components)


@dataclass(frozen=True)
class ChannelAnalysis:
    """Prunable groups, and the frozen tensors with the node and reason for each."""

    groups: list[ChannelGroup]
    frozen: dict[str, str]
    frozen_sources: dict[str, str]
    channels: dict[str, int]


def build_channel_graph(model: ir.Model) -> ChannelGraph:
    """Apply the rules to every node; freeze graph inputs/outputs and unknown ops."""
    graph = ChannelGraph()
    for value in model.graph.inputs:
        graph.freeze(value, f"model input '{value.name}' keeps its shape")
    shuffled = _channel_shuffles(graph, model)
    for node in model.graph:
        if id(node) in shuffled:
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            for touched in [*node.inputs, *node.outputs]:
                graph.freeze(touched, f"{node.name}: no channel rule for op {node.op_type}")
            continue
        rule(graph, node)
    for value in model.graph.outputs:
        graph.freeze(value, f"model output '{value.name}' keeps its shape")
    return graph


def shuffle_pattern(node: ir.Node) -> tuple[ir.Node, ir.Node, int, int] | None:
    """Match a channel shuffle starting at ``node``.

    The pattern: Reshape ``[N, C, ...] -> [N, G, C/G, ...]``, Transpose ``perm [0, 2, 1,
    ...]``, Reshape back to ``[N, C, ...]``. Returns the Transpose, the second Reshape, G
    and C/G; None when ``node`` starts none.
    """
    if node.op_type != "Reshape" or not node.outputs:
        return None
    data, split = node.inputs[0], node.outputs[0]
    in_shape, mid_shape = static_shape(data), static_shape(split)
    if in_shape is None or mid_shape is None or len(mid_shape) != len(in_shape) + 1:
        return None
    if mid_shape[0] != in_shape[0] or mid_shape[3:] != in_shape[2:] or \
            mid_shape[1] * mid_shape[2] != in_shape[1]:
        return None
    uses = list(split.uses())
    if len(uses) != 1 or uses[0].node.op_type != "Transpose":
        return None
    transpose = uses[0].node
    perm = list(transpose.attributes.get_ints("perm", []))
    if perm != [0, 2, 1, *range(3, len(mid_shape))]:
        return None
    after = list(transpose.outputs[0].uses())
    if len(after) != 1 or after[0].node.op_type != "Reshape":
        return None
    back = after[0].node
    if static_shape(back.outputs[0]) != in_shape:
        return None
    return transpose, back, mid_shape[1], mid_shape[2]


def _channel_shuffles(graph: ChannelGraph, model: ir.Model) -> set[int]:
    """Couple each channel shuffle's input and output channels; return the nodes it covers.

    Output channel ``i*G + g`` is input channel ``g*k + i`` (k = C/G). Pruning keeps the
    shuffle a shuffle only if every group loses the same slots, so slot ``i`` of all groups
    is one logical channel (on both sides).
    """
    covered: set[int] = set()
    for node in model.graph:
        found = shuffle_pattern(node)
        if found is None:
            continue
        transpose, back, groups, per_group = found
        data, out = node.inputs[0], back.outputs[0]
        graph.add_tensor(data)
        graph.add_tensor(out)
        graph.links.add_edges_from(
            ((_name(data), g * per_group + i), (_name(out), i * groups + g))
            for g in range(groups) for i in range(per_group))
        graph.links.add_edges_from(
            ((_name(data), i), (_name(data), g * per_group + i))
            for g in range(1, groups) for i in range(per_group))
        covered.update({id(node), id(transpose), id(back)})
    return covered


def analyze_channels(model: ir.Model) -> ChannelAnalysis:
    """Group the prunable logical channels of ``model`` (shapes must be static)."""
    graph = build_channel_graph(model)
    groups: dict[tuple[str, ...], list[tuple[tuple[str, int], ...]]] = {}
    frozen_sources: dict[str, str] = {}
    for component in nx.connected_components(graph.links):
        tensors = {name for name, _ in component}
        sources = tuple(sorted({graph.sources[t] for t in tensors if t in graph.sources}))
        if not sources:
            continue
        blocked = sorted(t for t in tensors if t in graph.frozen)
        if blocked:
            for source in sources:
                frozen_sources.setdefault(source, graph.frozen[blocked[0]])
            continue
        groups.setdefault(sources, []).append(tuple(sorted(component)))
    result = [
        ChannelGroup(name="+".join(sources), sources=sources,
                     components=tuple(sorted(comps, key=_source_order(graph))))
        for sources, comps in groups.items()
    ]
    # A source whose channels are all prunable is not frozen, even if others were.
    prunable = {s for g in result for s in g.sources}
    frozen_sources = {k: v for k, v in {**frozen_sources, **graph.frozen_layers}.items()
                      if k not in prunable}
    result.sort(key=lambda g: g.name)
    logger.info("channel groups: %d prunable, %d frozen tensors", len(result), len(graph.frozen))
    return ChannelAnalysis(groups=result, frozen=dict(graph.frozen), frozen_sources=frozen_sources,
                           channels=dict(graph.channels))


def _source_order(graph: ChannelGraph) -> Callable[[tuple[tuple[str, int], ...]], tuple]:
    def key(component: tuple[tuple[str, int], ...]) -> tuple:
        return min((c, t) for t, c in component if t in graph.sources) if any(
            t in graph.sources for t, _ in component) else (0, "")

    return key
