"""An ONNX graph run by PyTorch, with its weights as trainable parameters (for distillation).

hwcomp's own converter rather than onnx2torch: a distilled student must come back as the
*same* ONNX graph with new weight values, so this module interprets the graph node by node
with torch functions and hands back nothing but the trained initializers, which
:func:`write_weights` puts into the model. No export step (``torch.onnx.export`` rebuilds
the graph, renames tensors and moves ops around) stands between what was trained and what
hwcomp compiles, and the result is checked against onnxruntime on the same samples.

The converter covers the inference ops of CNNs and transformer blocks (the ops hwcomp's
passes produce and the ones around them); any other op is refused by name before any
training, with :class:`TorchConversionError`.

Trainable: the float initializers a layer multiplies or adds with its input: the weights
and biases of Conv, ConvTranspose, Gemm and MatMul, the scales and biases of the
normalisations, PRelu slopes and an Add's operand of more than one element (a bias after a
MatMul, a position embedding). Shape constants, exponents and scalars stay fixed.

PyTorch is imported only when a graph is converted (``pip install hwcomp[train]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hwcomp.errors import ToolchainError, UnsupportedOpError

TRAIN_EXTRA = "pip install 'hwcomp[train]'"


class TrainingUnavailableError(ToolchainError):
    """PyTorch (the ``train`` extra) is not installed (exit 7, as ``tune`` without its extra)."""


class TorchConversionError(UnsupportedOpError):
    """A node the converter cannot run in PyTorch (named in the message)."""


def import_torch() -> Any:
    """Return the torch module, or raise :class:`TrainingUnavailableError` naming the extra."""
    try:
        import torch
    except ImportError:
        raise TrainingUnavailableError(
            f"--distill trains with PyTorch, which is not installed: {TRAIN_EXTRA} "
            "(or pip install torch)") from None
    return torch


# Inputs (by position) of these ops that are trained when they are float initializers.
_TRAINED_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "LayerNormalization": (1, 2), "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2), "PRelu": (1,), "Add": (0, 1),
}


def trainable_names(graph: onnx.GraphProto) -> list[str]:
    """Return the float initializers distillation trains, in graph order."""
    floats = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names: list[str] = []
    for node in graph.node:
        for position in _TRAINED_INPUTS.get(node.op_type, ()):
            if position >= len(node.input) or node.input[position] not in floats:
                continue
            name = node.input[position]
            size = math.prod(floats[name].dims)
            if node.op_type == "Add" and size <= 1:
                continue
            if name not in names:
                names.append(name)
    return names


def check_convertible(graph: onnx.GraphProto) -> None:
    """Refuse, by node, any op the converter cannot run (before any work is done).

    Raises:
        TorchConversionError: The first node whose op (or attribute case) is not covered.
    """
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise TorchConversionError(
                f"node '{node.name or node.output[0]}': op {node.domain}::{node.op_type} has no "
                "PyTorch conversion for distillation; distill a model of standard ONNX ops, or "
                "drop --distill")
        if node.op_type not in _OPS:
            raise TorchConversionError(
                f"node '{node.name or node.output[0]}': op {node.op_type} has no PyTorch "
                f"conversion for distillation (covered: {', '.join(sorted(_OPS))}); drop "
                "--distill, or cut the graph before it")
        _check_attributes(node)


def _check_attributes(node: onnx.NodeProto) -> None:
    attrs = _attrs(node)
    label = f"node '{node.name or node.output[0]}' ({node.op_type})"
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") and node.op_type in (
            "Conv", "ConvTranspose", "MaxPool", "AveragePool"):
        raise TorchConversionError(
            f"{label}: auto_pad {attrs['auto_pad']} is not converted for distillation; "
            "export the model with explicit pads")
    if node.op_type == "ConvTranspose" and "output_shape" in attrs:
        raise TorchConversionError(f"{label}: output_shape is not converted; give pads instead")
    if node.op_type == "Resize":
        mode = attrs.get("mode", "nearest")
        if mode not in ("nearest", "linear"):
            raise TorchConversionError(f"{label}: mode {mode} is not converted for distillation")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def graph_module(proto: onnx.ModelProto, trainable: Sequence[str] | None = None) -> Any:
    """Return a ``torch.nn.Module`` running ``proto``'s graph; its ``names`` list the trained weights.

    ``module(*inputs)`` takes the graph's inputs in order (torch tensors, the model's own
    batch) and returns the list of its outputs. ``module.weights()`` gives the trained
    initializers' current values by name as numpy arrays.

    Raises:
        TrainingUnavailableError: PyTorch is not installed.
        TorchConversionError: An op the converter does not cover (named).
    """
    torch = import_torch()
    graph = proto.graph
    check_convertible(graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    names = list(trainable_names(graph) if trainable is None else trainable)
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = [(node, _OPS[node.op_type], {**_attrs(node), "_outputs": len(node.output)})
             for node in graph.node]
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    graph_outputs = [o.name for o in graph.output]

    class Module(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.names = names
            self.params = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.from_numpy(np.array(initializers[n], dtype=np.float32)))
                 for n in names])
            self.fixed = {n: torch.from_numpy(np.array(v)) for n, v in initializers.items()
                          if n not in set(names)}
            self.hooks: dict[str, Callable[[Any], Any]] = {}

        def forward(self, *inputs: Any) -> list[Any]:
            env: dict[str, Any] = dict(self.fixed)
            env.update(zip(self.names, self.params, strict=True))
            env.update(zip(graph_inputs, inputs, strict=True))
            for name, hook in self.hooks.items():
                if name in env:
                    env[name] = hook(env[name])
            for node, run, attributes in nodes:
                args = [env[i] if i else None for i in node.input]
                out = run(torch, attributes, args, opset)
                outs = out if isinstance(out, tuple | list) else (out,)
                for name, value in zip(node.output, outs, strict=False):
                    if name:
                        env[name] = self.hooks[name](value) if name in self.hooks else value
            return [env[name] for name in graph_outputs]

        def weights(self) -> dict[str, np.ndarray]:
            return {n: p.detach().cpu().numpy().copy() for n, p in zip(self.names, self.params,
                                                                         strict=True)}

    return Module()


def write_weights(proto: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Return a copy of ``proto`` with the named initializers replaced (same dtype and shape)."""
    result = onnx.ModelProto.FromString(proto.SerializeToString())
    for tensor in result.graph.initializer:
        if tensor.name in weights:
            array = np.asarray(weights[tensor.name], dtype=numpy_helper.to_array(tensor).dtype)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return result


