"""Small typed queries on onnx_ir values shared by the passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def static_shape(value: ir.Value | None) -> list[int] | None:
    """Return the value's shape as ints, or None when it is unknown or symbolic."""
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return [int(d) for d in dims]  # type: ignore[arg-type]


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """Return the value's constant contents, or None when it is computed at run time."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def node_input(node: ir.Node, index: int) -> ir.Value | None:
    """Return input ``index`` of ``node``, or None when absent."""
    return node.inputs[index] if index < len(node.inputs) else None


def add_constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer under ``name`` (made unique) and return it."""
    unique, counter = name, 1
    while unique in graph.initializers:
        unique, counter = f"{name}_{counter}", counter + 1
    value = ir.Value(name=unique, shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(np.ascontiguousarray(array)))
    graph.register_initializer(value)
    return value


def set_constant_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray,
                       name: str) -> None:
    """Make input ``index`` of ``node`` a new constant (adding the slot if needed)."""
    value = add_constant(graph, name, array)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
