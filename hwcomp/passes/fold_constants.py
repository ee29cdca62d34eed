"""Fold nodes whose inputs are all constants into initializers.

TVM's ONNX frontend needs many operands to be constants (Reshape shapes, Slice starts,
Pad pads, Resize scales, Clip bounds). Models exported by frameworks often compute them
with Shape/Gather/Concat chains; folding those chains here lets them import.

Cases handled:
    1. A node whose inputs are all initializers (or absent optional inputs): it is run once
       with onnx's reference evaluator and its outputs become initializers.
    2. Chains: nodes are visited in topological order, so a folded output makes its
       consumers foldable in the same sweep.
    3. ``Shape`` and ``Size`` of a value whose shape is static (every graph input is
       bound by the loader): they become constants even though their input is not, and
       even when they are graph outputs (TVM's Shape converter ignores start/end).
    4. A reduction over an empty set (a reduced axis of size 0): its result is the
       reduction's identity (0 for sums, 1 for a product, -inf / +inf for max / min,
       -inf for log-sums), which TVM computed as garbage.

Not folded, and why:
    - random ops (RandomNormal, Multinomial, ...): folding would freeze one sample;
    - nodes with subgraphs (If, Loop, Scan): the reference evaluator would need them whole;
    - other nodes producing a graph output: the output stays a computed value;
    - results over ``max_elements``: folding would bloat the model (Expand, Tile, ...).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx import helper
from onnx.reference import ReferenceEvaluator

from hwcomp.irutil import constant_array, node_input, static_shape

logger = logging.getLogger(__name__)

_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)
# A quantized weight is kept as DequantizeLinear(int8 constant): folding it to float would
# throw away what the integer kernels (hwcomp.lower.cpu.kernels) need.
_KEPT = frozenset({"DequantizeLinear"})


class FoldConstantsPass(ir.passes.InPlacePass):
    """Evaluate constant subgraphs ahead of time.

    Args:
        max_elements: Largest result (in elements) that is folded.

    """

    def __init__(self, max_elements: int = 1 << 22) -> None:
        super().__init__()
        self.max_elements = max_elements

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Fold every foldable node of the main graph, in order, until none is left.

        A ``Shape`` whose input's shape was unknown when the model was loaded (it came out
        of a Reshape to a computed shape: Swin's window partition and patch merging) can be
        folded once the shapes are inferred again over the folded graph: up to
        :data:`_ROUNDS` sweeps, each after shape inference.
        """
        folded = self._sweep(model)
        rounds = 1
        while folded and rounds < _ROUNDS and _unknown_shapes(model.graph):
            model = _infer_shapes(model)
            more = self._sweep(model)
            folded += more
            rounds += 1
            if not more:
                break
        if folded:
            logger.info("folded %d constant node(s) in %d sweep(s)", folded, rounds)
        return ir.passes.PassResult(model, modified=folded > 0)

    def _sweep(self, model: ir.Model) -> int:
        graph = model.graph
        opset = model.opset_imports.get("", 1)
        graph_outputs = set(map(id, graph.outputs))
        folded = 0
        for node in list(graph):
            if not self._foldable(node, graph_outputs):
                continue
            results = (_static_shape_of(node) or _empty_reduction(node)
                       or self._evaluate(node, opset))
            if results is None:
                continue
            for output, array in zip(node.outputs, results, strict=True):
                constant = ir.Value(
                    name=output.name, shape=ir.Shape(array.shape),
                    type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                    const_value=ir.tensor(array),
                )
                output.name = None
                ir.convenience.replace_all_uses_with(output, constant, replace_graph_outputs=True)
                graph.register_initializer(constant)
            graph.remove(node, safe=True)
            folded += 1
        return folded

    def _foldable(self, node: ir.Node, graph_outputs: set[int]) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC | _KEPT:
            return False
        if _static_shape_of(node) is not None or _empty_reduction(node) is not None:
            return True
        if any(id(out) in graph_outputs for out in node.outputs):
            return False
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for attr in node.attributes.values()):
            return False
        inputs = [v for v in node.inputs if v is not None]
        return bool(node.outputs) and all(v.const_value is not None for v in inputs)

    def _evaluate(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        feeds = {}
        for value in node.inputs:
            array = constant_array(value)
            if value is not None and array is not None:
                feeds[value.name or ""] = array
        proto = ir.serde.serialize_node(node)
        # A one-node model, so the evaluator uses the op version of the model's opset.
        graph = helper.make_graph(
            [proto], "fold",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for name, a in feeds.items()],
            [helper.make_empty_tensor_value_info(name) for name in proto.output],
        )
        evaluator_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            results = ReferenceEvaluator(evaluator_model).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - an op the evaluator lacks stays unfolded
            logger.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
            return None
        arrays = [np.asarray(r) for r in results]
        if any(a.size > self.max_elements for a in arrays):
            return None
        return arrays


