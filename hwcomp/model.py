"""Loading and validating ONNX models, binding input shapes, and input data.

``load_model`` turns a path into an :class:`onnx_ir.Model` whose graph inputs all have
static shapes: the file is read (with external data), checked by the ONNX checker,
dynamic dimensions are bound from ``--input-shape`` bindings, and shapes are inferred.
Every failure is a :class:`~hwcomp.errors.HwcompError` that names the file or input.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import external_data_helper
from onnx_ir.passes import common

from hwcomp.errors import (
    CalibrationDataError,
    InputShapeError,
    ModelLoadError,
    OptionError,
    reason_line,
)
from hwcomp.irutil import static_shape
from hwcomp.ort_session import open_session

logger = logging.getLogger(__name__)

# onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 by default.
MAX_IR_VERSION = 10


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and numpy dtype of a graph input or output.

    ``scale`` and ``zero_point`` are set on a tensor ``--io quantized`` made 8-bit
    (``real = scale * (q - zero_point)``), else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


# The most elements one bound input may have: 4 GiB of float32, far above any edge model's
# input, and below what a typo (2147483648x4x16) would try to allocate.
MAX_INPUT_ELEMENTS = 1 << 30


def parse_input_shapes(bindings: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` strings (``--input-shape``) into a dict.

    Raises:
        InputShapeError: A binding is not of the form ``name=DxDx...`` with positive dims.

    """
    shapes: dict[str, tuple[int, ...]] = {}
    for binding in bindings:
        name, sep, dims = binding.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputShapeError(
                f"--input-shape '{binding}' is not of the form name=1x3x224x224 "
                "(positive dimensions separated by 'x')"
            )
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise InputShapeError(
                f"--input-shape '{binding}' asks for {math.prod(shape):,} elements per input "
                f"(at most {MAX_INPUT_ELEMENTS:,}: 4 GiB of float32); check the dimensions")
        shapes[name] = shape
    return shapes


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_proto(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file, external data included.

    Raises:
        ModelLoadError: Missing file, not ONNX, truncated, or rejected by the checker.

    """
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model (truncated or not ONNX: {reason_line(exc)})"
        ) from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found in the file)")
    check_external_data(proto, path)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError, EOFError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(
            f"{path}: external data could not be read ({reason_line(exc)}); "
            "keep the data files next to the model"
        ) from None
    check_tensor_sizes(proto, path)
    # onnxruntime's quantizer writes QDQ models with nodes out of order; order is not meaning.
    sort_nodes(proto.graph)
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{path}: the ONNX checker rejects it: {reason_line(exc)}") from None
    return proto


def check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that lies outside the model's folder, is missing or too short.

    Only regular files inside the model's folder are read (a model file is untrusted input:
    ``location = "../../etc/passwd"`` must not read that file).

    Raises:
        ModelLoadError: Naming the tensor and its location.

    """
    folder = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        where = f"{path}: tensor '{tensor.name}' keeps its data in {info.location!r}"
        try:
            target = (folder / info.location).resolve()
        except (ValueError, OSError):  # a NUL byte, a name too long for the file system
            raise ModelLoadError(f"{where}, which is not a valid file name; re-export the "
                                 "model") from None
        if Path(info.location).is_absolute() or not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{where}, outside the model's folder; hwcomp reads external data only from "
                f"files inside {folder} (move the data file next to the model and re-save)")
        if not target.is_file():
            raise ModelLoadError(
                f"{where}, which is not a file; keep the data files next to the model")
        offset = int(info.offset or 0)
        size = target.stat().st_size
        if info.length is not None and offset + int(info.length) > size:
            raise ModelLoadError(
                f"{where} at bytes {offset}..{offset + int(info.length)}, but that file has "
                f"{size} bytes (truncated?); re-export the model")


