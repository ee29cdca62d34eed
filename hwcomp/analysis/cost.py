"""Per-node cost of an ONNX graph: MACs, FLOPs, parameters, bytes, intensity.

Pure functions over an :class:`onnx_ir.Model` whose shapes are static (as
:func:`hwcomp.model.load_model` returns it). One table, :data:`OP_COSTS`, maps op types
to the function that counts them; ops not in it are counted as elementwise over their
output (one FLOP per element), which is right for the long tail of cheap ops.

Conventions:
    - A MAC is one multiply-accumulate; FLOPs count 2 per MAC plus the op's other
      arithmetic (bias adds, normalisation, activation math).
    - Parameters are the elements of a node's constant inputs (initializers); a
      constant shared by several nodes counts once in the totals.
    - Memory traffic is a no-reuse estimate: each input, weight and output crosses the
      memory interface once. Arithmetic intensity is FLOPs per byte of that traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from hwcomp.irutil import static_shape

# FLOPs per output element of ops that are elementwise but not one FLOP each.
_ELEMENTWISE_FLOPS = {
    "Sigmoid": 4, "Tanh": 5, "Gelu": 8, "HardSwish": 4, "HardSigmoid": 3, "Erf": 5,
    "Exp": 2, "Log": 2, "Sqrt": 2, "Pow": 3, "Softplus": 3, "Mish": 8, "Elu": 3,
    "Selu": 3, "Celu": 3, "Clip": 2, "Div": 1, "Reciprocal": 1,
}
_SHAPE_ONLY = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout",
    "Transpose", "Concat", "Split", "Slice", "Gather", "Expand", "Tile", "Pad", "Cast",
    "DepthToSpace", "SpaceToDepth", "ConstantOfShape", "Size",
})
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class NodeCost:
    """The cost of one node.

    Attributes:
        name: Node name (or its first output's name when unnamed).
        op_type: ONNX op type.
        output_shape: Shape of the first output.
        macs: Multiply-accumulates.
        flops: Floating-point (or integer) operations, 2 per MAC plus the rest.
        params: Elements of constant inputs.
        weight_bytes: Bytes of constant inputs.
        input_bytes: Bytes of non-constant inputs.
        output_bytes: Bytes of outputs.
        weight_dtype: Dtype of the largest constant input ("" when none).
        precision: ``fp32``, ``fp16`` or ``int8``: what the compute runs in.
    """

    name: str
    op_type: str
    output_shape: tuple[int, ...]
    macs: int
    flops: int
    params: int
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    weight_dtype: str
    precision: str

    @property
    def memory_bytes(self) -> int:
        """No-reuse memory traffic: weights and inputs read once, outputs written once."""
        return self.weight_bytes + self.input_bytes + self.output_bytes

    @property
    def output_elements(self) -> int:
        """Elements of the first output."""
        count = 1
        for dim in self.output_shape:
            count *= int(dim)
        return count

    @property
    def intensity(self) -> float:
        """FLOPs per byte of memory traffic."""
        return self.flops / self.memory_bytes if self.memory_bytes else 0.0


@dataclass(frozen=True)
class GraphCost:
    """Per-node costs in execution order, with totals."""

    nodes: list[NodeCost]
    total_macs: int
    total_flops: int
    total_params: int
    total_weight_bytes: int
    peak_activation_bytes: int
    activation_bytes: int
    params_by_dtype: dict[str, int] = field(default_factory=dict)
    live_bytes: tuple[int, ...] = ()  # activations live while each node runs

    @property
    def total_memory_bytes(self) -> int:
        """Sum of the nodes' no-reuse traffic."""
        return sum(n.memory_bytes for n in self.nodes)


def _numel(shape: Sequence[int] | None) -> int:
    return 0 if shape is None else math.prod(shape)  # a scalar's empty shape holds 1


def _nbytes(value: ir.Value | None) -> int:
    shape = static_shape(value)
    if value is None or shape is None or value.dtype is None:
        return 0
    return int(math.ceil(_numel(shape) * value.dtype.itemsize))


def _out_shape(node: ir.Node, index: int = 0) -> list[int]:
    return static_shape(node.outputs[index]) or [] if len(node.outputs) > index else []


def _in_shape(node: ir.Node, index: int) -> list[int]:
    return static_shape(node.inputs[index]) or [] if len(node.inputs) > index else []


# Case functions: node -> (macs, flops).
def _conv(node: ir.Node) -> tuple[int, int]:
    out = _out_shape(node)
    weight = _in_shape(node, 1)
    if not out or not weight:
        return 0, 0
    # weight: (C_out, C_in / groups, *kernel); each output element sums C_in/groups x kernel.
    macs = _numel(out) * _numel(weight[1:])
    bias = _numel(out) if len(node.inputs) > 2 and node.inputs[2] is not None else 0
    return macs, 2 * macs + bias


def _conv_transpose(node: ir.Node) -> tuple[int, int]:
    data = _in_shape(node, 0)
    weight = _in_shape(node, 1)
    if not data or not weight:
        return 0, 0
    # weight: (C_in, C_out / groups, *kernel); each input element scatters into
    # C_out/groups x kernel outputs.
    macs = _numel(data) * _numel(weight[1:])
    bias = _numel(_out_shape(node)) if len(node.inputs) > 2 and node.inputs[2] is not None else 0
    return macs, 2 * macs + bias


def _gemm(node: ir.Node) -> tuple[int, int]:
    a = _in_shape(node, 0)
    out = _out_shape(node)
    if len(a) != 2 or len(out) != 2:
        return 0, 0
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    macs = out[0] * out[1] * k
    bias = _numel(out) if len(node.inputs) > 2 and node.inputs[2] is not None else 0
    return macs, 2 * macs + bias


def _matmul(node: ir.Node) -> tuple[int, int]:
    a = _in_shape(node, 0)
    out = _out_shape(node)
    if not a or not out:
        return 0, 0
    # Batched (broadcast) matmul: every output element is a K-long dot product.
    macs = _numel(out) * a[-1]
    return macs, 2 * macs


def _pool(node: ir.Node) -> tuple[int, int]:
    kernel = node.attributes.get_ints("kernel_shape", [1])
    return 0, _numel(_out_shape(node)) * _numel(kernel)


def _global_pool(node: ir.Node) -> tuple[int, int]:
    return 0, _numel(_in_shape(node, 0))


def _per_element(factor: int) -> Callable[[ir.Node], tuple[int, int]]:
    def count(node: ir.Node) -> tuple[int, int]:
        return 0, factor * _numel(_out_shape(node))

    return count


def _reduce(node: ir.Node) -> tuple[int, int]:
    return 0, _numel(_in_shape(node, 0))


def _resize(node: ir.Node) -> tuple[int, int]:
    out = _out_shape(node)
    mode = node.attributes.get_string("mode", "nearest")
    spatial = max(len(out) - 2, 1)
    taps = {"nearest": 0, "linear": 2**spatial, "cubic": 4**spatial}.get(mode, 0)
    return taps * _numel(out), 2 * taps * _numel(out)


def _shape_only(node: ir.Node) -> tuple[int, int]:
    return 0, 0


OP_COSTS: dict[str, Callable[[ir.Node], tuple[int, int]]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "BatchNormalization": _per_element(2),
    "InstanceNormalization": _per_element(5),
    "LayerNormalization": _per_element(5),
    "GroupNormalization": _per_element(5),
    "LRN": _per_element(6),
    "Softmax": _per_element(5),
    "LogSoftmax": _per_element(6),
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "ReduceMin": _reduce,
    "Resize": _resize,
    "Upsample": _resize,
    **{op: _per_element(f) for op, f in _ELEMENTWISE_FLOPS.items()},
    **{op: _shape_only for op in _SHAPE_ONLY},
}



def node_name(node: ir.Node) -> str:
    """Return the name a node's cost goes by (its first output's when it has none)."""
    return node.name or (node.outputs[0].name if node.outputs else "") or node.op_type

def node_cost(node: ir.Node) -> NodeCost:
    """Count one node (ops without an entry: one FLOP per output element)."""
    macs, flops = OP_COSTS.get(node.op_type, _per_element(1))(node)
    constants = [v for v in node.inputs if v is not None and v.const_value is not None]
    runtime_inputs = [v for v in node.inputs if v is not None and v.const_value is None]
    largest = max(constants, key=_nbytes, default=None)
    weight_dtype = largest.dtype.numpy().name if largest is not None and largest.dtype else ""
    return NodeCost(
        name=node_name(node),
        op_type=node.op_type,
        output_shape=tuple(_out_shape(node)),
        macs=int(macs),
        flops=int(flops),
        params=sum(_numel(static_shape(v)) for v in constants),
        weight_bytes=sum(_nbytes(v) for v in constants),
        input_bytes=sum(_nbytes(v) for v in runtime_inputs),
        output_bytes=sum(_nbytes(v) for v in node.outputs),
        weight_dtype=weight_dtype,
        precision=_precision(node),
    )


def _precision(node: ir.Node) -> str:
    """Return what a node computes in: int8 when fed by DequantizeLinear, else its input dtype."""
    for value in node.inputs:
        if value is None:
            continue
        producer = value.producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "int8"
    first = node.inputs[0] if node.inputs else None
    if first is not None and first.dtype == ir.DataType.FLOAT16:
        return "fp16"
    if first is not None and first.dtype in (ir.DataType.INT8, ir.DataType.UINT8):
        return "int8"
    return "fp32"


def graph_cost(model: ir.Model) -> GraphCost:
    """Count every node of the main graph, in execution order, and the totals."""
    nodes = list(model.graph)
    costs = [node_cost(node) for node in nodes]
    seen: set[int] = set()
    total_params = total_weight_bytes = 0
    by_dtype: dict[str, int] = {}
    for node in nodes:
        for value in node.inputs:
            if value is None or value.const_value is None or id(value) in seen:
                continue
            seen.add(id(value))
            count = _numel(static_shape(value))
            total_params += count
            total_weight_bytes += _nbytes(value)
            dtype = value.dtype.numpy().name if value.dtype is not None else "?"
            by_dtype[dtype] = by_dtype.get(dtype, 0) + count
    timeline, at_start, total = _activation_walk(model, _nbytes)
    peak = max([at_start, *timeline])
    return GraphCost(
        nodes=costs,
        total_macs=sum(c.macs for c in costs),
        total_flops=sum(c.flops for c in costs),
        total_params=total_params,
        total_weight_bytes=total_weight_bytes,
        peak_activation_bytes=peak,
        activation_bytes=total,
        params_by_dtype=by_dtype,
        live_bytes=tuple(timeline),
    )


def activation_memory(model: ir.Model,
                      nbytes: Callable[[ir.Value], int] | None = None) -> tuple[int, int]:
    """Peak bytes of live activations over the execution order, and the sum of all.

    A tensor is live from the node that produces it (graph inputs: from the start) until
    its last consumer has run; graph outputs stay live to the end. Constants are not
    activations. ``nbytes`` sizes a tensor (default: its shape and dtype; the planner's
    gives quantized tensors their narrower element).
    """
    timeline, at_start, total = _activation_walk(model, nbytes or _nbytes)
    return max([at_start, *timeline]), total


def _activation_walk(model: ir.Model,
                     size: Callable[[ir.Value], int]) -> tuple[list[int], int, int]:
    """Live bytes per step, live bytes before the first step, and the sum of all tensors."""
    nodes = list(model.graph)
    last_use: dict[int, int] = {}
    for step, node in enumerate(nodes):
        for value in node.inputs:
            if value is not None and value.const_value is None:
                last_use[id(value)] = step
    end = len(nodes)
    for value in model.graph.outputs:
        last_use[id(value)] = end
    live = {id(v): size(v) for v in model.graph.inputs if v.const_value is None}
    total = at_start = sum(live.values())
    timeline = []
    for step, node in enumerate(nodes):
        for value in node.outputs:
            live[id(value)] = size(value)
            total += size(value)
        timeline.append(sum(live.values()))
        for key in [k for k in live if last_use.get(k, -1) <= step]:
            del live[key]
    return timeline, at_start, total
