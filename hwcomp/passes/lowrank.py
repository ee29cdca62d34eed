"""Low-rank splitting: replace a weight by the product of two thinner factors (SVD).

Cases handled:
    1. Gemm / MatMul with a constant 2-D weight ``W`` (``K x N``): ``x @ W`` becomes
       ``(x @ A) @ B`` with ``A = U_r sqrt(S_r)`` (``K x r``) and ``B = sqrt(S_r) V_r^T``;
       the bias stays on the second factor.
    2. Conv (group 1), *channel* SVD: the ``C_out x (C_in k_h k_w)`` matrix splits into a
       ``k_h x k_w`` conv with ``r`` filters (same stride, padding, dilation) and a 1x1 conv.
    3. Conv with a kernel larger than 1x1, *spatial* SVD: the ``(C_in k_h) x (C_out k_w)``
       matrix splits into a ``k_h x 1`` conv with ``r`` outputs and a ``1 x k_w`` conv.

The rank keeps ``energy`` of the squared singular values and is rounded up to the
channel alignment. A layer is split only where the target's roofline estimate says the
two factors run faster than the original (channel or spatial SVD, whichever is faster);
every layer left alone is reported with the reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.analysis.cost import NodeCost
from hwcomp.analysis.roofline import layer_estimate
from hwcomp.irutil import add_constant, constant_array, node_input, static_shape
from hwcomp.targets import Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitChange:
    """One layer that was split."""

    layer: str
    mode: str
    rank: int
    full_rank: int
    time_before_s: float
    time_after_s: float


@dataclass
class LowRankReport:
    """Layers split, and layers left alone with why."""

    split: list[SplitChange] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    mode: str
    rank: int
    full_rank: int
    time_s: float


class LowRankPass(ir.passes.InPlacePass):
    """Split Gemm/MatMul/Conv weights into two low-rank factors where it pays.

    Args:
        energy: Fraction of squared singular values kept, in (0, 1]; 1 keeps full rank.
        target: Profile whose roofline decides whether a split is faster.
        alignment: The rank rounds up to a multiple of this.
        layers: Only these layers (by node name) when given.
    """

    def __init__(self, energy: float, target: Target, alignment: int = 1,
                 layers: set[str] | None = None) -> None:
        super().__init__()
        self.energy = energy
        self.target = target
        self.alignment = max(1, alignment)
        self.layers = layers
        self.report = LowRankReport()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Split every layer that qualifies."""
        self.report = LowRankReport()
        graph = model.graph
        for node in list(graph):
            if node.op_type not in ("Gemm", "MatMul", "Conv"):
                continue
            if self.layers is not None and node.name not in self.layers:
                continue
            plan, reason = self._plan(node)
            if plan is None:
                self.report.skipped[node.name or node.op_type] = reason
                continue
            before = self._time(node, _macs_of(node), _weight_elements(node))
            _SPLITTERS[plan.mode](graph, node, plan.rank)
            self.report.split.append(SplitChange(node.name or "", plan.mode, plan.rank,
                                                 plan.full_rank, before, plan.time_s))
        if self.report.split:
            common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=bool(self.report.split))

    def _plan(self, node: ir.Node) -> tuple[_Plan | None, str]:
        matrices = _matrices(node)
        if isinstance(matrices, str):
            return None, matrices
        before = self._time(node, _macs_of(node), _weight_elements(node))
        best: _Plan | None = None
        for mode, matrix in matrices.items():
            singular = np.linalg.svd(matrix, compute_uv=False)
            rank = self._rank(singular)
            macs, params = _factor_cost(node, mode, rank)
            plan = _Plan(mode, rank, len(singular), self._time(node, macs, params))
            if best is None or plan.time_s < best.time_s:
                best = plan
        assert best is not None
        if best.rank >= best.full_rank:
            return None, f"keeping {self.energy:.0%} of the energy needs full rank {best.full_rank}"
        if best.time_s >= before:
            return None, (f"not faster on {self.target.name}: rank {best.rank} of {best.full_rank} "
                          f"estimates {best.time_s * 1e6:.1f} us vs {before * 1e6:.1f} us")
        return best, ""

    def _rank(self, singular: np.ndarray) -> int:
        if self.energy >= 1.0:
            return len(singular)  # full rank: the identity transformation
        energy = np.cumsum(singular**2) / max(float((singular**2).sum()), 1e-30)
        rank = int(np.searchsorted(energy, self.energy - 1e-12) + 1)
        rank = math.ceil(rank / self.alignment) * self.alignment
        return min(rank, len(singular))

    def _time(self, node: ir.Node, macs: int, weight_elements: int) -> float:
        """Roofline time of ``macs`` with the node's activations and ``weight_elements``."""
        itemsize = 4
        data = static_shape(node.inputs[0]) or []
        out = static_shape(node.outputs[0]) or []
        cost = NodeCost(node.name or "", node.op_type, tuple(out), macs, 2 * macs, weight_elements,
                        itemsize * weight_elements, itemsize * int(np.prod(data)),
                        itemsize * int(np.prod(out)), "float32", "fp32")
        return layer_estimate(cost, self.target).time_s


