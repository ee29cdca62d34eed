"""Expand ONNX ops into their standard function bodies.

Many ONNX ops are defined by the standard as functions of simpler ops (Celu, Mish,
GroupNormalization, LayerNormalization, ...). TVM's ONNX frontend implements only some
of them; expanding the rest into their bodies lets the model compile anyway, with the
semantics the standard itself gives.

Cases handled:
    1. A node whose op has a plain function body for the model's opset.
    2. A node whose op has a context-dependent body (it depends on input types or
       attributes, e.g. LayerNormalization): the body is instantiated for that node.
    3. A body that itself uses function ops: expansion repeats until nothing is left.

The bodies are attached as model-local functions and inlined by ``onnx.inliner``, which
renames internal values and substitutes attribute references.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import onnx
import onnx.defs
import onnx.inliner
import onnx_ir as ir

from hwcomp.model import to_proto

logger = logging.getLogger(__name__)

_LOCAL_DOMAIN = "hwcomp.expand"
_MAX_ROUNDS = 8


class ExpandFunctionsPass(ir.passes.FunctionalPass):
    """Replace nodes the backend cannot take by their ONNX function bodies.

    Args:
        should_expand: ``node -> bool`` for default-domain nodes; true means the backend
            cannot take the node and it should be expanded if the standard defines a body.

    """

    def __init__(self, should_expand: Callable[[onnx.NodeProto], bool]) -> None:
        super().__init__()
        self.should_expand = should_expand

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Expand until no expandable node remains (at most a few rounds)."""
        proto = to_proto(model)
        expanded: list[str] = []
        for _ in range(_MAX_ROUNDS):
            names = _attach_bodies(proto, self.should_expand)
            if not names:
                break
            expanded.extend(names)
            local = [(f.domain, f.name) for f in proto.functions if f.domain == _LOCAL_DOMAIN]
            proto = onnx.inliner.inline_selected_functions(proto, local, exclude=False)
            _drop_local_domain(proto)
        if expanded:
            logger.info("expanded %d node(s) into function bodies: %s", len(expanded), expanded)
            return ir.passes.PassResult(ir.serde.deserialize_model(_with_shapes(proto)),
                                        modified=True)
        return ir.passes.PassResult(ir.serde.deserialize_model(proto), modified=False)


def _with_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give the bodies' values their shapes, so that ``Shape`` / ``Size`` of them fold.

    A body's shape arithmetic (Attention's head count from Q's shape) otherwise reaches TVM
    as shape expressions its converters cannot divide. Where inference fails the model is
    returned as it is (later steps report what they cannot take).
    """
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        logger.debug("shape inference after expansion failed: %s", exc)
        return proto


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _attach_bodies(
    proto: onnx.ModelProto, should_expand: Callable[[onnx.NodeProto], bool]
) -> list[str]:
    """Point expandable nodes at fresh local functions; return the expanded nodes' names."""
    opset = _opset(proto)
    types = _value_types(proto)
    expanded = []
    for index, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx") or not should_expand(node):
            continue
        body = _function_body(node, opset, types)
        if body is None:
            continue
        body.name = f"{node.op_type}_{index}"
        body.domain = _LOCAL_DOMAIN
        proto.functions.append(body)
        node.domain = _LOCAL_DOMAIN
        node.op_type = body.name
        expanded.append(node.name or body.name)
    if expanded and not any(o.domain == _LOCAL_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(_LOCAL_DOMAIN, 1))
    return expanded


def _function_body(
    node: onnx.NodeProto, opset: int, types: dict[str, onnx.TypeProto]
) -> onnx.FunctionProto | None:
    try:
        schema: Any = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    body = onnx.FunctionProto()
    # Case 1: a plain body for the newest function version not above the model's opset.
    plain = [v for v in schema.function_opset_versions if v <= opset]
    if plain:
        body.ParseFromString(schema.get_function_with_opset_version(max(plain)))
    # Case 2: a body instantiated for this node's input types and attributes.
    elif schema.has_context_dependent_function:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if not versions or any(name and name not in types for name in node.input):
            return None
        input_types = [
            types[name].SerializeToString() if name else onnx.TypeProto().SerializeToString()
            for name in node.input
        ]
        data = schema.get_context_dependent_function_with_opset_version(
            max(versions), node.SerializeToString(), input_types
        )
        if not data:
            return None
        body.ParseFromString(data)
    else:
        return None
    # The inliner needs one opset per domain; bodies are written against the op's own
    # version and stay valid at the model's (newer or equal) opset.
    others = [o for o in body.opset_import if o.domain not in ("", "ai.onnx")]
    del body.opset_import[:]
    body.opset_import.extend([*others, onnx.helper.make_opsetid("", opset)])
    _add_schema_defaults(body, schema, node)
    return body


def _add_schema_defaults(
    body: onnx.FunctionProto, schema: onnx.defs.OpSchema, node: onnx.NodeProto
) -> None:
    """Give attributes the node leaves unset their schema default, as the inliner needs."""
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        default = attr.default_value
        if name in given or not default.name:
            continue
        if name in body.attribute:
            body.attribute.remove(name)
        if name not in {a.name for a in body.attribute_proto}:
            body.attribute_proto.append(default)


def _value_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        types.setdefault(
            init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        )
    return types


def _drop_local_domain(proto: onnx.ModelProto) -> None:
    keep = [f for f in proto.functions if f.domain != _LOCAL_DOMAIN]
    del proto.functions[:]
    proto.functions.extend(keep)
    opsets = [o for o in proto.opset_import if o.domain != _LOCAL_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