# ---------------------------------------------------------------------------- the op table
# Each entry: (torch, attributes, inputs (None where omitted), opset) -> output(s).


def _ints(value: Any) -> list[int]:
    return [int(v) for v in value.tolist()] if hasattr(value, "tolist") else list(value)


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """Return ONNX's ``[begin..., end...]`` pads in ``F.pad``'s order (last axis first)."""
    rank = len(pads) // 2
    flat: list[int] = []
    for axis in reversed(range(rank)):
        flat += [pads[axis], pads[rank + axis]]
    return flat


def _pads(torch: Any, x: Any, pads: Sequence[int], value: float = 0.0) -> tuple[Any, list[int]]:
    """Return ``x`` padded where ONNX's begin/end pads differ, and the symmetric remainder."""
    rank = len(pads) // 2
    begin, end = list(pads[:rank]), list(pads[rank:])
    if begin == end:
        return x, begin
    return torch.nn.functional.pad(x, _torch_pads(pads), value=value), [0] * rank


def _conv(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    rank = w.dim() - 2
    pads = a.get("pads", [0] * 2 * rank)
    x, padding = _pads(torch, x, pads)
    function = [torch.nn.functional.conv1d, torch.nn.functional.conv2d,
                torch.nn.functional.conv3d][rank - 1]
    return function(x, w, bias, stride=a.get("strides", [1] * rank), padding=padding,
                    dilation=a.get("dilations", [1] * rank), groups=a.get("group", 1))


def _conv_transpose(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    rank = w.dim() - 2
    function = [torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
                torch.nn.functional.conv_transpose3d][rank - 1]
    y = function(x, w, bias, stride=a.get("strides", [1] * rank),
                 output_padding=a.get("output_padding", [0] * rank),
                 dilation=a.get("dilations", [1] * rank), groups=a.get("group", 1))
    pads = a.get("pads", [0] * 2 * rank)
    index = [slice(None), slice(None)]
    for axis in range(rank):
        size = y.shape[2 + axis]
        index.append(slice(pads[axis], size - pads[rank + axis]))
    return y[tuple(index)]


def _gemm(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, w = args[0], args[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(args) > 2 and args[2] is not None:
        y = y + a.get("beta", 1.0) * args[2]
    return y


def _pool(torch: Any, a: dict[str, Any], args: list[Any], kind: str) -> Any:
    x = args[0]
    kernel = a["kernel_shape"]
    rank = len(kernel)
    strides = a.get("strides", [1] * rank)
    pads = a.get("pads", [0] * 2 * rank)
    ceil = bool(a.get("ceil_mode", 0))
    F = torch.nn.functional
    if kind == "max":
        x, padding = _pads(torch, x, pads, value=-math.inf)
        function = [F.max_pool1d, F.max_pool2d, F.max_pool3d][rank - 1]
        return function(x, kernel, strides, padding, a.get("dilations", [1] * rank), ceil_mode=ceil)
    include = bool(a.get("count_include_pad", 0))
    if list(pads[:rank]) != list(pads[rank:]) or any(2 * p > k for p, k in zip(pads, kernel * 2,
                                                                                 strict=False)):
        # Asymmetric (or more than half a window) padding: sum and count by hand.
        ones = torch.ones_like(x[:1, :1])
        flat = _torch_pads(pads)
        padded = F.pad(x, flat)
        function = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][rank - 1]
        total = function(padded, kernel, strides, 0, ceil_mode=ceil) * math.prod(kernel)
        if include:
            return total / math.prod(kernel)
        count = function(F.pad(ones, flat), kernel, strides, 0, ceil_mode=ceil) * math.prod(kernel)
        return total / count
    function = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][rank - 1]
    return function(x, kernel, strides, list(pads[:rank]), ceil_mode=ceil,
                    count_include_pad=include)


def _reduce(name: str) -> Callable[..., Any]:
    def run(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
        x = args[0]
        axes = a.get("axes")
        if len(args) > 1 and args[1] is not None:
            axes = _ints(args[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(int(d) % x.dim() for d in axes)
        if name == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if name == "sum":
            return x.sum(dim=dims, keepdim=keep)
        y = x
        for d in sorted(dims, reverse=True):
            y = (y.amax if name == "max" else y.amin)(dim=d, keepdim=keep)
        return y
    return run


def _reshape(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, shape = args[0], _ints(args[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x = args[0]
    axis = a.get("axis", 1) % max(x.dim(), 1) if a.get("axis", 1) < 0 else a.get("axis", 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _axes(a: dict[str, Any], args: list[Any]) -> list[int] | None:
    if len(args) > 1 and args[1] is not None:
        return _ints(args[1])
    return a.get("axes")


def _squeeze(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, axes = args[0], _axes(a, args)
    if axes is None:
        return x.squeeze()
    for axis in sorted((d % x.dim() for d in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _unsqueeze(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, axes = args[0], _axes(a, args) or []
    rank = x.dim() + len(axes)
    for axis in sorted(d % rank for d in axes):
        x = x.unsqueeze(axis)
    return x


def _split(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, axis = args[0], a.get("axis", 0)
    sizes = a.get("split")
    if len(args) > 1 and args[1] is not None:
        sizes = _ints(args[1])
    if sizes is None:
        parts = a.get("num_outputs") or a.get("_outputs", 2)
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return tuple(torch.split(x, list(sizes), dim=axis))


def _slice(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x = args[0]
    if len(args) > 1:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        size = x.shape[axis]
        index = list(range(size))[slice(*_clamp_slice(start, end, step, size))]
        if step == 1 and index:
            x = x.narrow(axis, index[0], len(index))
        else:
            x = x.index_select(axis, torch.tensor(index, dtype=torch.long, device=x.device))
    return x


def _clamp_slice(start: int, end: int, step: int, size: int) -> tuple[int | None, int | None, int]:
    """ONNX slice bounds (clamped, INT_MAX-style sentinels) as a Python slice."""
    def clamp(v: int, low: int, high: int) -> int:
        if v < 0:
            v += size
        return max(low, min(high, v))
    if step > 0:
        return clamp(start, 0, size), clamp(end, 0, size), step
    begin = clamp(start, -1, size - 1)
    stop = clamp(end, -1, size - 1)
    return begin, (None if stop < 0 else stop), step


def _gather(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, index = args[0], args[1].long()
    axis = a.get("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    flat = x.index_select(axis, index.reshape(-1))
    return flat.reshape([*x.shape[:axis], *index.shape, *x.shape[axis + 1:]])


def _concat(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return torch.cat([t for t in args if t is not None], dim=a["axis"])


def _softmax(log: bool) -> Callable[..., Any]:
    def run(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
        x = args[0]
        function = torch.log_softmax if log else torch.softmax
        if opset >= 13:
            return function(x, dim=a.get("axis", -1))
        axis = a.get("axis", 1) % x.dim()
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return function(flat, dim=1).reshape(x.shape)
    return run


def _clip(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x = args[0]
    low = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


def _layer_norm(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    shape = list(x.shape[axis:])
    return torch.nn.functional.layer_norm(x, shape, scale.expand(shape),
                                          None if bias is None else bias.expand(shape),
                                          a.get("epsilon", 1e-5))


def _batch_norm(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, scale, bias, mean, var = args[:5]
    return torch.nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0,
                                          a.get("epsilon", 1e-5))


def _instance_norm(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return torch.nn.functional.instance_norm(args[0], weight=args[1], bias=args[2],
                                             eps=a.get("epsilon", 1e-5))


def _resize(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x = args[0]
    sizes = args[3] if len(args) > 3 and args[3] is not None and args[3].numel() else None
    if sizes is not None:
        size = _ints(sizes)[2:]
    else:
        scales = [float(s) for s in args[2].tolist()]
        size = [int(math.floor(d * s)) for d, s in zip(x.shape[2:], scales[2:], strict=True)]
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        return torch.nn.functional.interpolate(x, size=size, mode="nearest")
    linear = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return torch.nn.functional.interpolate(x, size=size, mode=linear,
                                           align_corners=transform == "align_corners")


def _cast(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    dtype = helper.tensor_dtype_to_np_dtype(a["to"])
    return args[0].to(getattr(torch, np.dtype(dtype).name if dtype != np.bool_ else "bool"))


def _pad(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x = args[0]
    pads = _ints(args[1]) if len(args) > 1 else a["pads"]
    value = float(args[2]) if len(args) > 2 and args[2] is not None and args[2].numel() else \
        a.get("value", 0.0)
    rank = x.dim()
    if len(args) > 3 and args[3] is not None:
        axes = [d % rank for d in _ints(args[3])]
        full = [0] * 2 * rank
        for i, axis in enumerate(axes):
            full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
        pads = full
    flat = _torch_pads(pads)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[a.get("mode", "constant")]
    if mode == "constant":
        return torch.nn.functional.pad(x, flat, value=value)
    while flat and flat[-2:] == [0, 0]:
        flat = flat[:-2]
    return torch.nn.functional.pad(x, flat, mode=mode)


def _shape(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    dims = list(args[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _constant(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    if "value" in a:
        return torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return torch.tensor(np.array(a[key], dtype=dtype))
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return torch.from_numpy(np.array(a[key], dtype=dtype))
    raise TorchConversionError(f"Constant with attributes {sorted(a)} is not converted")


def _constant_of_shape(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    value = np.array(numpy_helper.to_array(a["value"])) if "value" in a else np.zeros(1, np.float32)
    return torch.full(_ints(args[0]), value.reshape(-1)[0].item(),
                      dtype=getattr(torch, value.dtype.name))


def _expand(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, shape = args[0], _ints(args[1])
    rank = max(x.dim(), len(shape))
    shape = [1] * (rank - len(shape)) + shape
    dims = [1] * (rank - x.dim()) + list(x.shape)
    return x.reshape(dims).expand([max(s, d) if s != 1 else d for s, d in zip(shape, dims,
                                                                                 strict=True)])


def _range(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    start, limit, delta = (t.item() for t in args[:3])
    return torch.arange(start, limit, delta, dtype=args[0].dtype)


def _where(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return torch.where(args[0].bool(), args[1], args[2])


def _div(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, y = args
    if not x.dtype.is_floating_point:
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _variadic(name: str) -> Callable[..., Any]:
    def run(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
        result = args[0]
        for other in args[1:]:
            if name in ("sum", "mean"):
                result = result + other
            elif name == "max":
                result = torch.maximum(result, other)
            else:
                result = torch.minimum(result, other)
        return result / len(args) if name == "mean" else result
    return run


def _unary(function: Callable[[Any, Any, dict[str, Any]], Any]) -> Callable[..., Any]:
    def run(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
        return function(torch, args[0], a)
    return run


def _binary(function: Callable[[Any, Any, Any], Any]) -> Callable[..., Any]:
    def run(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
        return function(torch, args[0], args[1])
    return run


def _gelu(torch: Any, x: Any, a: dict[str, Any]) -> Any:
    return torch.nn.functional.gelu(x, approximate=a.get("approximate", "none"))


def _dropout(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return args[0], torch.ones_like(args[0], dtype=torch.bool)


def _transpose(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x = args[0]
    return x.permute(a.get("perm", list(reversed(range(x.dim())))))


def _tile(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return args[0].repeat(_ints(args[1]))


def _einsum(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return torch.einsum(a["equation"], *args)


def _argmax(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    return args[0].argmax(dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))


def _depth_to_space(torch: Any, a: dict[str, Any], args: list[Any], opset: int) -> Any:
    x, block = args[0], a["blocksize"]
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, block, block, c // block ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // block ** 2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // block ** 2, h * block, w * block)


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm,
    "MatMul": _binary(lambda t, x, y: t.matmul(x, y)),
    "Add": _binary(lambda t, x, y: x + y), "Sub": _binary(lambda t, x, y: x - y),
    "Mul": _binary(lambda t, x, y: x * y), "Div": _div,
    "Pow": _binary(lambda t, x, y: t.pow(x, y)),
    "Equal": _binary(lambda t, x, y: x == y), "Less": _binary(lambda t, x, y: x < y),
    "Greater": _binary(lambda t, x, y: x > y), "And": _binary(lambda t, x, y: x & y),
    "Or": _binary(lambda t, x, y: x | y), "Not": _unary(lambda t, x, a: ~x),
    "Where": _where, "Sum": _variadic("sum"), "Mean": _variadic("mean"),
    "Max": _variadic("max"), "Min": _variadic("min"),
    "Relu": _unary(lambda t, x, a: t.relu(x)),
    "LeakyRelu": _unary(lambda t, x, a: t.nn.functional.leaky_relu(x, a.get("alpha", 0.01))),
    "PRelu": _binary(lambda t, x, s: t.where(x >= 0, x, x * s)),
    "Sigmoid": _unary(lambda t, x, a: t.sigmoid(x)), "Tanh": _unary(lambda t, x, a: t.tanh(x)),
    "HardSigmoid": _unary(lambda t, x, a: t.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5),
                                                  0.0, 1.0)),
    "HardSwish": _unary(lambda t, x, a: t.nn.functional.hardswish(x)),
    "Elu": _unary(lambda t, x, a: t.nn.functional.elu(x, a.get("alpha", 1.0))),
    "Selu": _unary(lambda t, x, a: t.nn.functional.selu(x)),
    "Softplus": _unary(lambda t, x, a: t.nn.functional.softplus(x)),
    "Mish": _unary(lambda t, x, a: t.nn.functional.mish(x)),
    "Gelu": _unary(_gelu), "Erf": _unary(lambda t, x, a: t.erf(x)),
    "Exp": _unary(lambda t, x, a: t.exp(x)), "Log": _unary(lambda t, x, a: t.log(x)),
    "Sqrt": _unary(lambda t, x, a: t.sqrt(x)), "Reciprocal": _unary(lambda t, x, a: 1.0 / x),
    "Neg": _unary(lambda t, x, a: -x), "Abs": _unary(lambda t, x, a: x.abs()),
    "Floor": _unary(lambda t, x, a: x.floor()), "Ceil": _unary(lambda t, x, a: x.ceil()),
    "Sign": _unary(lambda t, x, a: x.sign()), "Identity": _unary(lambda t, x, a: x),
    "Clip": _clip, "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "MaxPool": lambda t, a, args, o: _pool(t, a, args, "max"),
    "AveragePool": lambda t, a, args, o: _pool(t, a, args, "average"),
    "GlobalAveragePool": _unary(lambda t, x, a: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _unary(lambda t, x, a: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Concat": _concat, "Split": _split, "Slice": _slice,
    "Gather": _gather, "Shape": _shape, "Cast": _cast, "Dropout": _dropout,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Expand": _expand,
    "Tile": _tile, "Pad": _pad, "Range": _range, "Einsum": _einsum, "ArgMax": _argmax,
    "LayerNormalization": _layer_norm, "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm, "Resize": _resize, "DepthToSpace": _depth_to_space,
}