def _trans_b(node: ir.Node) -> bool:
    transposed: int = node.attributes.get_int("transB", 0) if node.op_type == "Gemm" else 0
    return bool(transposed)


def _weight(node: ir.Node) -> np.ndarray | None:
    return constant_array(node_input(node, 1))


def _matrices(node: ir.Node) -> dict[str, np.ndarray] | str:
    """Return the matrix each applicable mode factorises, or why none applies."""
    weight = _weight(node)
    if weight is None:
        return "weight is not constant"
    if node.op_type in ("Gemm", "MatMul"):
        if weight.ndim != 2:
            return "weight is not a matrix"
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0) != 0:
            return "transA is set"
        return {"matrix": (weight.T if _trans_b(node) else weight).astype(np.float64)}
    if node.attributes.get_int("group", 1) != 1:
        return "grouped convolution"
    if weight.ndim != 4:
        return "only 2-D convolutions are split"
    c_out, c_in, k_h, k_w = weight.shape
    modes = {"channel": weight.reshape(c_out, -1).astype(np.float64)}
    if k_h > 1 and k_w > 1:
        modes["spatial"] = weight.transpose(1, 2, 0, 3).reshape(c_in * k_h, c_out * k_w).astype(np.float64)
    return modes


def _macs_of(node: ir.Node) -> int:
    out = static_shape(node.outputs[0]) or []
    weight = _weight(node)
    assert weight is not None
    if node.op_type == "Conv":
        return int(np.prod(out)) * int(np.prod(weight.shape[1:]))
    return int(np.prod(out)) * (weight.shape[1] if _trans_b(node) else weight.shape[0])


def _weight_elements(node: ir.Node) -> int:
    weight = _weight(node)
    return int(weight.size) if weight is not None else 0


def _factor_cost(node: ir.Node, mode: str, rank: int) -> tuple[int, int]:
    """MACs and weight elements of the two factors."""
    weight = _weight(node)
    assert weight is not None
    out = static_shape(node.outputs[0]) or []
    if mode == "matrix":
        k = int(weight.shape[1] if _trans_b(node) else weight.shape[0])
        n = out[-1]
        rows = int(np.prod(out[:-1]))
        return rows * rank * (k + n), rank * (k + n)
    c_out, c_in, k_h, k_w = weight.shape
    pixels = int(np.prod(out[2:])) * out[0]
    if mode == "channel":
        return pixels * rank * (c_in * k_h * k_w + c_out), rank * (c_in * k_h * k_w + c_out)
    # Spatial: the k_h x 1 conv runs at the output's height and the input's width (stride 1
    # along x), an upper bound; the 1 x k_w conv at the output size.
    data = static_shape(node.inputs[0]) or [1, 1, 1, 1]
    first = out[0] * out[2] * data[3] * rank * c_in * k_h
    second = pixels * c_out * rank * k_w
    return first + second, rank * (c_in * k_h + c_out * k_w)