def check_tensor_sizes(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a tensor whose stored bytes do not match its dims (raw_data too long or short).

    Raises:
        ModelLoadError: Naming the tensor, its dims and the byte counts.

    """
    for tensor in external_data_helper._get_all_tensors(proto):
        if not tensor.HasField("raw_data"):
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue  # a type numpy has no fixed size for (strings): the checker judges it
        if tensor.data_type in _PACKED_TYPES:
            continue  # 4-bit types pack two values per byte
        expected = math.prod(tensor.dims) * itemsize
        if len(tensor.raw_data) != expected:
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' has dims {list(tensor.dims)} ({expected} "
                f"bytes of {onnx.helper.tensor_dtype_to_string(tensor.data_type)}), but "
                f"{len(tensor.raw_data)} bytes of data; the file is corrupt, re-export it")


_PACKED_TYPES = frozenset({
    getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, name)
})


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put ``graph``'s nodes in topological order, in place (stable; cycles left as found).

    A node is ready once every input it names is a graph input, an initializer, an outer
    scope's name or the output of a node already placed; names no node produces count as
    outer-scope names.
    """
    produced = {out for node in graph.node for out in node.output if out}
    available: set[str] = set()
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending
                 if all(not i or i not in produced or i in available for i in n.input)]
        if not ready:  # a cycle: keep the rest as written and let the checker name it
            ordered.extend(pending)
            break
        chosen = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if id(n) not in chosen]
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
        del graph.node[:]
        graph.node.extend(copies)


def load_model(
    path: Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> ir.Model:
    """Load ``path`` into onnx_ir with every graph input bound to a static shape.

    Raises:
        ModelLoadError: See :func:`read_model_proto`.
        InputShapeError: A dynamic dimension has no binding, a binding names no input, or
            a binding contradicts a static dimension.

    """
    proto = read_model_proto(path)
    check_tensor_interface(proto, path)
    model = ir.serde.deserialize_model(proto)
    # IR < 4 lists initializers among the inputs; a deployed model never overrides them.
    common.RemoveInitializersFromInputsPass()(model)
    bind_input_shapes(model, dict(input_shapes or {}), path)
    for value in model.graph.inputs:
        if value.shape is not None and any(d == 0 for d in value.shape):
            raise InputShapeError(
                f"{path}: input '{value.name}' has shape {list(value.shape)}, with a dimension "
                "of 0: there is nothing to compute; bind it with --input-shape")
    check_finite_weights(model, path)
    inferred = infer_shapes(model, path)
    check_value_sizes(inferred, path)
    return inferred


@dataclass(frozen=True)
class CutReport:
    """What ``--outputs`` cut off: the new outputs and the nodes no longer needed."""

    outputs: list[str]
    removed_nodes: int
    removed_ops: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        """Return the manifest's record."""
        return {"outputs": self.outputs, "removed_nodes": self.removed_nodes,
                "removed_ops": self.removed_ops}


def parse_outputs(text: str | None) -> list[str] | None:
    """Read ``--outputs NAME,NAME``: tensor names, no empty or repeated one.

    Raises:
        OptionError: An empty name or a name given twice.
    """
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise OptionError(f"--outputs '{text}': an empty tensor name; give NAME,NAME")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise OptionError(f"--outputs names {', '.join(repeated)} twice")
    return names


def cut_at_outputs(model: ir.Model, names: Sequence[str], path: Path | str) -> CutReport:
    """Make the named tensors the graph's outputs and drop every node they do not need.

    The usual way a detector reaches a microcontroller: compile up to the heads and run
    the post-processing (NMS, decoding) elsewhere.

    Raises:
        OptionError: A name that is no tensor of the graph (with candidates).
    """
    values: dict[str, ir.Value] = {v.name: v for v in model.graph.inputs if v.name}
    for node in model.graph:
        for value in node.outputs:
            if value.name:
                values[value.name] = value
    for name in names:
        if name not in values:
            close = difflib.get_close_matches(name, list(values), n=6, cutoff=0.5)
            tail = [v for v in values if v not in close][-6:]
            raise OptionError(
                f"--outputs {name}: {path} has no tensor of that name; "
                + (f"close: {', '.join(close)}; " if close else "")
                + f"the last node outputs: {', '.join(tail)} ({len(values)} tensors in all; "
                "Netron or onnx.load(...).graph lists them)")
    before = [node.op_type for node in model.graph]
    model.graph.outputs.clear()
    model.graph.outputs.extend(values[name] for name in names)
    common.RemoveUnusedNodesPass()(model)
    after = [node.op_type for node in model.graph]
    removed = {op: before.count(op) - after.count(op) for op in sorted(set(before))
               if before.count(op) > after.count(op)}
    logger.info("--outputs: %d node(s) after the cut removed (%s)", len(before) - len(after),
                ", ".join(f"{n} {op}" for op, n in removed.items()))
    return CutReport(outputs=list(names), removed_nodes=len(before) - len(after),
                     removed_ops=removed)


# The most elements one intermediate tensor may have (16 GiB of float32): far above any
# deployable model's largest activation, and below what a corrupt shape would try.
MAX_VALUE_ELEMENTS = 1 << 32


def check_value_sizes(model: ir.Model, path: Path | str) -> None:
    """Refuse inferred shapes no device could hold, and Reshapes that change the size.

    Raises:
        ModelLoadError: Naming the node, its input and output shapes.

    """
    for node in model.graph:
        where = f"{path}: node '{node.name or node.op_type}' (op {node.op_type})"
        if node.op_type == "Reshape" and node.inputs and node.outputs:
            before, after = static_shape(node.inputs[0]), static_shape(node.outputs[0])
            if before is not None and after is not None \
                    and math.prod(before) != math.prod(after):
                raise ModelLoadError(
                    f"{where} reshapes {before} ({math.prod(before)} elements) to {after} "
                    f"({math.prod(after)}); the model is broken (check its shape constant)")
        for value in node.outputs:
            dims = static_shape(value)
            if dims is not None and (any(d < 0 for d in dims)
                                     or math.prod(dims) > MAX_VALUE_ELEMENTS):
                raise ModelLoadError(
                    f"{where}: output '{value.name}' would have shape {dims}, beyond what "
                    f"any device holds (at most {MAX_VALUE_ELEMENTS} elements); the model is "
                    "broken or --input-shape is far too large")


# Layers whose weights are checked: a NaN there makes every output NaN, which compares as
# "agreeing" with the original's NaN outputs.
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})


