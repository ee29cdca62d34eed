"""``--io quantized``: an int8 model's float inputs and outputs become its 8-bit tensors.

An int8 build quantizes each float input on entry (``QuantizeLinear``) and dequantizes each
output on exit (``DequantizeLinear``). A camera's uint8 pixels or a sensor's int8 samples can
go in as they are, and a classifier's scores come out as bytes: the float input buffer (four
bytes an element, on a microcontroller in RAM) and two passes over it are gone, and the
application quantizes with the scale and zero point the bundle states (X-CUBE-AI's and TFLM's
int8 I/O). This pass removes those two steps: each input that only feeds ``QuantizeLinear``
nodes of one per-tensor scale and zero point becomes that quantized tensor (same name), and
each output a ``DequantizeLinear`` of one per-tensor scale and zero point produces becomes
the tensor it dequantizes (same name). ``real = scale * (q - zero_point)``.

Each converted tensor's scale and zero point are written into the model's metadata
(``hwcomp.io_quantization``, JSON ``{name: [scale, zero_point]}``), from which
:func:`hwcomp.model.graph_inputs` / ``graph_outputs`` fill :class:`TensorSpec`: the manifest,
the verification data (float samples are quantized) and the microcontroller header's tensor
descriptors take them from there. A tensor that cannot be converted (a float layer reads the
input, a per-channel scale, an output that is not dequantized) is refused by name: nothing
is converted silently in part.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hwcomp.errors import UnsupportedOpError
from hwcomp.model import IO_QUANTIZATION_KEY as METADATA_KEY


def quantize_io(proto: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """Make ``proto``'s inputs and outputs its quantized tensors, in place.

    Returns:
        ``{tensor name: (scale, zero_point)}`` for every graph input and output.

    Raises:
        UnsupportedOpError: An input or output has no single per-tensor quantization step.

    """
    graph = proto.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    params: dict[str, tuple[float, int]] = {}
    initializer_names = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in initializer_names:
            continue
        users = consumers.get(value.name, [])
        steps = [n for n in users if n.op_type == "QuantizeLinear" and n.input[0] == value.name]
        others = sorted({f"{n.op_type} '{n.name}'" for n in users if n not in steps})
        if not steps or others:
            raise UnsupportedOpError(
                f"--io quantized: input '{value.name}' is read by {', '.join(others) or 'nothing'}"
                f"{' besides its QuantizeLinear' if steps else ', not a QuantizeLinear'}: only an "
                "input every reader of which quantizes it can come in quantized: an int8 "
                "build (--precision int8, or a QDQ model) whose first layer is int8; use --io "
                "float")
        scale, zero_point, dtype = _step_params(steps, constants, f"input '{value.name}'")
        for step in steps:
            _rename_uses(graph.node, step.output[0], value.name)
            graph.node.remove(step)
        value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(dtype)
        params[value.name] = (scale, zero_point)
    producers = {out: node for node in graph.node for out in node.output}
    for value in graph.output:
        producer = producers.get(value.name)
        if producer is None or producer.op_type != "DequantizeLinear":
            made = f"{producer.op_type} '{producer.name}'" if producer is not None else "no node"
            raise UnsupportedOpError(
                f"--io quantized: output '{value.name}' comes from {made}, not a "
                "DequantizeLinear: only a quantized output can go out quantized: an int8 "
                "build (--precision int8, or a QDQ model) whose last layer is int8; use --io "
                "float")
        if consumers.get(value.name):
            raise UnsupportedOpError(
                f"--io quantized: output '{value.name}' is also read inside the model "
                f"({consumers[value.name][0].op_type} '{consumers[value.name][0].name}'), "
                "which needs it in float; use --io float")
        scale, zero_point, dtype = _step_params([producer], constants, f"output '{value.name}'")
        quantized = producer.input[0]
        if any(o.name == quantized for o in graph.output) or any(
                i.name == quantized for i in graph.input):
            raise UnsupportedOpError(
                f"--io quantized: output '{value.name}' dequantizes '{quantized}', itself an "
                "input or output of the model; use --io float")
        graph.node.remove(producer)
        _rename_uses(graph.node, quantized, value.name)
        for node in graph.node:
            for index, name in enumerate(node.output):
                if name == quantized:
                    node.output[index] = value.name
        value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(dtype)
        params[value.name] = (scale, zero_point)
    _drop_value_info(graph, params)
    entries = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(entries)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(
        {name: [scale, zero_point] for name, (scale, zero_point) in params.items()}))
    return params


def _step_params(steps: list[onnx.NodeProto], constants: dict[str, np.ndarray],
                 what: str) -> tuple[float, int, np.dtype]:
    found = set()
    for step in steps:
        if len(step.input) < 3 or step.input[1] not in constants or \
                step.input[2] not in constants:
            raise UnsupportedOpError(
                f"--io quantized: {what}: {step.op_type} '{step.name}' has no constant scale "
                "and zero point; use --io float")
        scales, zero_points = constants[step.input[1]], constants[step.input[2]]
        if scales.size != 1 or zero_points.size != 1:
            raise UnsupportedOpError(
                f"--io quantized: {what}: {step.op_type} '{step.name}' is per-channel "
                f"({scales.size} scales); one scale and zero point per tensor are needed; use "
                "--io float")
        if zero_points.dtype not in (np.int8, np.uint8):
            raise UnsupportedOpError(
                f"--io quantized: {what}: {step.op_type} '{step.name}' is "
                f"{zero_points.dtype}, not int8 / uint8; use --io float")
        found.add((float(scales.reshape(-1)[0]), int(zero_points.reshape(-1)[0]),
                   zero_points.dtype.str))
    if len(found) != 1:
        raise UnsupportedOpError(
            f"--io quantized: {what} is quantized with {len(found)} different scales; use "
            "--io float")
    scale, zero_point, dtype = found.pop()
    return scale, zero_point, np.dtype(dtype)


def _rename_uses(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _drop_value_info(graph: onnx.GraphProto, names: dict[str, tuple[float, int]]) -> None:
    """Remove stale value_info of the renamed tensors (their float type no longer holds)."""
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