def _factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def _split_matrix(graph: ir.Graph, node: ir.Node, rank: int) -> None:
    # Case 1
    weight = _weight(node)
    assert weight is not None
    dtype = weight.dtype
    a, b = _factors((weight.T if _trans_b(node) else weight).astype(np.float64), rank)
    first_weight = add_constant(graph, f"{node.name}_lr_a", a.astype(dtype))
    first = ir.node("MatMul", [node.inputs[0], first_weight], name=f"{node.name}_lr_first")
    graph.insert_before(node, first)
    node.replace_input_with(0, first.outputs[0])
    node.replace_input_with(1, add_constant(graph, f"{node.name}_lr_b", b.astype(dtype)))
    if node.op_type == "Gemm":
        node.attributes["transB"] = ir.AttrInt64("transB", 0)


def _split_channel(graph: ir.Graph, node: ir.Node, rank: int) -> None:
    # Case 2
    weight = _weight(node)
    assert weight is not None
    c_out = weight.shape[0]
    left, right = _factors(weight.reshape(c_out, -1).astype(np.float64), rank)
    first_weight = right.reshape(rank, *weight.shape[1:]).astype(weight.dtype)
    second_weight = left.reshape(c_out, rank, 1, 1).astype(weight.dtype)
    first = ir.node("Conv", [node.inputs[0], add_constant(graph, f"{node.name}_lr_k", first_weight)],
                    attributes=_conv_attributes(node), name=f"{node.name}_lr_first")
    graph.insert_before(node, first)
    node.replace_input_with(0, first.outputs[0])
    node.replace_input_with(1, add_constant(graph, f"{node.name}_lr_1x1", second_weight))
    for key in ("pads", "strides", "dilations", "auto_pad", "kernel_shape"):
        node.attributes.pop(key, None)


def _split_spatial(graph: ir.Graph, node: ir.Node, rank: int) -> None:
    # Case 3: W[o, i, y, x] = sum_r second[o, r, 0, x] * first[r, i, y, 0].
    weight = _weight(node)
    assert weight is not None
    c_out, c_in, k_h, k_w = weight.shape
    matrix = weight.transpose(1, 2, 0, 3).reshape(c_in * k_h, c_out * k_w).astype(np.float64)
    left, right = _factors(matrix, rank)
    first_weight = left.reshape(c_in, k_h, rank).transpose(2, 0, 1)[..., None].astype(weight.dtype)
    second_weight = right.reshape(rank, c_out, k_w).transpose(1, 0, 2)[:, :, None, :].astype(weight.dtype)
    attrs = node.attributes
    pads = list(attrs.get_ints("pads", [0, 0, 0, 0]))
    strides = list(attrs.get_ints("strides", [1, 1]))
    dilations = list(attrs.get_ints("dilations", [1, 1]))
    first = ir.node(
        "Conv", [node.inputs[0], add_constant(graph, f"{node.name}_lr_col", first_weight)],
        attributes={"pads": [pads[0], 0, pads[2], 0], "strides": [strides[0], 1],
                    "dilations": [dilations[0], 1], "kernel_shape": [k_h, 1]},
        name=f"{node.name}_lr_first",
    )
    graph.insert_before(node, first)
    node.replace_input_with(0, first.outputs[0])
    node.replace_input_with(1, add_constant(graph, f"{node.name}_lr_row", second_weight))
    attrs["pads"] = ir.AttrInt64s("pads", [0, pads[1], 0, pads[3]])
    attrs["strides"] = ir.AttrInt64s("strides", [1, strides[1]])
    attrs["dilations"] = ir.AttrInt64s("dilations", [1, dilations[1]])
    attrs["kernel_shape"] = ir.AttrInt64s("kernel_shape", [1, k_w])


def _conv_attributes(node: ir.Node) -> dict[str, Any]:
    return {key: node.attributes[key].value for key in ("pads", "strides", "dilations", "auto_pad")
            if key in node.attributes}


_SPLITTERS = {"matrix": _split_matrix, "channel": _split_channel, "spatial": _split_spatial}
