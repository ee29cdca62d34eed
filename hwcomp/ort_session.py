"""onnxruntime CPU sessions whose memory stays near one copy of the weights.

Handed a model as bytes, onnxruntime keeps those bytes, parses its own copy and prepacks the
weights of Conv/Gemm: a VGG-19 session cost 2.2 GB at its peak for 575 MB of weights, and
compression opens several. A model with more than :data:`LARGE_MODEL_BYTES` of weights is
therefore written to a temporary folder with its weights as external data, which
onnxruntime maps from the file instead of copying, with prepacking off; the folder is
removed as soon as the session holds the mapping. Small models go as bytes, as before.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

# Weights above this go through a mapped file (a small model's session costs little).
LARGE_MODEL_BYTES = 64 << 20


def weight_bytes(model: ir.Model | onnx.ModelProto) -> int:
    """Bytes of the model's initializers (main graph)."""
    if isinstance(model, onnx.ModelProto):
        return sum(t.ByteSize() for t in model.graph.initializer)
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def open_session(model: ir.Model | onnx.ModelProto, options: ort.SessionOptions,
                 outputs: Sequence[str] = ()) -> ort.InferenceSession:
    """Return a CPU session of ``model`` that also offers the named ``outputs`` tensors."""
    if weight_bytes(model) <= LARGE_MODEL_BYTES:
        proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
        extra = _missing_outputs(proto, outputs)
        if extra:
            proto = _copy_with_outputs(proto, extra)
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    graph = ir.serde.deserialize_model(model) if isinstance(model, onnx.ModelProto) else model
    folder = Path(tempfile.mkdtemp(prefix="hwcomp-session-"))
    try:
        path = folder / "model.onnx"
        ir.save(graph, path, external_data="weights.data")  # the model is left unchanged
        skeleton = onnx.load(str(path), load_external_data=False)
        extra = _missing_outputs(skeleton, outputs)
        if extra:
            skeleton.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
            onnx.save(skeleton, str(path))
        options.add_session_config_entry("session.disable_prepacking", "1")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _missing_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    present = {o.name for o in proto.graph.output}
    return [n for n in dict.fromkeys(names) if n not in present]


def _copy_with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return copy
