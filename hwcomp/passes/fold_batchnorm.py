"""Fold inference-mode BatchNormalization into the Conv, Gemm or MatMul before it.

``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta`` is an affine map per channel,
so when ``y`` is a linear layer's output it merges into that layer's weights and bias:
``W' = W * s`` along the output channel and ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. The BN node disappears.

Cases handled:
    1. Conv (any groups) -> BN: scale the filters (axis 0) and the bias.
    2. ConvTranspose -> BN: scale the output channels (axis 1 of each group's slice).
    3. Gemm -> BN on a 2-D output: scale the output columns; the bias becomes per column.
    4. MatMul with a constant 2-D weight -> BN on a 2-D output: scale the weight's columns
       and add the bias with an Add node.

With ``standalone=True`` (legalisation), a BN with constant parameters that follows no
such layer (DenseNet's and pre-activation ResNets' BN after a concat or an add) becomes
``x * s + (beta - mean * s)`` with ``s`` precomputed: TVM's batch_norm computed the square
root and the division for every element (0.5 ns an element where a multiply-add costs 0.1).

Not folded, and why (reported per node):
    - the layer's output has other consumers (they need the unnormalised value);
    - BN or the layer's weight/bias is not constant;
    - BN in training mode (it computes statistics);
    - the output rank does not match the case (e.g. MatMul on 3-D activations).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from hwcomp.irutil import add_constant, constant_array, node_input, set_constant_input
from hwcomp.passes.infra import take_over

logger = logging.getLogger(__name__)

# A folder returns the value that now carries BN's output, or why it could not fold.
Folded = ir.Value | str


@dataclass
class FoldReport:
    """What was folded and what was not, with why."""

    folded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Merge BatchNormalization into the preceding linear layer."""

    def __init__(self, standalone: bool = False) -> None:
        super().__init__()
        self.report = FoldReport()
        self.standalone = standalone

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Fold every foldable BN of the main graph."""
        self.report = FoldReport()
        graph = model.graph
        for bn in list(graph):
            if bn.op_type != "BatchNormalization":
                continue
            reason = _fold(graph, bn)
            name = bn.name or "BatchNormalization"
            if reason and self.standalone and _to_affine(graph, bn):
                reason = ""
            if reason:
                self.report.skipped[name] = reason
            else:
                self.report.folded.append(name)
        if self.report.folded:
            # The unscaled weights are now unused.
            common.RemoveUnusedNodesPass()(model)
        if self.report.skipped:
            logger.info("BN not folded: %s", self.report.skipped)
        return ir.passes.PassResult(model, modified=bool(self.report.folded))


def _bn_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    params = [constant_array(node_input(bn, i)) for i in range(1, 5)]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)  # type: ignore[arg-type]
    eps = bn.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _fold(graph: ir.Graph, bn: ir.Node) -> str:
    if bn.attributes.get_int("training_mode", 0):
        return "training mode"
    if len([o for o in bn.outputs if o.uses() or o in graph.outputs]) > 1:
        return "BN running statistics outputs are used"
    source = bn.inputs[0]
    layer = source.producer() if source is not None else None
    if source is None or layer is None or layer.op_type not in _FOLDERS:
        return "not preceded by Conv, ConvTranspose, Gemm or MatMul"
    if len(source.uses()) != 1 or source in graph.outputs:
        return f"{layer.name}'s output has other consumers"
    affine = _bn_scale_shift(bn)
    if affine is None:
        return "BN parameters are not constant"
    folded = _FOLDERS[layer.op_type](graph, layer, *affine)
    if isinstance(folded, str):
        return folded
    # The folded layer (or the Add after it) now yields BN's output.
    output = bn.outputs[0]
    name = output.name
    ir.convenience.replace_all_uses_with(output, folded, replace_graph_outputs=True)
    output.name = None
    # safe=True also detaches BN's inputs: its scale/shift/mean/var initializers lose their
    # last use, so the unused-node cleanup drops them.
    graph.remove(bn, safe=True)
    folded.name = name
    folded.shape, folded.type = output.shape, output.type
    return ""


def _to_affine(graph: ir.Graph, bn: ir.Node) -> bool:
    """Replace an inference BN by a precomputed multiply-add; False where it cannot."""
    if bn.attributes.get_int("training_mode", 0) or len(bn.outputs) > 1 and any(
            o.uses() or o in graph.outputs for o in bn.outputs[1:]):
        return False
    affine = _bn_scale_shift(bn)
    data = bn.inputs[0]
    shape = data.shape if data is not None else None
    if affine is None or data is None or shape is None or len(shape) < 2:
        return False
    if data.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
        return False
    dtype = data.dtype.numpy()
    # Of the data's rank ([1, C, 1, 1]): TVM's layout conversion carries such a constant to
    # NHWC, where a [C, 1, 1] one left a transpose to NCHW and back around the multiply-add.
    trailing = (1,) * (len(shape) - 2)
    scale, shift = (a.astype(dtype).reshape(1, -1, *trailing) for a in affine)
    name = bn.name or "bn"
    mul = ir.node("Mul", [data, add_constant(graph, f"{name}_scale", scale)], name=f"{name}_mul")
    add = ir.node("Add", [mul.outputs[0], add_constant(graph, f"{name}_shift", shift)],
                  name=f"{name}_add")
    graph.insert_before(bn, [mul, add])
    take_over(bn.outputs[0], add.outputs[0])
    graph.remove(bn, safe=True)
    return True


def _bias(node: ir.Node, channels: int, dtype: np.dtype) -> np.ndarray | None:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return np.zeros(channels, dtype)
    array = constant_array(node.inputs[2])
    if array is None:
        return None
    return np.broadcast_to(array, (channels,)).astype(dtype) if array.size in (1, channels) else None


def _fold_conv(graph: ir.Graph, conv: ir.Node, scale: np.ndarray, shift: np.ndarray) -> Folded:
    # Case 1
    weight = constant_array(node_input(conv, 1))
    if weight is None:
        return f"{conv.name}'s weight is not constant"
    bias = _bias(conv, weight.shape[0], weight.dtype)
    if bias is None:
        return f"{conv.name}'s bias is not constant"
    new_weight = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
    set_constant_input(graph, conv, 1, new_weight, f"{conv.name}_w_bnfold")
    set_constant_input(graph, conv, 2, (bias * scale + shift).astype(weight.dtype), f"{conv.name}_b_bnfold")
    return conv.outputs[0]


def _fold_conv_transpose(graph: ir.Graph, conv: ir.Node, scale: np.ndarray, shift: np.ndarray
                         ) -> Folded:
    # Case 2: weight is (C_in, C_out / groups, *k); output channel o = g * (C_out/g) + j.
    weight = constant_array(node_input(conv, 1))
    if weight is None:
        return f"{conv.name}'s weight is not constant"
    groups = conv.attributes.get_int("group", 1)
    per_group = weight.shape[1]
    bias = _bias(conv, per_group * groups, weight.dtype)
    if bias is None:
        return f"{conv.name}'s bias is not constant"
    grouped = weight.reshape(groups, weight.shape[0] // groups, per_group, *weight.shape[2:])
    factors = scale.reshape(groups, 1, per_group, *[1] * (weight.ndim - 2))
    new_weight = (grouped * factors).reshape(weight.shape).astype(weight.dtype)
    set_constant_input(graph, conv, 1, new_weight, f"{conv.name}_w_bnfold")
    set_constant_input(graph, conv, 2, (bias * scale + shift).astype(weight.dtype), f"{conv.name}_b_bnfold")
    return conv.outputs[0]


def _fold_gemm(graph: ir.Graph, gemm: ir.Node, scale: np.ndarray, shift: np.ndarray) -> Folded:
    # Case 3
    weight = constant_array(node_input(gemm, 1))
    if weight is None:
        return f"{gemm.name}'s weight is not constant"
    beta = gemm.attributes.get_float("beta", 1.0)
    trans_b = gemm.attributes.get_int("transB", 0)
    columns = weight.shape[0] if trans_b else weight.shape[1]
    bias = _bias(gemm, columns, weight.dtype)
    if bias is None:
        return f"{gemm.name}'s bias is not per column"
    factors = scale.reshape(-1, 1) if trans_b else scale.reshape(1, -1)
    set_constant_input(graph, gemm, 1, (weight * factors).astype(weight.dtype), f"{gemm.name}_w_bnfold")
    set_constant_input(graph, gemm, 2, (beta * bias * scale + shift).astype(weight.dtype),
                  f"{gemm.name}_b_bnfold")
    # alpha scales A @ B only, so it stays; the folded bias already includes beta.
    gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return gemm.outputs[0]


def _fold_matmul(graph: ir.Graph, matmul: ir.Node, scale: np.ndarray, shift: np.ndarray
                 ) -> Folded:
    # Case 4
    weight = constant_array(node_input(matmul, 1))
    output = matmul.outputs[0]
    if weight is None or weight.ndim != 2:
        return f"{matmul.name}'s weight is not a constant matrix"
    if output.shape is None or len(output.shape) != 2:
        return f"{matmul.name}'s output is not 2-D, so BN's channel axis is not its columns"
    set_constant_input(graph, matmul, 1, (weight * scale.reshape(1, -1)).astype(weight.dtype),
                  f"{matmul.name}_w_bnfold")
    bias = add_constant(graph, f"{matmul.name}_b_bnfold", shift.astype(weight.dtype))
    add = ir.node("Add", [output, bias], name=f"{matmul.name}_bnfold_add")
    graph.insert_after(matmul, add)
    return add.outputs[0]


_FOLDERS: dict[str, Callable[[ir.Graph, ir.Node, np.ndarray, np.ndarray], Folded]] = {
    "Conv": _fold_conv,
    "ConvTranspose": _fold_conv_transpose,
    "Gemm": _fold_gemm,
    "MatMul": _fold_matmul,
}
