"""TVM Relax import and compilation, with TVM's failures turned into hwcomp errors.

TVM raises plain Python exceptions (often with a C++ backtrace) from deep inside its
frontend. :func:`import_relax` finds the ONNX node that was being converted when one was
raised, so the user learns which node and op failed, not which C++ file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from types import TracebackType
from typing import Any

import onnx

from hwcomp.errors import LoweringError, UnsupportedOpError, reason_line
from hwcomp.lower.frontend.gaps import REJECT, gap_for

logger = logging.getLogger(__name__)


def supported_ops() -> frozenset[str]:
    """Default-domain ops TVM's Relax ONNX frontend has converters for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map())


def check_supported(proto: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedOpError` for the first node TVM cannot import."""
    from onnx import numpy_helper

    known = supported_ops()
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
                 if t.data_type == onnx.TensorProto.INT64}
    for node in proto.graph.node:
        gap = gap_for(node, constants)
        if gap is not None and gap.action == REJECT:
            raise UnsupportedOpError(
                f"node '{node.name or node.output[0]}' (op {node.op_type}) cannot be lowered: "
                f"{gap.reason}"
            )
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            domain = f" (domain '{node.domain}')" if node.domain else ""
            raise UnsupportedOpError(
                f"node '{node.name or node.output[0]}' uses op {node.op_type}{domain}, which "
                "hwcomp cannot lower (TVM's ONNX frontend has no converter and the ONNX "
                "standard gives no function body); replace it in the exporter or open an issue"
            )


def import_checked(legal: onnx.ModelProto) -> Any:
    """Check that TVM can import every node of a legalised model, then import it."""
    check_supported(legal)
    logger.info("importing into TVM Relax")
    return import_relax(legal)


def import_relax(proto: onnx.ModelProto) -> Any:
    """Import a legalised model into a Relax ``IRModule`` with weights bound as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    chatter = io.StringIO()
    try:
        # The frontend prints "Error converting operator ..." before raising; the
        # HwcompError below says it once, so its prints are kept for debug logs only.
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return from_onnx(proto, opset=opset, keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - TVM raises many types; all mean "cannot import"
        logger.debug("TVM frontend output: %s", chatter.getvalue())
        node = _failing_node(sys.exc_info()[2])
        message = reason_line(exc, last=True, limit=400)
        if node is not None:
            raise UnsupportedOpError(
                f"node '{node.name or node.output[0]}' (op {node.op_type}) could not be "
                f"imported into TVM: {message}"
            ) from None
        raise LoweringError(f"TVM could not import the model: {message}") from None


def _failing_node(tb: TracebackType | None) -> onnx.NodeProto | None:
    """Return the innermost ONNX node found in the frames of a frontend traceback."""
    found = None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, onnx.NodeProto):
            found = node
        tb = tb.tb_next
    return found