def check_finite_weights(model: ir.Model, path: Path | str) -> None:
    """Raise :class:`ModelLoadError` for a layer whose constant weights hold NaN."""
    for node in model.graph:
        if node.op_type not in _WEIGHTED_OPS:
            continue
        for value in node.inputs[1:]:
            if value is None or value.const_value is None:
                continue
            array = value.const_value.numpy()
            if array.dtype.kind == "f" and np.isnan(array).any():
                raise ModelLoadError(
                    f"{path}: weight '{value.name}' of node '{node.name or node.op_type}' holds "
                    f"{int(np.isnan(array).sum())} NaN value(s); the model is broken (re-export "
                    "it from a checkpoint whose training did not diverge)")


def check_tensor_interface(proto: onnx.ModelProto, path: Path | str) -> None:
    """Reject graph inputs/outputs that are not tensors (sequences, maps, optionals).

    Raises:
        ModelLoadError: Naming the first such input or output.

    """
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            which = value.type.WhichOneof("value")
            if which not in (None, "tensor_type"):
                raise ModelLoadError(
                    f"{path}: graph {kind} '{value.name}' is a {which.replace('_type', '')}; "
                    "hwcomp compiles graphs whose inputs and outputs are tensors"
                )


def bind_input_shapes(model: ir.Model, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Give every graph input a static shape, in place."""
    initializer_names = set(model.graph.initializers)
    inputs = [v for v in model.graph.inputs if v.name not in initializer_names]
    known = {v.name or "" for v in inputs}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise InputShapeError(
            f"{path}: --input-shape names {', '.join(unknown)}, but the model's inputs are "
            f"{', '.join(sorted(known))}"
        )
    for value in inputs:
        declared = value.shape
        if value.name in shapes:
            bound = shapes[value.name]
            if declared is not None:
                _check_binding(value.name, declared, bound, path)
            value.shape = ir.Shape(bound)
            continue
        if declared is None:
            raise InputShapeError(
                f"{path}: input '{value.name}' has no declared shape (unknown rank); bind it "
                f"with --input-shape {value.name}=AxBx... (one size per axis)")
        dims = list(declared)
        dynamic = [axis for axis, d in enumerate(dims) if not isinstance(d, int)]
        if dynamic == [0] and len(dims) > 1:
            # A batch axis: deployed edge models run one sample at a time.
            bound = (1, *(int(d) for d in dims[1:]))  # type: ignore[call-overload,arg-type]
            logger.warning(
                "input '%s' has a dynamic batch dimension '%s'; using 1 (set it with "
                "--input-shape %s=%s)", value.name, dims[0], value.name, _shape_text(bound))
            value.shape = ir.Shape(bound)
        elif dynamic:
            hint = "x".join(str(d) if isinstance(d, int) else
                            ("1" if axis == 0 else f"<{getattr(d, 'value', None) or f'axis{axis}'}>")
                            for axis, d in enumerate(dims))
            raise InputShapeError(
                f"{path}: input '{value.name}' has a dynamic shape "
                f"[{', '.join(str(d) for d in dims)}]; bind it with --input-shape "
                f"{value.name}={hint} (numbers for the <...> axes)")


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _check_binding(name: str, declared: ir.Shape, bound: tuple[int, ...], path: Path) -> None:
    if len(declared) != len(bound):
        raise InputShapeError(
            f"{path}: --input-shape {name} has rank {len(bound)}, the model declares "
            f"rank {len(declared)} ({list(declared)})"
        )
    for axis, (want, got) in enumerate(zip(declared, bound, strict=True)):
        if isinstance(want, int) and want != got:
            raise InputShapeError(
                f"{path}: --input-shape {name} sets axis {axis} to {got}, but the model "
                f"fixes it to {want}"
            )


def infer_shapes(model: ir.Model, path: Path | str = "model") -> ir.Model:
    """Run ONNX shape inference (with data propagation) and return a new model.

    Weights over :data:`_SKELETON_BYTES` go to onnx as typed graph inputs (their values
    do not change a shape) and come back as the same tensors, not copies: inferring VGG-19
    with its weights peaked at 3.5 GB for 575 MB of weights.
    """
    large = {name: value for name, value in model.graph.initializers.items()
             if value.const_value is not None and value.const_value.nbytes > _SKELETON_BYTES}
    tensors = {name: value.const_value for name, value in large.items()}
    for name, value in large.items():
        tensor = tensors[name]
        assert tensor is not None
        value.shape = value.shape or ir.Shape(list(tensor.shape.numpy()))
        value.type = value.type or ir.TensorType(tensor.dtype)
        model.graph.initializers.pop(name)
        value.const_value = None
        model.graph.inputs.append(value)
    try:
        proto = to_proto(model)
    finally:
        for name, value in large.items():
            model.graph.inputs.remove(value)
            value.const_value = tensors[name]
            model.graph.register_initializer(value)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: shape inference failed: {reason_line(exc)}") from None
    result = ir.serde.deserialize_model(inferred)
    by_name = {value.name: value for value in result.graph.inputs}
    for name, tensor in tensors.items():
        value = by_name[name]
        result.graph.inputs.remove(value)
        value.const_value = tensor
        result.graph.register_initializer(value)
    return result


# Initializers above this size are left out of the proto shape inference sees.
_SKELETON_BYTES = 1 << 20


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize to a ModelProto onnxruntime 1.31 accepts."""
    proto = ir.serde.serialize_model(model)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    return proto


IO_QUANTIZATION_KEY = "hwcomp.io_quantization"  # model metadata: {name: [scale, zero_point]}


def read_io_quantization(metadata: Iterable[tuple[str, str]]) -> dict[str, tuple[float, int]]:
    """Return ``{name: (scale, zero_point)}`` that ``--io quantized`` recorded (else empty)."""
    for key, value in metadata:
        if key == IO_QUANTIZATION_KEY:
            try:
                return {str(name): (float(pair[0]), int(pair[1]))
                        for name, pair in json.loads(value).items()}
            except (ValueError, TypeError, AttributeError, IndexError, KeyError):
                return {}  # another tool's entry of that name: no quantization claimed
    return {}


def graph_inputs(model: ir.Model) -> list[TensorSpec]:
    """Return the graph inputs that are not initializers, with static shapes."""
    initializer_names = set(model.graph.initializers)
    quantized = read_io_quantization(model.metadata_props.items())
    return [_spec(v, quantized) for v in model.graph.inputs if v.name not in initializer_names]


def graph_outputs(model: ir.Model) -> list[TensorSpec]:
    """Return the graph outputs (shapes as inferred; -1 where still unknown)."""
    quantized = read_io_quantization(model.metadata_props.items())
    return [_spec(v, quantized) for v in model.graph.outputs]


def _spec(value: ir.Value, quantized: Mapping[str, tuple[float, int]]) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in (value.shape or ()))
    dtype = str(np.dtype(value.dtype.numpy().name if value.dtype is not None else "float32"))
    scale, zero_point = quantized.get(value.name or "", (None, None))
    if np.dtype(dtype).kind not in "iu":
        scale = zero_point = None
    return TensorSpec(name=value.name or "", shape=shape, dtype=dtype, scale=scale,
                      zero_point=zero_point)


