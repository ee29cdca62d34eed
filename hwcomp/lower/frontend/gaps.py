"""Where TVM's Relax ONNX frontend is incomplete or wrong, and what hwcomp does instead.

Found by driving ONNX's backend node tests through hwcomp (``tests/conformance.py``).
Each entry maps an op to a check of one node that returns a :class:`Gap` or None:

- ``expand``: the converter mishandles this node; use the op's ONNX function body;
- ``reject``: no correct lowering exists yet; fail with a message naming the node.

Rewrites that replace a node by other ops (Resize, ConvTranspose) are passes of their own
under ``hwcomp/passes/``, each stating which cases it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

EXPAND, REJECT = "expand", "reject"


@dataclass(frozen=True)
class Gap:
    """What to do about a node the frontend cannot take as is, and why."""

    action: str
    reason: str


Constants = Mapping[str, np.ndarray]


def _layer_norm(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    # The converter returns Mean and InvStdDev with the wrong shapes; Y alone is right.
    if any(name for name in node.output[1:]):
        return Gap(EXPAND, "Mean/InvStdDev outputs are used")
    return None


def _max_pool(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    if len(node.output) > 1 and node.output[1]:
        return Gap(REJECT, "its Indices output is not supported by TVM's MaxPool")
    return None


def _split(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    sizes = constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if sizes is None:
        attr = next((a for a in node.attribute if a.name == "split"), None)
        sizes = np.array(attr.ints) if attr is not None else None
    if sizes is not None and (np.asarray(sizes) == 0).any():
        return Gap(REJECT, "it produces an empty output, which TVM's split cannot compile")
    return None


def _non_max_suppression(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    # The converter returns the selection padded to its largest size (batch x classes x
    # max boxes rows) with the count apart, and drops the count: rows past the selected ones
    # would be read as boxes. Its compiled form also fails in TVM's lowering.
    return Gap(REJECT, "TVM's NonMaxSuppression returns a fixed number of rows, not the K "
                       "selected ones ONNX defines; cut the graph before it with --outputs "
                       "(the box and score tensors) and run NMS where the outputs are read")


def _control_flow(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    # Reached only when legalisation could not fold it: an If with a constant condition is
    # inlined (hwcomp.passes.fold_if).
    what = ("its condition depends on the input data" if node.op_type == "If"
            else "its trip count or condition depends on the input data")
    return Gap(REJECT, f"{what}, and data-dependent control flow is not lowered yet (TVM's "
                       "ONNX frontend has no converter); an If on shapes folds once "
                       "--input-shape binds them, and --outputs can cut the graph before it")


def _attention(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    # TVM's converter named Attention is onnxruntime's com.microsoft one (one packed QKV
    # weight, a num_heads attribute); the standard op (opset 23: Q, K, V, mask, past state)
    # has its own semantics, which its function body gives.
    return Gap(EXPAND, "TVM's Attention converter is com.microsoft's, not the standard op's")


def _rms_normalization(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    # TVM's converter fails to compile ("Tensor dimension mismatch") on the node tests'
    # axes; the standard's body (ReduceMean of squares, Sqrt, Div, Mul) compiles.
    return Gap(EXPAND, "TVM's RMSNormalization converter does not compile")


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    found = next((a for a in node.attribute if a.name == name), None)
    return int(found.i) if found is not None else default


def _batch_norm(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    if _attribute(node, "training_mode", 0):
        return Gap(REJECT, "training_mode=1 (batch statistics, running-mean outputs) is a "
                           "training computation; export the model in eval mode")
    return None


def _is_inf(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    # The converter ignores both attributes and reports either infinity.
    if not _attribute(node, "detect_negative", 1) or not _attribute(node, "detect_positive", 1):
        return Gap(REJECT, "detect_negative=0 / detect_positive=0 are ignored by TVM's IsInf; "
                           "write IsInf(x) And (x > 0) (or < 0) instead")
    return None


GAPS: dict[str, Callable[[onnx.NodeProto, Constants], Gap | None]] = {
    "Attention": _attention,
    "RMSNormalization": _rms_normalization,
    "BatchNormalization": _batch_norm,
    "IsInf": _is_inf,
    "If": _control_flow,
    "Loop": _control_flow,
    "Scan": _control_flow,
    "NonMaxSuppression": _non_max_suppression,
    "LayerNormalization": _layer_norm,
    "MaxPool": _max_pool,
    "Split": _split,
}


def gap_for(node: onnx.NodeProto, constants: Constants) -> Gap | None:
    """Return the known gap for ``node``, if any."""
    check = GAPS.get(node.op_type)
    return check(node, constants) if check and node.domain in ("", "ai.onnx") else None