_ROUNDS = 40  # sweeps of folding and shape inference, at most (Swin-T: 16)


def _unknown_shapes(graph: ir.Graph) -> bool:
    """Whether a ``Shape``/``Size`` node is left whose input's shape is not known."""
    return any(node.op_type in ("Shape", "Size") and static_shape(node_input(node, 0)) is None
               for node in graph)


def _infer_shapes(model: ir.Model) -> ir.Model:
    """Infer ``model``'s value shapes again, in place (left as they were where inference fails)."""
    from onnx_ir.passes.common import ShapeInferencePass

    try:
        return ShapeInferencePass(strict_mode=False)(model).model
    except Exception as exc:  # noqa: BLE001 - onnx raises many types; keep the shapes known
        logger.debug("shape inference after folding failed: %s", exc)
        return model


def _static_shape_of(node: ir.Node) -> list[np.ndarray] | None:
    """Case 3: the value of ``Shape``/``Size`` when the input's shape is fully static."""
    if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx"):
        return None
    dims = static_shape(node_input(node, 0))
    if dims is None:
        return None
    if node.op_type == "Size":
        return [np.array(int(np.prod(dims)), dtype=np.int64)]
    rank = len(dims)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
    return [np.array(dims[start:end], dtype=np.int64)]


_REDUCTION_IDENTITY = {
    "ReduceSum": 0.0, "ReduceSumSquare": 0.0, "ReduceL1": 0.0, "ReduceL2": 0.0,
    "ReduceProd": 1.0, "ReduceMax": -np.inf, "ReduceMin": np.inf, "ReduceLogSum": -np.inf,
    "ReduceLogSumExp": -np.inf,
}


def _empty_reduction(node: ir.Node) -> list[np.ndarray] | None:
    """Case 4: the identity-filled result of a reduction over a zero-size axis."""
    if node.op_type not in _REDUCTION_IDENTITY or node.domain not in ("", "ai.onnx"):
        return None
    data = node_input(node, 0)
    dims = static_shape(data)
    if dims is None or data is None or data.dtype is None:
        return None
    axes_input = node_input(node, 1)
    if axes_input is not None:
        array = constant_array(axes_input)
        if array is None:
            return None
        axes = [int(a) for a in np.asarray(array).reshape(-1)]
    else:
        axes = list(node.attributes.get_ints("axes", []) or [])
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return None
        axes = list(range(len(dims)))
    axes = [a % len(dims) for a in axes] if dims else []
    if not any(dims[a] == 0 for a in axes):
        return None
    keep = node.attributes.get_int("keepdims", 1)
    shape = [1 if i in axes else d for i, d in enumerate(dims) if keep or i not in axes]
    dtype = data.dtype.numpy()
    value = _REDUCTION_IDENTITY[node.op_type]
    if dtype == np.bool_:
        value = value > 0  # max of nothing: False; min of nothing: True
    elif not np.issubdtype(dtype, np.floating) and not np.isfinite(value):
        info = np.iinfo(dtype)
        value = info.min if value < 0 else info.max
    return [np.full(shape, value, dtype=dtype)]