def seeded_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs: N(0,1) floats, small non-negative integers, random bools.

    A quantized input (``--io quantized``) takes N(0,1) floats quantized with its scale.
    """
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if spec.scale is not None and spec.zero_point is not None:
            inputs[spec.name] = quantize_like_onnx(rng.standard_normal(spec.shape), spec.scale,
                                                   spec.zero_point, spec.dtype)
        elif dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind in "iu":
            inputs[spec.name] = rng.integers(0, 4, size=spec.shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.random(spec.shape) < 0.5
        else:
            raise CalibrationDataError(
                f"input '{spec.name}' has dtype {spec.dtype}; pass data for it with --calib"
            )
    return inputs


def quantize_like_onnx(values: np.ndarray, scale: float | np.ndarray,
                       zero_point: int | np.ndarray, dtype: str) -> np.ndarray:
    """Quantize as QuantizeLinear and onnxruntime's requantization do, in float32.

    ``saturate(round_half_even(values / scale) + zero_point)``.
    """
    info = np.iinfo(np.dtype(dtype))
    q = np.rint(np.asarray(values, np.float32) / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def load_calibration(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Load ``--calib`` data: an ``.npz`` keyed by input name, or a folder of ``<name>.npy``.

    A leading batch of samples is allowed: an array of shape ``(N, *input_shape)`` or
    ``(N*batch, ...)`` is returned as is and split by the caller.

    Raises:
        CalibrationDataError: Missing file, unreadable file, missing input or wrong shape.

    """
    arrays: dict[str, np.ndarray] = {}
    try:
        if path.is_dir():
            arrays = {p.stem: np.load(p) for p in sorted(path.glob("*.npy"))}
        elif path.is_file():
            loaded = np.load(path)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise CalibrationDataError(
                    f"{path}: one array (a .npy), not an .npz keyed by input name; save it with "
                    f"np.savez(FILE, {', '.join(f'{s.name}=...' for s in specs)})")
            with loaded as data:
                arrays = {k: data[k] for k in data.files}
        else:
            raise CalibrationDataError(f"{path}: no such calibration file or folder")
    # EOFError: an empty file; BadZipFile: a truncated .npz.
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CalibrationDataError(
            f"{path}: not an .npz file or a folder of .npy files ({reason_line(exc)})"
        ) from None
    for spec in specs:
        if spec.name not in arrays:
            raise CalibrationDataError(
                f"{path}: no array for input '{spec.name}' (found: "
                f"{', '.join(sorted(arrays)) or 'nothing'}); expected shape {list(spec.shape)}"
            )
        array = arrays[spec.name]
        if array.dtype.kind not in "biuf":
            raise CalibrationDataError(
                f"{path}: '{spec.name}' holds {array.dtype} values; expected real numbers "
                f"({spec.dtype}) — complex, string and object arrays are not converted")
        if array.ndim != len(spec.shape) or tuple(array.shape[1:]) != spec.shape[1:]:
            raise CalibrationDataError(
                f"{path}: '{spec.name}' has shape {list(array.shape)}, expected "
                f"{list(spec.shape)} (the first axis may hold more samples)"
            )
        if spec.scale is not None and spec.zero_point is not None and array.dtype.kind == "f":
            # float samples for a quantized input (--io quantized): quantized as the model's
            # removed QuantizeLinear did; integer samples are taken as already quantized
            arrays[spec.name] = quantize_like_onnx(_finite(array, path, spec.name), spec.scale,
                                                   spec.zero_point, spec.dtype)
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            converted = array.astype(spec.dtype, copy=False)
        arrays[spec.name] = _finite(converted, path, spec.name)
    return {spec.name: arrays[spec.name] for spec in specs}


