"""Structured channel pruning: physically remove output channels and everything coupled.

The coupled-channel analysis (:mod:`hwcomp.analysis.channels`) says which logical
channels can go and how they group; this pass ranks each group's channels by importance,
removes the least important ``ratio`` of them (keeping a multiple of the target's
channel alignment), and rewrites every affected node so weights and activations really
shrink:

    1. Conv: filters (axis 0) and input columns (axis 1); depthwise: filters and ``group``;
       grouped: filters and the same input slots of every group (``group`` kept);
    2. ConvTranspose: input rows (axis 0) and output columns (axis 1);
    3. Gemm / MatMul: weight rows and columns, per-column bias;
    4. BatchNormalization / InstanceNormalization / PRelu: per-channel parameters;
    5. elementwise ops with a per-channel constant operand: that operand's channels;
    6. Split on channels: the split sizes; Slice on channels: its start and end.

Importance of a logical channel: ``l1`` / ``l2`` norm of its filters in every source
layer (each layer's norms divided by their mean, so layers weigh alike), ``bn`` the
|gamma| of the BatchNormalization nodes it passes through, or ``activation`` the mean
|activation| on calibration data (given as per-tensor channel means).

Post-condition (checked): the model's output names and shapes are unchanged, and shapes
infer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.analysis.channels import ChannelAnalysis, ChannelGroup, analyze_channels, shuffle_pattern
from hwcomp.analysis.cost import graph_cost
from hwcomp.analysis.ffn import Attention, Ffn, find_attention, find_ffns
from hwcomp.errors import HwcompError
from hwcomp.irutil import constant_array, node_input, set_constant_input, static_shape
from hwcomp.model import infer_shapes

logger = logging.getLogger(__name__)

IMPORTANCE = ("l1", "l2", "bn", "activation")


@dataclass(frozen=True)
class GroupChange:
    """One group's channel count before and after."""

    group: str
    before: int
    after: int
    ratio: float


@dataclass
class PruneReport:
    """What pruning did: per group, the frozen tensors and why, and the cost change."""

    groups: list[GroupChange] = field(default_factory=list)
    frozen: dict[str, str] = field(default_factory=dict)
    frozen_layers: dict[str, str] = field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    kept: dict[str, list[int]] = field(default_factory=dict)