def _finite(array: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Return ``array`` unless it holds NaN or infinity (also from overflow in the cast)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        sample = int(np.argmax(bad.reshape(len(array), -1).any(axis=1))) if array.ndim else 0
        raise CalibrationDataError(
            f"{path}: '{name}' holds {int(bad.sum())} NaN or infinite value(s) (first in "
            f"sample {sample}, after conversion to {array.dtype}); calibration needs finite data")
    return array


def calibration_batches(
    specs: list[TensorSpec], data: dict[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """Split ``(N, ...)`` calibration arrays into feeds of the model's batch size.

    Samples that do not fill a last batch are dropped (and logged).

    Raises:
        CalibrationDataError: Inputs disagree on the sample count, or hold fewer samples
            than one batch.
    """
    counts = {spec.name: data[spec.name].shape[0] for spec in specs}
    if len(set(counts.values())) > 1:
        raise CalibrationDataError(
            f"calibration inputs hold different sample counts: {counts}; give each input "
            "the same number of samples along axis 0"
        )
    batch = specs[0].shape[0] if specs and specs[0].shape else 1
    total = next(iter(counts.values()), 0)
    if total < batch:
        raise CalibrationDataError(
            f"calibration data holds {total} samples, fewer than the model's batch of {batch}"
        )
    if total % batch:
        logger.warning("dropping the last %d calibration samples (batch is %d)", total % batch, batch)
    return [
        {spec.name: np.require(data[spec.name][start:start + batch], requirements="C")
         for spec in specs}
        for start in range(0, total - total % batch, batch)
    ]


def split_held_out(
    batches: Sequence[Mapping[str, np.ndarray]],
) -> tuple[list[Mapping[str, np.ndarray]], list[Mapping[str, np.ndarray]]]:
    """Split feeds into (fit, check): the last quarter (at least one batch) is held out.

    With a single batch both are that batch: there is nothing to hold out.
    """
    held_out = max(1, len(batches) // 4) if len(batches) > 1 else 0
    fit = list(batches[: len(batches) - held_out])
    return fit, list(batches[len(batches) - held_out:]) or fit


def sample_count(batches: Sequence[Mapping[str, np.ndarray]]) -> int:
    """Count the samples in a list of feeds (axis 0 of their first input)."""
    return sum(next(iter(batch.values())).shape[0] for batch in batches)


def check_calibration_source(calib: Path | None, calib_random: int) -> None:
    """Refuse ``--calib`` together with ``--calib-random``, and a negative count."""
    if calib_random < 0:
        raise OptionError(f"--calib-random {calib_random}: give a number of samples > 0")
    if calib is not None and calib_random:
        raise OptionError(
            f"--calib {calib} and --calib-random {calib_random} both given: use one")


def calibration_label(calib: Path | None, calib_random: int, seed: int) -> str:
    """Return where a command's samples came from, for output lines and manifests."""
    if calib is not None:
        return f"--calib {calib}"
    if calib_random:
        return (f"RANDOM: {calib_random} seeded samples (--calib-random, seed {seed}); "
                "figures judged on noise, not on real data")
    return f"seeded random (seed {seed})"


def warn_random_planning(what: str, samples: int) -> None:
    """Say, in the output, that a plan is judged on random samples (``--calib-random``)."""
    logger.warning("%s judged on %d seeded RANDOM samples (--calib-random): the budget is "
                   "measured on noise, not on your data; pass --calib for decisions", what,
                   samples)


def random_calibration(specs: list[TensorSpec], batches: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``batches`` seeded random feeds (for when no calibration data exists)."""
    return [seeded_inputs(specs, seed + index) for index in range(batches)]


def load_labels(path: Path, samples: int, classes: int | None = None) -> np.ndarray:
    """Load class labels (``.npy``, one integer per calibration sample).

    ``classes``: the model's class count (its first output's last axis), where known; every
    label must be a class index below it.

    Raises:
        CalibrationDataError: Missing or unreadable file, not ``samples`` integers, or a
            label that is no class of the model.
    """
    if not path.is_file():
        raise CalibrationDataError(f"{path}: no such labels file")
    try:
        labels = np.load(path)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise CalibrationDataError(f"{path}: not a .npy file ({reason_line(exc)})") from None
    if not isinstance(labels, np.ndarray):
        labels.close()
        raise CalibrationDataError(f"{path}: an .npz archive, not a .npy array of labels; save "
                                   "the labels with np.save(FILE, labels)")
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim != 1 or labels.shape[0] != samples or labels.dtype.kind not in "iu":
        raise CalibrationDataError(
            f"{path}: labels have shape {list(labels.shape)} and dtype {labels.dtype}; "
            f"expected [{samples}] integers, one class per calibration sample"
        )
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= classes) if classes else labels < 0
    if bad.any():
        first = int(np.argmax(bad))
        limit = f"0..{classes - 1} (the model's {classes} classes)" if classes else "0 or more"
        raise CalibrationDataError(
            f"{path}: label {int(labels[first])} of sample {first} is not a class index "
            f"{limit}; {int(bad.sum())} label(s) out of range")
    return labels


def class_count(model: ir.Model) -> int | None:
    """Return the model's class count: its first output's last axis (static, above 1), or None."""
    outputs = graph_outputs(model)
    if not outputs or not outputs[0].shape or outputs[0].shape[-1] < 2:
        return None
    return outputs[0].shape[-1]


def unknown_shapes(model: ir.Model) -> list[ir.Value]:
    """Return the main graph's node outputs whose shape inference left them not static.

    Only values something reads (a node or the graph's outputs) count: an unused optional
    output, such as Dropout's mask, has no cost.
    """
    outputs = set(model.graph.outputs)
    return [value for node in model.graph for value in node.outputs
            if value.name and static_shape(value) is None and (value.uses() or value in outputs)]


class Capture:
    """An onnxruntime session of ``model`` that can return any of the ``names`` tensors."""

    def __init__(self, model: ir.Model, names: Sequence[str]) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors come back as exceptions
        self.session = open_session(model, options, names)

    def values(self, names: Sequence[str], batches: Sequence[Mapping[str, np.ndarray]]
               ) -> list[list[np.ndarray]]:
        """Return the named tensors for every batch, ``[name][batch]``, one run per batch.

        onnxruntime computes only what the names need: asking for one layer's tensor runs
        the graph up to that layer.
        """
        per_batch = [self.session.run(list(names), dict(batch)) for batch in batches]
        return [[values[i] for values in per_batch] for i in range(len(names))]


def learn_shapes(model: ir.Model, values: list[ir.Value], seed: int = 0) -> None:
    """Set ``values``' shapes (and dtypes) from one onnxruntime run on seeded inputs.

    For what static shape inference cannot reach (data-dependent shapes, ``If``/``Loop``
    outputs, NonMaxSuppression): the shapes are those of this sample.

    Raises:
        ModelLoadError: onnxruntime cannot run the model either; the message names the
            first value whose shape is unknown.
    """
    names = [v.name or "" for v in values]
    try:
        arrays = [a for [a] in Capture(model, names).values(
            names, [seeded_inputs(graph_inputs(model), seed)])]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ModelLoadError(
            f"shape inference cannot reach '{names[0]}' (and {len(names) - 1} more), and "
            f"onnxruntime could not run the model to learn them ({reason_line(exc)}); bind "
            "the inputs with --input-shape") from None
    for value, array in zip(values, arrays, strict=True):
        value.shape = ir.Shape(np.shape(array))
        value.dtype = ir.DataType.from_numpy(np.asarray(array).dtype)