class PruneChannelsPass(ir.passes.FunctionalPass):
    """Remove the least important channels of every prunable group.

    Args:
        ratios: One ratio for every group, or ratios by group name or source-layer name
            (groups not named keep all channels); each in [0, 1).
        importance: One of :data:`IMPORTANCE`.
        alignment: Kept channel counts are rounded up to a multiple of this.
        activation_means: For ``activation`` importance: tensor name -> mean |x| per channel.
    """

    def __init__(self, ratios: float | Mapping[str, float], importance: str = "l1",
                 alignment: int = 1,
                 activation_means: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.ratios = ratios
        self.importance = importance
        self.alignment = max(1, alignment)
        self.activation_means = dict(activation_means or {})
        self.report = PruneReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Prune a copy of ``model`` and return it."""
        model = model.clone()
        before = graph_cost(model)
        analysis = analyze_channels(model)
        report = PruneReport(frozen=analysis.frozen, frozen_layers=analysis.frozen_sources,
                             macs_before=before.total_macs, params_before=before.total_params)
        removed: set[tuple[str, int]] = set()
        for group in analysis.groups:
            ratio = self._ratio_for(group)
            drop = self._choose(model, analysis, group, ratio)
            report.groups.append(GroupChange(group.name, group.size, group.size - len(drop), ratio))
            for index in drop:
                removed.update(group.components[index])
        ffns, attentions = find_ffns(model), find_attention(model)
        outputs = [(v.name, static_shape(v)) for v in model.graph.outputs]
        for tensor in {t for t, _ in removed}:
            report.kept[tensor] = [c for c in range(analysis.channels[tensor])
                                   if (tensor, c) not in removed]
        if removed:
            _rewrite(model, removed)
        pruned_ffn = False
        for ffn in ffns:
            pruned_ffn |= self._prune_ffn(model, ffn, report)
        for attention in attentions:
            pruned_ffn |= self._prune_heads(model, attention, report)
        if pruned_ffn:
            common.RemoveUnusedNodesPass()(model)  # and the weights the pruned ones replaced
        if removed or pruned_ffn:
            model = infer_shapes(_clear_shapes(model))
            if [(v.name, static_shape(v)) for v in model.graph.outputs] != outputs:
                raise HwcompError("pruning changed the model's outputs; this is a bug, please report it")
        after = graph_cost(model)
        report.macs_after, report.params_after = after.total_macs, after.total_params
        self.report = report
        return ir.passes.PassResult(model, modified=bool(removed) or pruned_ffn)

    def _prune_ffn(self, model: ir.Model, ffn: Ffn, report: PruneReport) -> bool:
        """Remove the weakest hidden units of one transformer FFN; say whether any went.

        Ranked by the L1 (L2) norms of their W1 column and W2 row, each over its mean,
        whatever ``importance`` says (no BatchNorm, no axis-1 activation there).
        """
        ratio = self._ratio_for(ChannelGroup(ffn.name, (ffn.up.name or "",), ()))
        hidden = ffn.hidden
        keep_count = _kept_count(hidden, ratio, self.alignment)
        report.groups.append(GroupChange(ffn.name, hidden, keep_count, ratio))
        if keep_count >= hidden:
            return False
        up, down = constant_array(node_input(ffn.up, 1)), constant_array(node_input(ffn.down, 1))
        assert up is not None and down is not None
        order = 2 if self.importance == "l2" else 1
        columns = np.linalg.norm(up, ord=order, axis=0)
        rows = np.linalg.norm(down, ord=order, axis=1)
        scores = columns / (columns.mean() or 1.0) + rows / (rows.mean() or 1.0)
        keep = sorted(np.argsort(scores, kind="stable")[hidden - keep_count:].tolist())
        graph = model.graph
        _replace_constant(graph, ffn.up, 1, up[:, keep])
        for node in ffn.between:
            for index, value in enumerate(node.inputs):
                array = constant_array(value)
                if array is not None and array.size == hidden and array.shape[-1] == hidden:
                    _replace_constant(graph, node, index, np.take(array, keep, axis=-1))
        _replace_constant(graph, ffn.down, 1, down[keep, :])
        report.kept[ffn.up.outputs[0].name or ""] = keep
        for layer in (ffn.up.name, ffn.down.name):
            report.frozen_layers.pop(layer or "", None)
        return True

    def _prune_heads(self, model: ir.Model, attention: Attention, report: PruneReport) -> bool:
        """Remove the weakest heads of one multi-head attention; say whether any went.

        A head's score: the norms of its Q, K and V columns and output-projection rows, each
        over its mean. The channel alignment counts the kept heads' width (heads x d).
        """
        ratio = self._ratio_for(ChannelGroup(attention.name, (attention.output.name or "",), ()))
        heads, width = attention.heads, attention.head_dim
        keep_count = _kept_count(heads, ratio, self.alignment, width)
        report.groups.append(GroupChange(attention.name, heads, keep_count, ratio))
        if keep_count >= heads:
            return False
        order = 2 if self.importance == "l2" else 1
        weights = [constant_array(node_input(mm, 1)) for mm, _ in attention.projections]
        out = constant_array(node_input(attention.output, 1))
        assert out is not None and all(w is not None for w in weights)
        scores = np.zeros(heads)
        for norms in [*(np.linalg.norm(w, ord=order, axis=0) for w in weights),  # type: ignore[arg-type]
                      np.linalg.norm(out, ord=order, axis=1)]:
            per_head = norms.reshape(heads, width).sum(axis=1)
            scores += per_head / (per_head.mean() or 1.0)
        keep = sorted(np.argsort(scores, kind="stable")[heads - keep_count:].tolist())
        columns = [h * width + i for h in keep for i in range(width)]
        graph = model.graph
        for (matmul, add), weight in zip(attention.projections, weights, strict=True):
            assert weight is not None
            _replace_constant(graph, matmul, 1, weight[:, columns])
            if add is not None:
                for index, value in enumerate(add.inputs):
                    bias = constant_array(value)
                    if bias is not None and bias.shape == (heads * width,):
                        _replace_constant(graph, add, index, bias[columns])
            report.kept[matmul.outputs[0].name or ""] = columns
            report.frozen_layers.pop(matmul.name or "", None)
        for split in attention.splits:
            target = constant_array(node_input(split, 1))
            if target is not None and len(target) == 4 and target[2] == heads:
                new_target = target.copy()
                new_target[2] = keep_count
                _replace_constant(graph, split, 1, new_target)
        target = constant_array(node_input(attention.merge, 1))
        if target is not None and target[-1] == heads * width:
            new_target = target.copy()
            new_target[-1] = keep_count * width
            _replace_constant(graph, attention.merge, 1, new_target)
        _replace_constant(graph, attention.output, 1, out[columns, :])
        report.frozen_layers.pop(attention.output.name or "", None)
        return True

    def _ratio_for(self, group: ChannelGroup) -> float:
        if isinstance(self.ratios, int | float):
            return float(self.ratios)
        for key in (group.name, *group.sources):
            if key in self.ratios:
                return float(self.ratios[key])
        return 0.0

    def _choose(self, model: ir.Model, analysis: ChannelAnalysis, group: ChannelGroup,
                ratio: float) -> list[int]:
        """Return the indices (into ``group.components``) of the channels to remove."""
        # A logical channel of a grouped conv spans one slot of each of its groups.
        keep = _kept_count(group.size, ratio, self.alignment, _multiplicity(model, group))
        if keep >= group.size:
            return []
        scores = self._scores(model, group)
        return sorted(np.argsort(scores, kind="stable")[: group.size - keep].tolist())

    def _scores(self, model: ir.Model, group: ChannelGroup) -> np.ndarray:
        if self.importance == "activation":
            return _activation_scores(group, self.activation_means)
        if self.importance == "bn":
            scores = _bn_scores(model, group)
            if scores is not None:
                return scores
        return _norm_scores(model, group, 2 if self.importance == "l2" else 1)


def prunable_units(model: ir.Model) -> list[str]:
    """Return the names a ratio applies to: channel groups, FFN hidden units, attention heads.

    What ``--prune auto`` and ``--optimize`` choose ratios for (the names of a ratio file).
    """
    return ([group.name for group in analyze_channels(model).groups]
            + [ffn.name for ffn in find_ffns(model)]
            + [attention.name for attention in find_attention(model)])


def _kept_count(size: int, ratio: float, alignment: int, width: int = 1) -> int:
    """Return how many of ``size`` units to keep at ``ratio``, rounded up to the alignment.

    The alignment is in channels and each unit spans ``width`` of them (a head's width, a
    grouped conv's groups), so fewer units may make a multiple of it; at least one step.
    """
    unit = alignment // math.gcd(alignment, width)
    keep = size - int(math.floor(ratio * size))
    return min(size, max(unit, math.ceil(keep / unit) * unit))


def _multiplicity(model: ir.Model, group: ChannelGroup) -> int:
    """Return how many channels of its source's output each logical channel of ``group`` spans."""
    node = next((n for n in model.graph if n.name == group.sources[0]), None)
    tensor = node.outputs[0].name if node is not None else None
    counts = [sum(1 for t, _ in component if t == tensor) for component in group.components]
    return max(1, min(counts, default=1))


def _out_axis(node: ir.Node) -> int:
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 1 if node.op_type in ("ConvTranspose", "MatMul") else 0


def _norm_scores(model: ir.Model, group: ChannelGroup, order: int) -> np.ndarray:
    scores = np.zeros(group.size)
    for source in group.sources:
        node = next(n for n in model.graph if n.name == source)
        weight = constant_array(node_input(node, 1))
        assert weight is not None
        moved = np.moveaxis(weight, _out_axis(node), 0).reshape(weight.shape[_out_axis(node)], -1)
        norms = np.linalg.norm(moved, ord=order, axis=1)
        norms = norms / (norms.mean() or 1.0)
        tensor = node.outputs[0].name
        for index, component in enumerate(group.components):
            scores[index] += sum(norms[c] for t, c in component if t == tensor)
    return scores


def _bn_scores(model: ir.Model, group: ChannelGroup) -> np.ndarray | None:
    gammas = {}
    for node in model.graph:
        if node.op_type == "BatchNormalization" and node.inputs[0] is not None:
            gamma = constant_array(node_input(node, 1))
            if gamma is not None:
                gammas[node.inputs[0].name] = np.abs(gamma)
    scores = np.zeros(group.size)
    found = False
    for index, component in enumerate(group.components):
        values = [gammas[t][c] for t, c in component if t in gammas]
        if values:
            found = True
            scores[index] = float(np.mean(values))
    return scores if found else None


def _activation_scores(group: ChannelGroup, means: Mapping[str, np.ndarray]) -> np.ndarray:
    scores = np.zeros(group.size)
    for index, component in enumerate(group.components):
        values = [means[t][c] / (means[t].mean() or 1.0) for t, c in component if t in means]
        scores[index] = float(np.mean(values)) if values else 0.0
    return scores


# --- rewriting ---------------------------------------------------------------------------

def _kept(value: ir.Value | None, removed: set[tuple[str, int]]) -> list[int] | None:
    """Kept channel indices of ``value``, or None when it loses none."""
    shape = static_shape(value)
    if value is None or shape is None or len(shape) < 2 or value.const_value is not None:
        return None
    kept = [c for c in range(shape[1]) if (value.name, c) not in removed]
    return None if len(kept) == shape[1] else kept


def _replace_constant(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray) -> None:
    set_constant_input(graph, node, index, array, f"{node.name}_in{index}_pruned")


def _take(graph: ir.Graph, node: ir.Node, index: int, keep: list[int] | None, axis: int) -> None:
    array = constant_array(node_input(node, index))
    if keep is None or array is None:
        return
    _replace_constant(graph, node, index, np.take(array, keep, axis=axis))


def _rewrite(model: ir.Model, removed: set[tuple[str, int]]) -> None:
    graph = model.graph
    for node in list(graph):
        keep_in = _kept(node.inputs[0] if node.inputs else None, removed)
        keep_out = _kept(node.outputs[0] if node.outputs else None, removed)
        op = node.op_type
        if op == "Conv":
            groups = node.attributes.get_int("group", 1)
            _take(graph, node, 1, keep_out, 0)
            _take(graph, node, 2, keep_out, 0)
            weight = constant_array(node_input(node, 1))
            if groups == 1:
                _take(graph, node, 1, keep_in, 1)
            elif keep_in is not None and weight is not None and weight.shape[1] > 1:
                # Grouped: the same slots go in every group (the analysis couples them).
                per_group = weight.shape[1]
                _take(graph, node, 1, sorted({c % per_group for c in keep_in}), 1)
            elif keep_in is not None:
                node.attributes["group"] = ir.AttrInt64("group", len(keep_in))
        elif op == "ConvTranspose":
            _take(graph, node, 1, keep_in, 0)
            _take(graph, node, 1, keep_out, 1)
            _take(graph, node, 2, keep_out, 0)
        elif op in ("Gemm", "MatMul"):
            trans_b = node.attributes.get_int("transB", 0) if op == "Gemm" else 0
            _take(graph, node, 1, keep_out, 0 if trans_b else 1)
            _take(graph, node, 1, keep_in, 1 if trans_b else 0)
            bias = constant_array(node_input(node, 2))
            if op == "Gemm" and bias is not None and keep_out is not None and bias.shape[-1] > 1:
                _take(graph, node, 2, keep_out, bias.ndim - 1)
        elif op in ("BatchNormalization", "InstanceNormalization"):
            for index in range(1, len(node.inputs)):
                _take(graph, node, index, keep_in, 0)
        elif op == "Reshape":
            _rewrite_reshape(graph, node, keep_in, keep_out)
        elif op == "Split":
            _rewrite_split(graph, node, removed)
        elif op == "Slice":
            _rewrite_slice(graph, node, removed)
        elif keep_out is not None:
            _slice_constant_operands(graph, node, keep_out)
    common.RemoveUnusedNodesPass()(model)


def _slice_constant_operands(graph: ir.Graph, node: ir.Node, keep_out: list[int]) -> None:
    """Case 5: per-channel constants of elementwise ops (and PRelu's slope)."""
    out_rank = len(static_shape(node.outputs[0]) or [])
    channels = (static_shape(node.outputs[0]) or [0, 0])[1]
    for index, value in enumerate(node.inputs):
        array = constant_array(value)
        if array is None:
            continue
        axis = array.ndim - (out_rank - 1)
        if 0 <= axis < array.ndim and array.shape[axis] == channels and channels > 1:
            _replace_constant(graph, node, index, np.take(array, keep_out, axis=axis))


def _rewrite_reshape(graph: ir.Graph, node: ir.Node, keep_in: list[int] | None,
                     keep_out: list[int] | None) -> None:
    """Rewrite a coupled Reshape: a flatten (now ``[N, -1]``) or one keeping axis 1."""
    target = constant_array(node_input(node, 1))
    if target is None or len(target) < 2 or (keep_in is None and keep_out is None):
        return
    new_target = target.copy()
    shuffle = shuffle_pattern(node)
    if shuffle is not None and keep_in is not None:
        # A channel shuffle's split [N, G, C/G, ...]: every group kept the same slots.
        groups = shuffle[2]
        new_target[1], new_target[2] = groups, len(keep_in) // groups
        _replace_constant(graph, node, 1, new_target)
        return
    if len(target) == 2 and len(static_shape(node.inputs[0]) or []) > 2:
        new_target[1] = -1
    elif keep_out is not None and target[1] > 0:
        new_target[1] = len(keep_out)
    _replace_constant(graph, node, 1, new_target)


def _rewrite_split(graph: ir.Graph, node: ir.Node, removed: set[tuple[str, int]]) -> None:
    rank = len(static_shape(node.inputs[0]) or [])
    if node.attributes.get_int("axis", 0) % max(rank, 1) != 1:
        return
    sizes = [len([c for c in range((static_shape(o) or [0, 0])[1]) if (o.name, c) not in removed])
             for o in node.outputs]
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        _replace_constant(graph, node, 1, np.array(sizes, np.int64))
    elif "split" in node.attributes:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)


def _rewrite_slice(graph: ir.Graph, node: ir.Node, removed: set[tuple[str, int]]) -> None:
    data = node.inputs[0]
    shape = static_shape(data)
    starts, ends = constant_array(node_input(node, 1)), constant_array(node_input(node, 2))
    if data is None or shape is None or starts is None or ends is None:
        return
    axes = constant_array(node_input(node, 3))
    axes_list = [int(a) % len(shape) for a in (axes if axes is not None else range(len(starts)))]
    if 1 not in axes_list:
        return
    i = axes_list.index(1)
    count = shape[1]
    start = int(starts[i]) + (count if int(starts[i]) < 0 else 0)
    end = min(count, int(ends[i]) + (count if int(ends[i]) < 0 else 0))
    start = max(0, min(count, start))
    kept_before = len([c for c in range(start) if (data.name, c) not in removed])
    kept_inside = len([c for c in range(start, end) if (data.name, c) not in removed])
    new_starts, new_ends = starts.copy(), ends.copy()
    new_starts[i], new_ends[i] = kept_before, kept_before + kept_inside
    _replace_constant(graph, node, 1, new_starts)
    _replace_constant(graph, node, 2, new_ends)


def _clear_shapes(model: ir.Model) -> ir.Model:
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph:
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None
    return model
